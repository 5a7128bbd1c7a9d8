"""The one evaluator: every model family (the TALL family, LOCA, LFT, EnLFT) ranks through it.

A model is a *scorer* ``score_fn(params, batch) -> (logits_BxM, extras)``: item scores of the batch's
users (:class:`tall_jax.batching.Batch`, padding users = N) and a dict of extra per-user values [B]
(e.g. the gate's entropy; ``{}`` for none). ``score_fn`` is a static argument of the jitted batch, so
it must hash by value: a module-level function, or a frozen dataclass holding its static settings
(:class:`tall_jax.steps.MixtureScorer`); arrays go in ``params``.

:func:`evaluate` cuts the users into fixed-size batches, the last one padded with the dummy user N,
and issues one jitted :func:`evaluate_batch` per batch from the host (asynchronously). A device-side
loop (``lax.map``) over the batches ran 1.7-2.2x slower on a CPU, where XLA runs the loop body's
operations with less parallelism. Ranking follows docs/fidelity.md#metrics: train items excluded from
both rankings, validation items kept as candidates for the test ranking (one top-K for both).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tall_jax.batching import Batch, UserData, dense_rows, make_batch, sequential_order
from tall_jax.metrics import RankingResult
from tall_jax.ranking import DEFAULT_KS, normalise_ks, valid_test_metrics

Scorer = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]


def batch_metrics(score_fn: Scorer, params: Any, batch: Batch, test_idx_BxP: jax.Array,
                  ks: Sequence[int] = DEFAULT_KS,
                  popularity_M: jax.Array | None = None) -> dict[str, jax.Array]:
    """``{"valid/ndcg@K": f32[B], ..., "test/item@r": i32[B], **extras}`` of one batch (not jitted)."""
    logits_BxM, extras = score_fn(params, batch)
    out = valid_test_metrics(logits_BxM, dense_rows(batch.train_idx, batch.n_items),
                             dense_rows(batch.valid_idx, batch.n_items),
                             dense_rows(test_idx_BxP, batch.n_items), ks, popularity_M)
    out.update(extras)
    return out


@functools.partial(jax.jit, static_argnames=("score_fn", "ks"))
def evaluate_batch(score_fn: Scorer, params: Any, data: UserData, users_B: jax.Array,
                   ks: tuple[int, ...] = DEFAULT_KS,
                   popularity_M: jax.Array | None = None) -> dict[str, jax.Array]:
    """:func:`batch_metrics` of the users ``users_B`` (N = padding) gathered from ``data``; jitted."""
    return batch_metrics(score_fn, params, make_batch(data, users_B), data.test_idx[users_B], ks,
                         popularity_M)


def user_batches(n_users: int, batch_size: int, users: np.ndarray | None = None) -> np.ndarray:
    """``users`` (default 0..N-1) in order, cut into int32 [n_batches, batch_size], the tail padded
    with the dummy user N."""
    if users is None:
        return sequential_order(n_users, batch_size)
    users = np.asarray(users, np.int32)
    n_batches = max(-(-len(users) // batch_size), 1)
    order = np.full(n_batches * batch_size, n_users, np.int32)
    order[:len(users)] = users
    return order.reshape(n_batches, batch_size)


def evaluate(score_fn: Scorer, params: Any, data: UserData, *, batch_size: int,
             users: np.ndarray | None = None, ks: Sequence[int] = DEFAULT_KS,
             popularity_M: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per-user valid/test metrics (and the scorer's extras) of ``users`` (default: all, in order),
    one compiled :func:`evaluate_batch` per ``batch_size`` users; device arrays of length len(users).

    ``ks`` are the cut-offs (sorted, deduplicated); ``popularity_M`` (f32[M],
    :func:`tall_jax.ranking.item_popularity`) adds ``popularity@K``.
    """
    ks = normalise_ks(ks)
    n = data.n_users if users is None else len(users)
    pop = None if popularity_M is None else jnp.asarray(popularity_M, jnp.float32)
    parts = [evaluate_batch(score_fn, params, data, jnp.asarray(users_B), ks, pop)
             for users_B in user_batches(data.n_users, batch_size, users)]
    return jax.tree.map(lambda *a: jnp.concatenate(a)[:n], *parts)


def ranking_results(evals: Mapping[str, Any], groups_N: np.ndarray | None = None,
                    n_items: int | None = None) -> dict[str, RankingResult]:
    """``{"valid": RankingResult, "test": RankingResult}`` from :func:`evaluate`'s prefixed keys
    (the ranked items become ``top_items``; ``n_items`` enables coverage); extras without a prefix
    are left out."""
    host = jax.device_get(dict(evals))
    return {split: RankingResult({k[len(split) + 1:]: np.asarray(v) for k, v in host.items()
                                  if k.startswith(split + "/")}, groups=groups_N, n_items=n_items)
            for split in ("valid", "test")}
