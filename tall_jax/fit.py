"""The epoch loop shared by every MultVAE-family model: train, validate, early-stop, checkpoint.

Per epoch (docs/fidelity.md#epoch): adaptive weights, a shuffled on-device epoch, the loss-change window, then
validation and test NDCG@{1,5,10,20} of every user. Early stopping (docs/fidelity.md#early-stopping,
:mod:`tall_jax.stopping`): the score is the mean of the four validation NDCGs; the first epoch always
improves, later ones only if strictly better; training stops after ``patience`` epochs without
improvement. The reported test result is the one of the best epoch. The model is not reloaded (the
authors' code does not either).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from tall_jax import sharding, steps
from tall_jax import state as state_lib
from tall_jax.batching import UserData
from tall_jax.configs import TALLConfig
from tall_jax.datasets.base import Dataset
from tall_jax.evaluation import ranking_results
from tall_jax.metrics import RankingResult
from tall_jax.protocol import GROUP_NAMES
from tall_jax.stopping import EarlyStopping, validation_score
from tall_jax.weights import weight_stats

log = logging.getLogger("tall_jax")
RECORDS_WEIGHTS = ("loss_change", "raw_loss", "wl")  # adaptive modes whose records hold weight statistics


@dataclasses.dataclass
class FitResult:
    """What a run produced: the test (and validation) result of the best epoch, and its history."""

    config: TALLConfig
    test: RankingResult  # per-user test metrics of the best-validation epoch
    valid: RankingResult  # per-user validation metrics of the same epoch
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]  # one entry per epoch (losses, per-group curves, weights, gate)
    wall_time_s: float
    best_params: Any  # host copy of the parameters at the best epoch
    state: state_lib.TrainState  # the final state (best epoch + patience, like the authors' code)

    @classmethod
    def from_best(cls, config: TALLConfig, best_evals: dict[str, Any], groups_N: np.ndarray | None,
                  **fields: Any) -> FitResult:
        """The result whose test and validation rankings are the best epoch's evaluation ``best_evals``."""
        results = ranking_results(best_evals, groups_N)
        return cls(config=config, test=results["test"], valid=results["valid"], **fields)


def _group_means(values_N: np.ndarray, groups_N: np.ndarray | None) -> dict[str, float]:
    if groups_N is None:
        return {}
    return {name: float(np.nanmean(values_N[groups_N == g])) for g, name in enumerate(GROUP_NAMES)
            if np.any(groups_N == g)}


def epoch_record(epoch: int, train_metrics: dict, evals: dict, state: state_lib.TrainState,
                  groups_N: np.ndarray | None, n_valid_N: np.ndarray, ms_N: np.ndarray | None,
                 config: TALLConfig, seconds: float) -> dict[str, Any]:
    """One epoch's history entry: losses, validation score, per-group curves, weights and gate statistics."""
    valid_score = validation_score(evals)
    w_N = np.asarray(state.weights_N)
    record: dict[str, Any] = {
        "epoch": epoch,
        "seconds": seconds,
        "loss": float(np.mean(train_metrics["loss"])),
        "ce": float(np.mean(train_metrics["ce"])),
        "kl": float(np.mean(train_metrics["kl"])),
        "beta": float(np.asarray(train_metrics["beta"])[-1]),
        "valid_score": valid_score,
        "valid_ndcg@20": float(np.nanmean(evals["valid/ndcg@20"])),
        "test_ndcg@20": float(np.nanmean(evals["test/ndcg@20"])),
        "valid_ndcg@20_by_group": _group_means(evals["valid/ndcg@20"], groups_N),
        "test_ndcg@20_by_group": _group_means(evals["test/ndcg@20"], groups_N),
        "weight_by_group": _group_means(w_N, groups_N),
    }
    if config.n_experts > 1:
        entropy, ratio = evals["gate/entropy"], evals["gate/max_min_ratio"]
        record["gate"] = {
            "entropy_mean": float(np.mean(entropy)), "entropy_min": float(np.min(entropy)),
            "entropy_uniform": float(np.log(config.n_experts)),
            "ratio_mean": float(np.mean(ratio)), "ratio_max": float(np.max(ratio)),
        }
    if config.adaptive in RECORDS_WEIGHTS:
        record["weights"] = weight_stats(w_N, n_valid_N, ms_N if ms_N is not None else w_N)
    return record


def conform_history(history: list[dict[str, Any]], config: TALLConfig) -> list[dict[str, Any]]:
    """Saved epoch records as ``config``'s runs write them: a run started from another model's
    checkpoint (LMoE from TALL's epoch T, when every weight is still 1: :mod:`tall_jax.study`) does
    not carry the weight statistics it never records. A no-op for a run's own checkpoint."""
    if config.adaptive in RECORDS_WEIGHTS:
        return history
    return [{k: v for k, v in h.items() if k != "weights"} for h in history]


def fit(dataset: Dataset, config: TALLConfig, *, groups_N: np.ndarray | None = None,
        ms_N: np.ndarray | None = None, out_dir: str | Path | None = None, progress: bool = True,
        resume: bool = False, checkpoint_every: int = 10, keep_epochs: tuple[int, ...] = (),
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        mesh: jax.sharding.Mesh | None = None) -> FitResult:
    """Train ``config`` on ``dataset`` to early stop and return the best epoch's results.

    ``groups_N`` (0 = low .. 4 = high) gives the per-group curves; ``ms_N`` is needed by WL and for
    weight diagnostics. With ``out_dir``, the run checkpoint ``<out_dir>/checkpoint/`` (the state,
    the best parameters and metrics, the history: one atomic unit, an orbax checkpoint step,
    :func:`tall_jax.state.save_checkpoint`) is written every ``checkpoint_every`` epochs and at the
    end, before ``on_epoch`` sees the epoch; ``resume=True`` continues from it (restored with the
    mesh's shardings), bit for bit as if never interrupted. The checkpoint
    of each epoch in ``keep_epochs`` is also kept, in :func:`tall_jax.state.kept_dir`: runs that
    differ only after that epoch start there (:func:`tall_jax.state.fork_checkpoint`). With ``mesh``
    (:func:`tall_jax.sharding.make_mesh`) the experts and their Adam moments are split over its
    ``"expert"`` axis and the data replicated; the steps are partitioned by ``jax.jit`` (same result
    up to reduction order). A ``"data"`` axis above 1 is for hand-written loops
    (:func:`tall_jax.sharding.shard_batch`): the epoch scan builds its batches on the device.
    """
    started = time.perf_counter()
    step_config = config.for_steps()
    data = UserData.from_dataset(dataset)
    n_valid_N = np.diff(dataset.valid.indptr).astype(np.float32)
    state = state_lib.init(jax.random.PRNGKey(config.seed), config, dataset.n_users,
                           dataset.n_items, ms_N=ms_N)
    out = Path(out_dir) if out_dir is not None else None
    history: list[dict[str, Any]] = []
    stop = EarlyStopping(config.patience)
    best_evals, best_params = None, None
    if mesh is not None:
        if mesh.shape[sharding.DATA] != 1:
            raise ValueError("fit shards the expert axis only; use a mesh with data=1")
        # sharded before a resume, so that each device reads its own shard of the checkpoint
        state, data = sharding.shard_state(state, mesh), sharding.replicate(data, mesh)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        saved = state_lib.load_checkpoint(out, state) if resume else None
        if saved is not None:
            state, history, best_evals, best_params = (saved.state, conform_history(saved.history, config),
                                                       saved.best_evals, saved.best_params)
            stop = EarlyStopping(config.patience, saved.best_score, saved.best_epoch)
    # Early stopping, not the epoch cap, decides the end: the bar counts epochs (no ETA against
    # max_epochs) and shows the epochs since the best one against the patience.
    cap = "" if config.max_epochs >= 10_000 else f" (max {config.max_epochs})"
    bar = tqdm(initial=int(state.epoch), disable=not progress, desc=f"{config.model} E={config.n_experts}",
               unit="epoch", dynamic_ncols=True,
               bar_format="{desc}: epoch {n_fmt}" + cap + " [{elapsed}, {rate_fmt}]{postfix}")
    while int(state.epoch) < config.max_epochs and not stop.should_stop(int(state.epoch)):
        tick = time.perf_counter()
        state, train_metrics = steps.train_epoch(state, data, step_config)
        evals = jax.device_get(steps.evaluate(state.params, data, step_config))
        train_metrics = jax.device_get(train_metrics)
        epoch = int(state.epoch)
        if not np.isfinite(train_metrics["loss"]).all():
            raise FloatingPointError(f"non-finite training loss in epoch {epoch} "
                                     f"(steps {int(state.step) - len(train_metrics['loss'])}..{int(state.step)})")
        record = epoch_record(epoch, train_metrics, evals, state, groups_N, n_valid_N, ms_N,
                              config, time.perf_counter() - tick)
        history.append(record)
        stop, improved = stop.update(epoch, record["valid_score"])
        if improved:
            best_evals, best_params = evals, jax.device_get(state.params)
        bar.set_postfix(loss=f"{record['loss']:.2f}", val=f"{record['valid_score']:.4f}",
                        best=stop.best_epoch, since_best=f"{stop.since_best(epoch)}/{config.patience}",
                        refresh=False)
        bar.update(1)
        if not progress:
            log.info("epoch %d: loss %.3f, valid %.4f (best %.4f at %d), test NDCG@20 %.4f, %.2fs",
                     epoch, record["loss"], record["valid_score"], stop.best_score, stop.best_epoch,
                     record["test_ndcg@20"], record["seconds"])
        if out is not None and checkpoint_every and epoch % checkpoint_every == 0:
            _checkpoint(out, state, best_params, best_evals, history, stop)
        if out is not None and epoch in keep_epochs:
            _checkpoint(state_lib.kept_dir(out, epoch), state, best_params, best_evals, history, stop)
        if on_epoch is not None:
            on_epoch(record)
    bar.close()
    if out is not None:
        _checkpoint(out, state, best_params, best_evals, history, stop)
    return FitResult.from_best(config, best_evals, groups_N, best_epoch=stop.best_epoch,
                               epochs_run=int(state.epoch), history=history,
                               wall_time_s=time.perf_counter() - started, best_params=best_params,
                               state=state)


def _checkpoint(out: Path, state: state_lib.TrainState, best_params, best_evals, history: list,
                stop: EarlyStopping) -> None:
    state_lib.save_checkpoint(out, state_lib.RunCheckpoint(
        state=state, best_params=best_params, best_evals=best_evals, history=history,
        best_score=stop.best_score, best_epoch=stop.best_epoch))
