"""TrainState: everything a TALL-family training run carries from step to step, as one pytree."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct

from tall_jax import gate as gate_lib
from tall_jax import vae, weights
from tall_jax.configs import TALLConfig
from tall_jax.optim import adam_l2
from tall_jax.vae import Params


@struct.dataclass
class TrainState:
    """Parameters, optimizer state, RNG, counters and the per-user loss history (docs/fidelity.md#loss, #adaptive-weights)."""

    params: Params  # {"experts": stacked MultVAE params [E, ...], "gate": MLP-gate params (MoE only)}
    opt_state: optax.OptState
    rng: jax.Array  # base key; per-step and per-epoch keys are folded in from it
    step: jax.Array  # int32: optimizer steps taken (drives the beta annealing, docs/fidelity.md#multvae)
    epoch: jax.Array  # int32: completed epochs
    loss_N: jax.Array  # f32 [N]: l_u recorded in this epoch's training pass (init 1, docs/fidelity.md#loss)
    prev_loss_N: jax.Array  # f32 [N]: l_u of the previous epoch
    window_NxL: jax.Array  # f32 [N, L]: loss changes Delta_u, oldest column first (docs/fidelity.md#adaptive-weights)
    window_count: jax.Array  # int32: filled columns of the window
    weights_N: jax.Array  # f32 [N]: the adaptive weights w_u used in the current epoch


def make_optimizer(config: TALLConfig) -> optax.GradientTransformation:
    """The TALL family's optimizer: :func:`tall_jax.optim.adam_l2` of (config.lr, config.weight_decay)."""
    return adam_l2(config.lr, config.weight_decay)


def wl_weights(ms_N: np.ndarray, gamma: float) -> np.ndarray:
    """WL's fixed weights w_u = ((MS_max - MS_u)/(MS_max - MS_min))^gamma / mean (docs/fidelity.md#wl)."""
    ms_N = np.asarray(ms_N, np.float64)
    span = ms_N.max() - ms_N.min()
    raw = ((ms_N.max() - ms_N) / (span if span > 0 else 1.0)) ** gamma
    return (raw / raw.mean()).astype(np.float32)


def init(key: jax.Array, config: TALLConfig, n_users: int, n_items: int,
         ms_N: np.ndarray | None = None) -> TrainState:
    """A fresh TrainState. ``ms_N`` (mainstream scores) is needed only by WL (``adaptive="wl"``)."""
    k_experts, k_gate, k_run = jax.random.split(key, 3)
    params: Params = {"experts": vae.init_experts(k_experts, config.n_experts, n_items, config.latent)}
    if config.gate == "mlp":
        params["gate"] = gate_lib.init_mlp_gate(k_gate, n_items, config.gate_hidden, config.n_experts)
    if config.adaptive == "wl":
        if ms_N is None:
            raise ValueError("model 'wl' needs the mainstream scores ms_N to build its weights")
        weights_N = jnp.asarray(wl_weights(ms_N, config.wl_gamma))
    else:
        weights_N = jnp.ones((n_users,), jnp.float32)
    window_NxL, count = weights.init_window(n_users, config.window)
    return TrainState(
        params=params,
        opt_state=make_optimizer(config).init(params),
        rng=k_run,
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        loss_N=jnp.ones((n_users,), jnp.float32),
        prev_loss_N=jnp.ones((n_users,), jnp.float32),
        window_NxL=window_NxL,
        window_count=count,
        weights_N=weights_N,
    )


def _write_atomically(path: str | Path, payload: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)


def save_state(path: str | Path, state: TrainState) -> None:
    """Write the state as msgpack bytes (bit-exact; read back with :func:`load_state`)."""
    _write_atomically(path, serialization.to_bytes(jax.device_get(state)))


def load_state(path: str | Path, template: TrainState) -> TrainState:
    """Read a state written by :func:`save_state` into the structure of ``template``."""
    return serialization.from_bytes(template, Path(path).read_bytes())


def save_params(path: str | Path, params: Params) -> None:
    """Write a parameter pytree as msgpack bytes."""
    _write_atomically(path, serialization.to_bytes(jax.device_get(params)))


def load_params(path: str | Path, template: Params) -> Params:
    """Read parameters written by :func:`save_params` into the structure of ``template``."""
    return serialization.from_bytes(template, Path(path).read_bytes())
