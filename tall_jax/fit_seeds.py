"""Several seeds of one model trained as ONE program: the TrainStates stacked on a leading run axis R,
the epoch and the evaluation ``jax.vmap``-ed over it, each run with its own early stopping and best
epoch.

    results = fit_seeds(dataset, config, seeds=[0, 1, 2, 3, 4], groups_N=groups_N)

Run r is the run :func:`tall_jax.fit.fit` trains with ``config.replace(seed=seeds[r])``: the same
initialisation, shuffles, noise and dropout (all drawn from the seed's key), the same per-epoch
records, the same stopping rule. Only the floating-point reduction order of the batched matmuls may
differ, so the runs agree to float32 rounding (tests/test_fit_seeds.py), not bit for bit.

Why: at E = 10, or for a single MultVAE, one run leaves a GPU mostly idle; R runs in one program
fill it. A run that has stopped keeps being stepped with the others (its result was taken when it
stopped), so the program's shapes never change. On a 2-core CPU, which a single run already keeps
busy, this is no faster than running the seeds one after another (benchmarks/README.md).
"""
from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tall_jax import state as state_lib
from tall_jax import steps
from tall_jax.batching import UserData, make_batch, sequential_order
from tall_jax.configs import TALLConfig
from tall_jax.datasets.base import Dataset
from tall_jax.fit import FitResult, epoch_record
from tall_jax.stopping import EarlyStopping


def init_runs(config: TALLConfig, seeds: list[int], n_users: int, n_items: int,
              ms_N: np.ndarray | None = None) -> state_lib.TrainState:
    """The TrainStates of ``seeds`` stacked along a leading run axis (leaf shapes [R, ...])."""
    states = [state_lib.init(jax.random.PRNGKey(s), config.replace(seed=s), n_users, n_items, ms_N=ms_N)
              for s in seeds]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def run_slice(tree: Any, r: int) -> Any:
    """Run ``r`` of a stacked pytree."""
    return jax.tree.map(lambda a: a[r], tree)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("states",))
def train_epochs(states: state_lib.TrainState, data: UserData, config: TALLConfig):
    """:func:`tall_jax.steps.train_epoch` of every run at once (vmapped over the run axis)."""
    return jax.vmap(lambda s: steps.train_epoch(s, data, config))(states)


@functools.partial(jax.jit, static_argnames=("config",))
def _evaluate_batch(params: Any, data: UserData, users_B: jax.Array, config: TALLConfig):
    batch, test_idx_BxP = make_batch(data, users_B), data.test_idx[users_B]
    return jax.vmap(lambda p: steps.eval_step(p, batch, test_idx_BxP, config))(params)


def evaluate_runs(params: Any, data: UserData, config: TALLConfig) -> dict[str, jax.Array]:
    """:func:`tall_jax.steps.evaluate` of every run: per-user metrics with leading shape [R, N]."""
    parts = [_evaluate_batch(params, data, jnp.asarray(users_B), config)
             for users_B in sequential_order(data.n_users, config.eval_batch)]
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1)[:, : data.n_users], *parts)


def fit_seeds(dataset: Dataset, config: TALLConfig, seeds: list[int], *,
              groups_N: np.ndarray | None = None, ms_N: np.ndarray | None = None,
              progress: bool = True) -> list[FitResult]:
    """Train ``config`` with each of ``seeds`` as one vmapped program; one FitResult per seed, as
    :func:`tall_jax.fit.fit` returns it (``state`` is the run's state when it stopped)."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"fit_seeds needs distinct seeds, got {seeds}")
    started = time.perf_counter()
    step_config = config.for_steps()
    data = UserData.from_dataset(dataset)
    n_valid_N = np.diff(dataset.valid.indptr).astype(np.float32)
    states = init_runs(config, seeds, dataset.n_users, dataset.n_items, ms_N)
    n_runs = len(seeds)
    histories: list[list[dict[str, Any]]] = [[] for _ in seeds]
    stops = [EarlyStopping(config.patience) for _ in seeds]
    best: list[dict[str, Any]] = [{"evals": None, "params": None} for _ in seeds]
    finished: list[FitResult | None] = [None] * n_runs
    bar = tqdm(disable=not progress, desc=f"{config.model} E={config.n_experts} x{n_runs} seeds", unit="epoch")
    epoch = 0
    while any(f is None for f in finished) and epoch < config.max_epochs:
        tick = time.perf_counter()
        states, metrics = train_epochs(states, data, step_config)
        evals = jax.device_get(evaluate_runs(states.params, data, step_config))
        metrics = jax.device_get(metrics)
        epoch += 1
        seconds = (time.perf_counter() - tick) / n_runs
        for r in range(n_runs):
            if finished[r] is not None:
                continue
            metrics_r, evals_r = run_slice(metrics, r), run_slice(evals, r)
            if not np.isfinite(metrics_r["loss"]).all():
                raise FloatingPointError(f"non-finite training loss in epoch {epoch} of seed {seeds[r]}")
            state_r = run_slice(states, r)
            record = epoch_record(epoch, metrics_r, evals_r, state_r, groups_N, n_valid_N, ms_N,
                                  config, seconds)
            histories[r].append(record)
            stops[r], improved = stops[r].update(epoch, record["valid_score"])
            if improved:
                best[r].update(evals=evals_r, params=jax.device_get(state_r.params))
            if stops[r].should_stop(epoch) or epoch >= config.max_epochs:
                finished[r] = FitResult.from_best(
                    config.replace(seed=seeds[r]), best[r]["evals"], groups_N, best_epoch=stops[r].best_epoch,
                    epochs_run=epoch, history=histories[r], wall_time_s=time.perf_counter() - started,
                    best_params=best[r]["params"], state=jax.device_get(state_r))
        bar.set_postfix(running=sum(f is None for f in finished), refresh=False)
        bar.update(1)
    bar.close()
    return [f for f in finished if f is not None]

