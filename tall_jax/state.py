"""TrainState: everything a TALL-family training run carries from step to step, as one pytree; its
files (checked against a template) and the run checkpoint the epoch loop resumes from."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct

from tall_jax import checkpoint, vae, weights
from tall_jax import gate as gate_lib
from tall_jax.configs import TALLConfig
from tall_jax.files import atomic_write_bytes
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


def save_state(path: str | Path, state: TrainState) -> None:
    """Write the state as msgpack bytes, atomically (bit-exact; read back with :func:`load_state`)."""
    atomic_write_bytes(path, checkpoint.to_bytes(state))


def load_state(path: str | Path, template: TrainState) -> TrainState:
    """Read a state written by :func:`save_state` into the structure of ``template``; ValueError
    naming the leaves whose shape or dtype differ from the template's."""
    return checkpoint.from_bytes(template, Path(path).read_bytes(), str(path))


def save_params(path: str | Path, params: Params) -> None:
    """Write a parameter pytree as msgpack bytes, atomically."""
    atomic_write_bytes(path, checkpoint.to_bytes(params))


def load_params(path: str | Path, template: Params) -> Params:
    """Read parameters written by :func:`save_params` into the structure of ``template`` (checked)."""
    return checkpoint.from_bytes(template, Path(path).read_bytes(), str(path))


CHECKPOINT = "checkpoint"  # the run checkpoint's folder inside a run folder
_LEGACY = ("last_state.msgpack", "last_state.json", "best_params.msgpack", "best_evals.npz")


@dataclasses.dataclass
class RunCheckpoint:
    """Everything :func:`tall_jax.fit.fit` needs to continue a run exactly where it stopped."""

    state: TrainState  # the state after the last completed epoch
    best_params: Params  # host copy of the parameters of the best epoch
    best_evals: dict[str, np.ndarray]  # the best epoch's per-user metrics (evaluate's keys)
    history: list[dict[str, Any]]  # one record per completed epoch
    best_score: float
    best_epoch: int


def save_checkpoint(run_dir: str | Path, ckpt: RunCheckpoint) -> Path:
    """Write ``<run_dir>/checkpoint/`` (state.msgpack, best.msgpack, progress.json) as one atomic
    unit (:func:`tall_jax.checkpoint.write_folder`)."""
    best = {"params": ckpt.best_params, "evals": {k: np.asarray(v) for k, v in ckpt.best_evals.items()}}
    progress = {"history": ckpt.history, "best_score": ckpt.best_score, "best_epoch": ckpt.best_epoch}
    return checkpoint.write_folder(Path(run_dir) / CHECKPOINT, {
        "state.msgpack": checkpoint.to_bytes(ckpt.state),
        "best.msgpack": checkpoint.to_bytes(best),
        "progress.json": json.dumps(progress).encode(),
    })


def load_checkpoint(run_dir: str | Path, template: TrainState) -> RunCheckpoint | None:
    """The run checkpoint in ``run_dir`` read into ``template`` (shapes and dtypes checked), or None
    without one. Runs written before the checkpoint folder (``last_state.msgpack``,
    ``last_state.json``, ``best_params.msgpack``, ``best_evals.npz`` side by side) are read too."""
    run_dir = Path(run_dir)
    progress_file = _progress_file(run_dir)
    if progress_file is None:
        return None
    if progress_file.name == "progress.json":
        folder = progress_file.parent
        state = load_state(folder / "state.msgpack", template)
        best = serialization.msgpack_restore((folder / "best.msgpack").read_bytes())
        params = checkpoint.restore(template.params, best["params"], str(folder / "best.msgpack"))
        evals = {k: np.asarray(v) for k, v in best["evals"].items()}
    else:
        state = load_state(run_dir / "last_state.msgpack", template)
        params = load_params(run_dir / "best_params.msgpack", template.params)
        with np.load(run_dir / "best_evals.npz") as z:
            evals = {k: z[k] for k in z.files}
    progress = json.loads(progress_file.read_text())
    return RunCheckpoint(state, params, evals, progress["history"], float(progress["best_score"]),
                         int(progress["best_epoch"]))


def _progress_file(run_dir: Path) -> Path | None:
    """The progress file of the checkpoint in ``run_dir``: ``checkpoint/progress.json`` (or of the
    ``.old`` folder a swap left), else an older run's ``last_state.json``; None without one."""
    folder = checkpoint.complete_folder(run_dir / CHECKPOINT)
    if folder is not None:
        return folder / "progress.json"
    return run_dir / "last_state.json" if all((run_dir / name).exists() for name in _LEGACY) else None


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run checkpoint :func:`load_checkpoint` can read."""
    return _progress_file(Path(run_dir)) is not None


def checkpoint_progress(run_dir: str | Path) -> tuple[int, int] | None:
    """(epochs done, best epoch) of the run checkpoint in ``run_dir`` without reading its arrays, or
    None without one."""
    path = _progress_file(Path(run_dir))
    if path is None:
        return None
    progress = json.loads(path.read_text())
    return len(progress["history"]), int(progress["best_epoch"])


def kept_dir(run_dir: str | Path, epoch: int) -> Path:
    """Where ``fit(..., keep_epochs=...)`` keeps the checkpoint of ``epoch``: ``<run_dir>/epoch<e>/``
    (a run folder of its own, holding ``checkpoint/``)."""
    return Path(run_dir) / f"epoch{epoch}"


def fork_checkpoint(trunk_dir: str | Path, epoch: int, run_dir: str | Path) -> bool:
    """Start ``run_dir`` from the checkpoint ``trunk_dir`` kept at ``epoch``: copy it in as
    ``<run_dir>/checkpoint/`` (atomically), so that resuming there continues from that epoch.
    Returns False (and copies nothing) when no such kept checkpoint exists."""
    folder = checkpoint.complete_folder(kept_dir(trunk_dir, epoch) / CHECKPOINT)
    if folder is None:
        return False
    checkpoint.write_folder(Path(run_dir) / CHECKPOINT,
                            {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()})
    return True
