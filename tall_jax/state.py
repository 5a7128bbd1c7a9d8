"""TrainState: everything a TALL-family training run carries from step to step, as one pytree; its
files (orbax folders, checked against a template) and the run checkpoint the epoch loop resumes from."""
from __future__ import annotations

import dataclasses
import functools
import shutil
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
from tall_jax.optim import adam_l2
from tall_jax.vae import Params


@struct.dataclass
class TrainState:
    """Parameters, optimizer state, RNG, counters and the per-user loss history (docs/fidelity.md#loss,
    #adaptive-weights), in the one state convention (:mod:`tall_jax.train_state`; the optimizer is
    :func:`make_optimizer` of the static config)."""

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


def save_state(path: str | Path, state: TrainState) -> Path:
    """Write the state as the orbax folder ``path``, atomically (bit-exact; a sharded state is
    written shard by shard, never gathered; read back with :func:`load_state`)."""
    return checkpoint.save_folder(path, {"state": serialization.to_state_dict(state)}, {"kind": "TrainState"})


def load_state(path: str | Path, template: TrainState) -> TrainState:
    """Read a state written by :func:`save_state` (or, before orbax, a msgpack file) into the
    structure of ``template``, with its shardings; ValueError naming the leaves whose shape or dtype
    differ from the template's; CorruptCheckpointError naming the file when it cannot be read."""
    return serialization.from_state_dict(template, _read_tree(Path(path), "state", template, host=False))


def save_params(path: str | Path, params: Params) -> Path:
    """Write a parameter pytree as the orbax folder ``path``, atomically."""
    return checkpoint.save_folder(path, {"params": params}, {"kind": "params"})


def load_params(path: str | Path, template: Params) -> Params:
    """Read parameters written by :func:`save_params` (or a msgpack file) into the structure of
    ``template`` (checked), as host (numpy) arrays."""
    return serialization.from_state_dict(template, _read_tree(Path(path), "params", template, host=True))


def _placed_like(template: Any, tree: Any) -> Any:
    """``tree``'s host arrays placed like ``template``'s ``jax.Array`` leaves (same shardings)."""
    return jax.tree.map(lambda t, a: jax.device_put(a, t.sharding) if isinstance(t, jax.Array) else a,
                        template, tree)


def _read_tree(path: Path, name: str, template: Any, host: bool) -> dict[str, Any]:
    if path.is_file():  # msgpack, before orbax
        state_dict = checkpoint.read_msgpack(path)
        checkpoint.check_like(serialization.to_state_dict(template), state_dict, str(path))
        if not host:
            state_dict = _placed_like(serialization.to_state_dict(template), state_dict)
        return state_dict
    folder = checkpoint.complete_orbax_folder(path)
    if folder is None:
        raise FileNotFoundError(f"{path}: no checkpoint there")
    return checkpoint.read_tree(folder, name, template, host=host)


CHECKPOINT = "checkpoint"  # the run checkpoint's folder inside a run folder
ITEMS = ("state", "best_params", "best_evals")  # the pytree items of a run checkpoint step
PROGRESS_KEYS = ("history", "best_score", "best_epoch")
_OLD = ("state.msgpack", "best.msgpack", "progress.json")  # checkpoint/ before orbax (msgpack)
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


def save_checkpoint(run_dir: str | Path, ckpt: RunCheckpoint, *, max_to_keep: int = 1) -> Path:
    """Write the run checkpoint as the next step of ``<run_dir>/checkpoint/`` (an orbax
    CheckpointManager, :class:`tall_jax.checkpoint.Checkpoints`): the items ``state``,
    ``best_params``, ``best_evals`` and ``progress/progress.json`` (epoch, history, best score and
    epoch), one atomic unit. The last ``max_to_keep`` steps are kept. A sharded state is written
    shard by shard from its devices (nothing is gathered to the host). A checkpoint of the format
    before orbax in the same folder is removed once the new one is complete. Returns the step's
    folder; CheckpointWriteError (an OSError) naming it when the disk is full (nothing is left)."""
    run_dir = Path(run_dir)
    trees = {"state": serialization.to_state_dict(ckpt.state), "best_params": ckpt.best_params,
             "best_evals": {k: np.asarray(v) for k, v in ckpt.best_evals.items()}}
    progress = {"epoch": int(ckpt.state.epoch), "history": ckpt.history,
                "best_score": ckpt.best_score, "best_epoch": ckpt.best_epoch}
    with checkpoint.Checkpoints(run_dir / CHECKPOINT, ITEMS, max_to_keep=max_to_keep) as ck:
        folder = ck.save(trees, progress)
    _remove_old_format(run_dir)
    return folder


def _remove_old_format(run_dir: Path) -> None:
    """Drop the msgpack checkpoint (``checkpoint/*.msgpack``, ``progress.json``, a swap's ``.old`` /
    ``.tmp``) that a newer orbax checkpoint in ``run_dir`` supersedes."""
    root = run_dir / CHECKPOINT
    for name in _OLD:
        (root / name).unlink(missing_ok=True)
    for name in (CHECKPOINT + ".old", CHECKPOINT + ".tmp"):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name, ignore_errors=True)


def _candidates(run_dir: Path) -> list[tuple[Path, str]]:
    """The run checkpoints in ``run_dir``, newest first, as (path, format): the orbax steps of
    ``checkpoint/``; then, written before orbax, ``checkpoint/`` holding msgpack files (or the
    ``checkpoint.old/`` an interrupted swap left); then an older run's side-by-side files."""
    root = run_dir / CHECKPOINT
    out = [(root / str(step), "orbax") for step in checkpoint.steps(root)]
    out += [(folder, "msgpack") for folder in (root, root.with_name(root.name + ".old"))
            if any((folder / name).is_file() for name in _OLD)]
    if all((run_dir / name).exists() for name in _LEGACY):
        out.append((run_dir, "legacy"))
    return out


def _progress_path(path: Path, kind: str) -> Path:
    return {"orbax": path / checkpoint.META / checkpoint.META_FILE, "msgpack": path / "progress.json",
            "legacy": path / "last_state.json"}[kind]


def _read_progress(path: Path, kind: str) -> dict[str, Any]:
    progress = checkpoint.read_json(_progress_path(path, kind), PROGRESS_KEYS)
    if not isinstance(progress["history"], list):
        raise checkpoint.CorruptCheckpointError(f"{_progress_path(path, kind)}: 'history' is not a list")
    return progress


def _read_checkpoint(path: Path, kind: str, template: TrainState) -> RunCheckpoint:
    progress = _read_progress(path, kind)
    if kind == "orbax":
        state = serialization.from_state_dict(template, checkpoint.read_tree(path, "state", template))
        params = serialization.from_state_dict(
            template.params, checkpoint.read_tree(path, "best_params", template.params, host=True))
        evals = checkpoint.read_tree(path, "best_evals")
    elif kind == "msgpack":
        state = _placed_like(template, checkpoint.restore(template, checkpoint.read_msgpack(
            path / "state.msgpack"), str(path / "state.msgpack")))
        best_file = path / "best.msgpack"
        best = checkpoint.read_msgpack(best_file)
        if not isinstance(best.get("params"), dict) or not isinstance(best.get("evals"), dict):
            raise checkpoint.CorruptCheckpointError(f"{best_file}: no 'params' and 'evals' in it")
        params = checkpoint.restore(template.params, best["params"], str(best_file))
        evals = best["evals"]
    else:
        state = load_state(path / "last_state.msgpack", template)
        params = load_params(path / "best_params.msgpack", template.params)
        evals = _read_npz(path / "best_evals.npz")
    try:
        best_score, best_epoch = float(progress["best_score"]), int(progress["best_epoch"])
    except (TypeError, ValueError) as e:
        raise checkpoint.CorruptCheckpointError(f"{_progress_path(path, kind)}: {e}") from e
    return RunCheckpoint(state, params, {k: np.asarray(v) for k, v in evals.items()},
                         progress["history"], best_score, best_epoch)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # BadZipFile, EOFError, a pickle error...
        raise checkpoint.CorruptCheckpointError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e


def load_checkpoint(run_dir: str | Path, template: TrainState) -> RunCheckpoint | None:
    """The run checkpoint in ``run_dir`` read into ``template`` (shapes and dtypes checked; arrays
    restored with the template's shardings, so a template sharded over a mesh is restored sharded,
    each device reading its own shard), or None without one. The newest complete checkpoint is
    read; one that cannot be read (a corrupt file) is logged as a warning naming the file and the
    previous complete one is read instead; without one, CorruptCheckpointError (a ValueError)
    names the file. Checkpoints written before orbax (``checkpoint/`` with msgpack files, or the
    side-by-side ``last_state.msgpack``, ``last_state.json``, ``best_params.msgpack``,
    ``best_evals.npz``) are read too."""
    run_dir = Path(run_dir)
    return checkpoint.first_readable(lambda: [
        (path, functools.partial(_read_checkpoint, path, kind, template)) for path, kind in _candidates(run_dir)])


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run checkpoint (of any format) for :func:`load_checkpoint`."""
    return bool(_candidates(Path(run_dir)))


def checkpoint_progress(run_dir: str | Path) -> tuple[int, int] | None:
    """(epochs done, best epoch) of the run checkpoint in ``run_dir`` without reading its arrays, or
    None without one (the fallback of :func:`load_checkpoint` applies). Writes nothing: safe while
    the run is writing."""
    run_dir = Path(run_dir)
    progress = checkpoint.first_readable(lambda: [
        (path, functools.partial(_read_progress, path, kind)) for path, kind in _candidates(run_dir)])
    return None if progress is None else (len(progress["history"]), int(progress["best_epoch"]))


def kept_dir(run_dir: str | Path, epoch: int) -> Path:
    """Where ``fit(..., keep_epochs=...)`` keeps the checkpoint of ``epoch``: ``<run_dir>/epoch<e>/``
    (a run folder of its own, holding ``checkpoint/``)."""
    return Path(run_dir) / f"epoch{epoch}"


def fork_checkpoint(trunk_dir: str | Path, epoch: int, run_dir: str | Path) -> bool:
    """Start ``run_dir`` from the checkpoint ``trunk_dir`` kept at ``epoch``: copy it in as
    ``<run_dir>/checkpoint/`` (atomically; an orbax step as the next step there, a msgpack
    checkpoint as it is), so that resuming there continues from that epoch. Returns False (and
    copies nothing) when no such kept checkpoint exists."""
    found = [(path, kind) for path, kind in _candidates(kept_dir(trunk_dir, epoch)) if kind != "legacy"]
    if not found:
        return False
    path, kind = found[0]
    if kind == "orbax":
        with checkpoint.Checkpoints(Path(run_dir) / CHECKPOINT, ITEMS) as ck:
            ck.add_copy(path)
        _remove_old_format(Path(run_dir))
    else:
        checkpoint.write_folder(Path(run_dir) / CHECKPOINT,
                                {f.name: f.read_bytes() for f in sorted(path.iterdir()) if f.is_file()})
    return True
