"""The ranking kernel: full-ranking top-K metrics of a batch of users (docs/fidelity.md#metrics).

Metric definitions (recorded verbatim in every results JSON, see ``tall_jax.metrics.METRIC_DEFINITIONS``):
- full ranking over all M items; the user's train items are set to -inf before ranking; validation items
  are NOT masked when ranking for test (docs/fidelity.md#metrics);
- NDCG@K = DCG/IDCG with DCG = sum over hit positions p (1-based) of 1/log2(p+1) and
  IDCG = sum_{p=1}^{min(|G|,K)} 1/log2(p+1);
- Recall@K = hits@K / |G| (the LFT repo's convention, not vae_cf's hits/min(K,|G|));
- Precision@K = hits@K / K; HR@K = 1 if hits@K > 0 else 0; MRR@K = 1 / rank of the first hit within the
  top K (0 without one); MAP@K = sum over hit ranks p <= K of (hits@p / p), divided by min(K, |G|);
- users with an empty target set G get NaN for every one of these (means use nanmean; the count is
  reported);
- beyond accuracy: popularity@K = mean over the user's top K of pop(i) = (train interactions of item i) /
  (number of users), i.e. the share of users whose train set holds i, in [0, 1]; its group / overall value
  is the mean over users (average recommendation popularity). coverage@K = number of distinct items in
  the top K of any evaluated user (of the group, for a group column) / M. Both ignore the targets, so they
  are defined for every user.

Ties: ``jax.lax.top_k`` places the lower item index first among equal scores, so our ranking is
deterministic; the authors' argpartition+argsort breaks ties arbitrarily. With real-valued logits ties
are rare and only matter at the K-th boundary.

The kernel (:func:`rank_metrics`, :func:`valid_test_metrics`) also returns the ranked items
themselves as one int32 array per rank, ``item@1`` .. ``item@R`` (R = min(max K, M); -1 where the user had
fewer than r candidate items), so every per-user path carries them without a new array shape;
:class:`tall_jax.metrics.RankingResult` collects them into ``top_items``.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from tall_jax.batching import dense_rows

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)
# Early stopping of the faithful default: the mean of validation NDCG at these cut-offs, whatever else
# is evaluated (docs/fidelity.md#metrics).
EARLY_STOPPING_KS: tuple[int, ...] = DEFAULT_KS
ACCURACY_METRICS: tuple[str, ...] = ("ndcg", "recall", "precision", "hr", "mrr", "map")

def normalise_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """``ks`` as a sorted tuple of distinct positive ints (the static argument the kernel wants)."""
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] < 1:
        raise ValueError(f"cut-offs must be positive integers, got {tuple(ks)!r}")
    return out


def metric_names(ks: Sequence[int] = DEFAULT_KS, popularity: bool = False) -> tuple[str, ...]:
    """The per-user metric keys ``rank_metrics`` returns, in order: for each K in ``ks`` ndcg, recall,
    precision, hr, mrr, map (and popularity when the kernel is given item popularities)."""
    names = ACCURACY_METRICS + (("popularity",) if popularity else ())
    return tuple(f"{name}@{k}" for k in ks for name in names)


def _ranked(scores_BxM: jax.Array, exclude_BxM: jax.Array, kmax: int) -> tuple[jax.Array, jax.Array]:
    """Top ``kmax`` item ids [B, kmax] after setting excluded items to -inf, and which of those slots
    hold a real candidate (False only when a user has fewer than kmax non-excluded items)."""
    scores_BxM = jnp.where(exclude_BxM, -jnp.inf, scores_BxM.astype(jnp.float32))
    _, top_BxK = jax.lax.top_k(scores_BxM, kmax)
    return top_BxK, ~jnp.take_along_axis(exclude_BxM, top_BxK, axis=-1)


def _metrics_from_top(top_BxK: jax.Array, exclude_BxM: jax.Array, target_BxM: jax.Array,
                      ks: tuple[int, ...], kmax: int) -> dict[str, jax.Array]:
    hit_BxK = jnp.take_along_axis(target_BxM & ~exclude_BxM, top_BxK, axis=-1).astype(jnp.float32)
    discount_K = 1.0 / jnp.log2(jnp.arange(2, kmax + 2, dtype=jnp.float32))
    dcg_BxK = jnp.cumsum(hit_BxK * discount_K[None, :], axis=-1)
    nhit_BxK = jnp.cumsum(hit_BxK, axis=-1)
    idcg_table = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(discount_K)])  # [kmax+1]
    n_target_B = target_BxM.sum(-1)
    defined_B = n_target_B > 0
    safe_n_B = jnp.where(defined_B, n_target_B, 1).astype(jnp.float32)
    rank_K = jnp.arange(1, kmax + 1, dtype=jnp.float32)
    ap_BxK = jnp.cumsum(hit_BxK * nhit_BxK / rank_K[None, :], axis=-1)  # sum of precision at hit ranks
    first_B = jnp.argmax(hit_BxK, axis=-1)  # 0-based rank of the first hit (0 when there is none)
    any_B = nhit_BxK[:, -1] > 0
    out = {}
    for k in ks:
        kk = min(k, kmax)
        idcg_B = idcg_table[jnp.clip(jnp.minimum(n_target_B, kk), 1, kmax)]
        out[f"ndcg@{k}"] = jnp.where(defined_B, dcg_BxK[:, kk - 1] / idcg_B, jnp.nan)
        out[f"recall@{k}"] = jnp.where(defined_B, nhit_BxK[:, kk - 1] / safe_n_B, jnp.nan)
        out[f"precision@{k}"] = jnp.where(defined_B, nhit_BxK[:, kk - 1] / k, jnp.nan)
        out[f"hr@{k}"] = jnp.where(defined_B, (nhit_BxK[:, kk - 1] > 0).astype(jnp.float32), jnp.nan)
        in_top_B = any_B & (first_B < kk)
        rr_B = jnp.where(in_top_B, 1.0 / (first_B + 1).astype(jnp.float32), 0.0)
        out[f"mrr@{k}"] = jnp.where(defined_B, rr_B, jnp.nan)
        denom_B = jnp.minimum(safe_n_B, float(k))
        out[f"map@{k}"] = jnp.where(defined_B, ap_BxK[:, kk - 1] / denom_B, jnp.nan)
    return out


def _popularity_from_top(top_BxK: jax.Array, recommended_BxK: jax.Array, popularity_M: jax.Array,
                         ks: tuple[int, ...], kmax: int) -> dict[str, jax.Array]:
    pop_BxK = jnp.where(recommended_BxK, jnp.asarray(popularity_M, jnp.float32)[top_BxK], 0.0)
    sum_BxK = jnp.cumsum(pop_BxK, axis=-1)
    count_BxK = jnp.cumsum(recommended_BxK.astype(jnp.float32), axis=-1)
    out = {}
    for k in ks:
        kk = min(k, kmax)
        n_B = count_BxK[:, kk - 1]
        out[f"popularity@{k}"] = jnp.where(n_B > 0, sum_BxK[:, kk - 1] / jnp.maximum(n_B, 1.0), jnp.nan)
    return out


def _item_columns(top_BxK: jax.Array, recommended_BxK: jax.Array) -> dict[str, jax.Array]:
    items_BxK = jnp.where(recommended_BxK, top_BxK, -1).astype(jnp.int32)
    return {f"item@{r + 1}": items_BxK[:, r] for r in range(items_BxK.shape[1])}


@functools.partial(jax.jit, static_argnames=("ks", "return_items"))
def rank_metrics(
    scores_BxM: jax.Array,
    exclude_BxM: jax.Array,
    target_BxM: jax.Array,
    ks: tuple[int, ...] = DEFAULT_KS,
    popularity_M: jax.Array | None = None,
    return_items: bool = False,
) -> dict[str, jax.Array]:
    """Per-user NDCG, Recall, Precision, HR, MRR and MAP @K for each K in ``ks``; returns
    ``{"ndcg@K": f32[B], ...}`` (docs/fidelity.md#metrics; definitions in ``METRIC_DEFINITIONS``).

    ``exclude_BxM`` (bool or 0/1, the train items) is set to -inf and can never count as a hit;
    ``target_BxM`` (bool or 0/1) is the held-out set G. Users with |G| = 0 get NaN. With
    ``popularity_M`` (f32[M], e.g. :func:`item_popularity`) also ``popularity@K``; with
    ``return_items`` also ``item@1`` .. ``item@R`` (int32[B], -1 for a slot without a candidate).
    """
    ks = normalise_ks(ks)
    n_items = scores_BxM.shape[-1]
    exclude_BxM = exclude_BxM.astype(bool)
    target_BxM = target_BxM.astype(bool)
    kmax = min(max(ks), n_items)  # a K beyond M ranks every item: same as K = M
    top_BxK, recommended_BxK = _ranked(scores_BxM, exclude_BxM, kmax)
    out = _metrics_from_top(top_BxK, exclude_BxM, target_BxM, ks, kmax)
    if popularity_M is not None:
        out.update(_popularity_from_top(top_BxK, recommended_BxK, popularity_M, ks, kmax))
    if return_items:
        out.update(_item_columns(top_BxK, recommended_BxK))
    return out


def valid_test_metrics(scores_BxM: jax.Array, train_BxM: jax.Array, valid_BxM: jax.Array,
                       test_BxM: jax.Array, ks: Sequence[int] = DEFAULT_KS,
                       popularity_M: jax.Array | None = None,
                       return_items: bool = True) -> dict[str, jax.Array]:
    """``{"valid/ndcg@K": .., "test/recall@K": .., ...}`` per user (docs/fidelity.md#metrics): train
    items are excluded from both rankings; validation items stay candidates in the test ranking, so
    both use one ranking (one top-K). ``ks`` is normalised (sorted, distinct): pass the faithful
    cut-offs together with any others, e.g. ``(*DEFAULT_KS, 50)``. The ranked items ``item@r`` (see
    :func:`rank_metrics`) are returned under both prefixes unless ``return_items=False``."""
    ks = normalise_ks(ks)
    excluded = train_BxM > 0
    kmax = min(max(ks), scores_BxM.shape[-1])
    top_BxK, recommended_BxK = _ranked(scores_BxM, excluded, kmax)
    out = {}
    for prefix, target_BxM in (("valid", valid_BxM > 0), ("test", test_BxM > 0)):
        res = _metrics_from_top(top_BxK, excluded, target_BxM, ks, kmax)
        if popularity_M is not None:
            res.update(_popularity_from_top(top_BxK, recommended_BxK, popularity_M, ks, kmax))
        if return_items:
            res.update(_item_columns(top_BxK, recommended_BxK))
        out.update({f"{prefix}/{k}": v for k, v in res.items()})
    return out


def item_popularity(train: Any) -> np.ndarray:
    """pop(i) = (train interactions of item i) / (number of users), f32[M]: the share of users whose
    train set holds i (``train`` is an [N, M] scipy sparse or dense matrix; nonzero = interaction)."""
    n_users = train.shape[0]
    if sp.issparse(train):
        counts = np.asarray((sp.csr_matrix(train) != 0).sum(axis=0)).ravel()
    else:
        counts = (np.asarray(train) != 0).sum(axis=0)
    return (counts / max(n_users, 1)).astype(np.float32)


def dense_mask_from_padded(idx_BxP: jax.Array, n_items: int) -> jax.Array:
    """bool[B, n_items] with True at each listed index; the pad value ``n_items`` is dropped."""
    return dense_rows(idx_BxP, n_items) > 0


@functools.partial(jax.jit, static_argnames=("ks",))
def rank_metrics_padded(
    scores_BxM: jax.Array,
    exclude_BxM: jax.Array,
    target_idx_BxP: jax.Array,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, jax.Array]:
    """``rank_metrics`` with targets as padded item-index lists (pad value M, indices unique per row)."""
    target_BxM = dense_mask_from_padded(target_idx_BxP, scores_BxM.shape[-1])
    return rank_metrics(scores_BxM, exclude_BxM, target_BxM, ks)
