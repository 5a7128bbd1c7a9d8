"""The grid search of the closed models (docs/closed_forms.md#grids): every point of
:func:`tall_jax.closed.config.grid_points` is fitted and evaluated, and the point with the best
validation score (:func:`tall_jax.stopping.validation_score`, the mean of validation NDCG@{1,5,10,20};
the first on ties, as :func:`tall_jax.stopping.improves`) is chosen. Its test metrics come from the
same evaluation (one ranking serves both), so nothing is refitted.

:func:`fit_points` fits the points in grid order and shares the work that does not change between
neighbouring points: EASE's Gram over λ, a weight source's Gram over λ, ease_kkt's rounds of one
(λ, α) chain and its round-1 signal over α, RP3beta's two-step walk over β and k, ItemKNN's nothing
(each point prunes anew), LOCA-EASE's anchors, kernels and local Grams over λ.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from tall_jax.batching import UserData
from tall_jax.closed import ease as ease_lib
from tall_jax.closed import loca_ease, weighting
from tall_jax.closed.config import ClosedConfig, grid_points
from tall_jax.closed.itemknn import itemknn_weights
from tall_jax.closed.linalg import resolve_solver
from tall_jax.closed.pop import popularity
from tall_jax.closed.rp3beta import rp3beta_walk, rp3beta_weights
from tall_jax.closed.scoring import Fitted, evaluate_fitted
from tall_jax.ranking import DEFAULT_KS
from tall_jax.stopping import improves, validation_score
from tall_jax.weights import weight_stats

log = logging.getLogger("tall_jax.closed")
GB = 1e9


@dataclasses.dataclass(frozen=True)
class Search:
    """A finished grid search: one record per point ({"hp", "valid_score", "seconds"}, and ease_kkt's
    "weights" summary),
    the chosen index, and the chosen point's per-user metrics (valid and test) and diagnostics."""

    records: list[dict[str, Any]]
    best: int
    best_evals: dict[str, np.ndarray]
    diagnostics: dict[str, Any]


def local_chunk(config: ClosedConfig, n_items: int, solver: str) -> int:
    """Local EASEs per batched solve: ``config.chunk``, or as many as the memory budget holds. Per
    model, in units of one dense [M, M]: its sparse Gram (~2: values and indices of a nearly dense
    matrix) and its G + λI in the host stack (1); the jax solver adds the device's input, factor,
    identity and inverse (4)."""
    if config.chunk:
        return config.chunk
    per_model = n_items * n_items * np.dtype(config.dtype).itemsize * (3 if solver == "lapack" else 7)
    return int(max(1, min(config.n_local, config.memory_budget_gb * GB // per_model)))


def _ease_points(config: ClosedConfig, x: sp.csr_matrix, points, ms_N,
                 solver: str) -> Iterator[tuple[Fitted, dict]]:
    dtype = config.dtype
    solve_gram = lambda g, lam: ease_lib.ease_from_gram(g, lam, dtype=dtype, solver=solver)  # noqa: E731
    if config.model == "ease":
        g = ease_lib.gram(x, None, dtype)
        for p in points:
            yield Fitted(item_MxM=solve_gram(g, p["lambda"])), {}
        return
    if config.model in ("ease_wl", "ease_ms"):
        source, name = ((weighting.wl_user_weights, "gamma") if config.model == "ease_wl"
                        else (weighting.ms_user_weights, "p"))
        key, g = None, None
        for p in points:
            if p[name] != key:
                key, g = p[name], None
                g = ease_lib.gram(x, source(ms_N, p[name]), dtype)
            yield Fitted(item_MxM=solve_gram(g, p["lambda"])), {}
        return
    # ease_kkt: one chain of rounds per (λ, α); round 1's signal depends on λ only
    solve = lambda w, lam: solve_gram(ease_lib.gram(x, w, dtype), lam)  # noqa: E731
    first_signal: dict[float, np.ndarray] = {}
    chain, chain_key, done = None, None, 0
    for p in points:
        lam, alpha, rounds = p["lambda"], p["alpha"], int(p["rounds"])
        if chain_key != (lam, alpha) or done >= rounds:
            chain_key, done = (lam, alpha), 0
            chain = weighting.kkt_rounds(x, solve, lam, alpha, signal=config.kkt_signal,
                                         mode=config.kkt_mode, start_signal_N=first_signal.get(lam))
        while done < rounds:
            done, s_N, w_N, b_MxM = next(chain)
            first_signal.setdefault(lam, s_N)
            if done < rounds:
                del b_MxM
        yield Fitted(item_MxM=b_MxM), {"weights": _weight_summary(w_N, ms_N)}
        del b_MxM  # the chain's next round solves without it


def _weight_summary(w_N: np.ndarray, ms_N: np.ndarray) -> dict[str, float]:
    """Spread of the KKT weights and their rank correlation with the mainstream score."""
    stats = weight_stats(w_N, ms_N, ms_N)
    stats.pop("spearman_n_valid")
    return stats


def _loca_points(config: ClosedConfig, x, points, solver, progress) -> Iterator[tuple[Fitted, dict]]:
    n, m = x.shape
    t0 = time.perf_counter()
    kern = loca_ease.loca_kernels(loca_ease.svd_embeddings(x, config.latent), config.n_local,
                                  config.anchor_stride, config.train_h, config.test_h)
    info = {"anchors": kern.anchors_A.tolist(), "n_distinct_anchors": int(kern.distinct_D.size),
            "train_users_per_model": (kern.train_NxD > 0).sum(0).tolist(),
            "candidates_per_model": (kern.test_NxD > 0).sum(0).tolist(),
            "users_covered": int((kern.test_NxD.sum(1) > 0).sum()),
            "users_fallback": int((kern.test_NxD.sum(1) <= 0).sum()),
            "embedding_seconds": time.perf_counter() - t0}
    chunk = local_chunk(config, m, solver)
    # λs whose [N, M] numerators fit the budget together share each anchor's Gram
    per_lam = max(1, int(config.memory_budget_gb * GB // (n * m * 4)))
    lams = [p["lambda"] for p in points]
    for lo in range(0, len(lams), per_lam):
        group = lams[lo:lo + per_lam]
        bar = progress(kern.distinct_D.size, f"loca_ease local models, lambda {group}")
        rows = loca_ease.mixture_rows(x, kern.train_NxD, kern.test_NxD, group, dtype=config.dtype,
                                      solver=solver, chunk=chunk, progress=bar.update)
        bar.close()
        for r in rows:
            yield Fitted(rows_NxM=r), {**info, "chunk": chunk}


def _neighbour_points(config: ClosedConfig, x, points) -> Iterator[tuple[Fitted, dict]]:
    budget = config.memory_budget_gb * GB
    if config.model == "itemknn":
        for p in points:
            w = itemknn_weights(x, int(p["k"]), p["shrink"], dtype=config.dtype, budget_bytes=budget)
            yield Fitted(item_MxM=w), {"nnz": int(w.nnz)}
        return
    alpha, walk = None, None
    for p in points:
        if p["alpha"] != alpha:
            alpha, walk = p["alpha"], None
            walk = rp3beta_walk(x, alpha, config.dtype)
        w = rp3beta_weights(x, alpha, p["beta"], int(p["k"]), bool(p["normalize"]), dtype=config.dtype,
                            budget_bytes=budget, walk=walk)
        yield Fitted(item_MxM=w), {"nnz": int(w.nnz)}


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def fit_points(config: ClosedConfig, train: sp.spmatrix, ms_N: np.ndarray | None = None,
               progress=None) -> Iterator[tuple[dict[str, float], Fitted, dict]]:
    """(hp, fitted model, diagnostics) for each point of the config's grid, in grid order.
    ``ms_N``: the mainstream scores (ease_wl, ease_ms, ease_kkt's diagnostics); ``progress(total,
    desc)`` -> a bar with update/close for LOCA-EASE's local models (None: silent)."""
    x = ease_lib.binary(train, config.dtype)
    points = grid_points(config)
    progress = progress or (lambda total, desc: _NoBar())
    if config.model == "pop":
        fits = iter([(Fitted(pop_M=popularity(x)), {})])
    elif config.model in ("itemknn", "rp3beta"):
        fits = _neighbour_points(config, x, points)
    elif config.model == "loca_ease":
        fits = _loca_points(config, x, points, resolve_solver(config.solver, config.dtype), progress)
    else:
        if ms_N is None and config.model != "ease":
            raise ValueError(f"{config.model} needs the mainstream scores ms_N")
        fits = _ease_points(config, x, points, ms_N, resolve_solver(config.solver, config.dtype))
    for p in points:
        fitted, info = next(fits)
        yield p, fitted, info
        del fitted  # before the next point solves: one [M, M] at a time


def search(config: ClosedConfig, train: sp.spmatrix, data: UserData, *, ms_N: np.ndarray | None = None,
           progress=None, point_bar=None) -> Search:
    """Fit and evaluate every grid point; keep the best validation point's per-user metrics.

    ``point_bar``: an iterable wrapper (e.g. tqdm) over the points; ``progress``: see :func:`fit_points`."""
    ks = tuple(sorted({*DEFAULT_KS, *config.ks}))
    records: list[dict[str, Any]] = []
    best, best_score, best_evals, best_info = -1, -np.inf, None, {}
    fits = fit_points(config, train, ms_N, progress)
    n_points = len(grid_points(config))
    steps = point_bar(range(n_points)) if point_bar is not None else range(n_points)
    for i in steps:
        t0 = time.perf_counter()
        hp, fitted, info = next(fits)
        evals = evaluate_fitted(fitted, train, data, batch_size=config.eval_batch, ks=ks,
                                budget_bytes=config.memory_budget_gb * GB)
        del fitted  # an [M, M] matrix: gone before the next point solves
        score = validation_score(evals)
        record = {"hp": hp, "valid_score": score, "seconds": time.perf_counter() - t0}
        if info.get("weights"):
            record["weights"] = info["weights"]
        records.append(record)
        log.info("%s %s: valid %.5f (%.1fs)", config.model, hp, score, record["seconds"])
        if improves(score, best_score, best + 1):
            best, best_score, best_evals, best_info = i, score, evals, info
    return Search(records, best, best_evals, best_info)
