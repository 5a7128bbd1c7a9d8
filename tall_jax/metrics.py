"""Full-ranking top-K metrics and per-mainstream-group result tables (docs/fidelity.md#metrics,
docs/fidelity.md#groups).

Metric definitions (recorded verbatim in every results JSON, see ``METRIC_DEFINITIONS``):
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

The ranking kernel (:func:`rank_metrics`, :func:`valid_test_metrics`) also returns the ranked items
themselves as one int32 array per rank, ``item@1`` .. ``item@R`` (R = min(max K, M); -1 where the user had
fewer than r candidate items), so every per-user path (the fused eval step, the baselines) carries them
without a new array shape. :class:`RankingResult` collects them into ``top_items`` and turns them into
``coverage@K`` and ``popularity@K`` once it is given the train matrix (:meth:`RankingResult.with_catalogue`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
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
GROUP_NAMES: tuple[str, ...] = ("low", "med-low", "medium", "med-high", "high")
ITEM_KEY = re.compile(r"^item@(\d+)$")
METRIC_DEFINITIONS: dict[str, str] = {
    "ranking": "full ranking over all items; scores cast to float32; the user's train items set to -inf; "
    "validation items are NOT masked when ranking for test (docs/fidelity.md#metrics)",
    "ties": "jax.lax.top_k order: among equal scores the lower item index ranks first",
    "ndcg@K": "DCG/IDCG; DCG = sum over hit positions p (1-based) of 1/log2(p+1); "
    "IDCG = sum_{p=1}^{min(|G|,K)} 1/log2(p+1)",
    "recall@K": "hits@K / |G| (LFT convention)",
    "precision@K": "hits@K / K",
    "hr@K": "1 if at least one hit in the top K, else 0",
    "mrr@K": "1 / rank of the first hit in the top K; 0 without a hit",
    "map@K": "sum over hit ranks p <= K of hits@p / p, divided by min(K, |G|)",
    "popularity@K": "mean over the user's top K of (train interactions of the item) / (number of users); "
    "defined for every user; group and overall values are means over users",
    "coverage@K": "distinct items in the top K of any evaluated user (of the group, for a group) / "
    "number of items; not a per-user metric",
    "undefined": "users with |G| = 0 get NaN for every accuracy metric; means are nanmeans over users",
    "groups": "mean of per-user values over each mainstream group (docs/fidelity.md#groups); "
    "overall = mean over all users",
    "fairness": "per metric over the group values: max_minus_min = max - min, low_over_high = "
    "low / high (null if high is 0), std = population std (ddof=0); NaN groups are left out",
}


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


def coverage(top_items_NxR: np.ndarray, n_items: int, ks: Sequence[int]) -> dict[str, float]:
    """``{"coverage@K": share of the n_items found in the first K columns of any row}``; entries < 0
    (no candidate) are ignored. NaN without rows."""
    top = np.asarray(top_items_NxR)
    out = {}
    for k in ks:
        cols = top[:, :k]
        items = np.unique(cols[cols >= 0])
        out[f"coverage@{k}"] = float(len(items) / n_items) if top.shape[0] and n_items else float("nan")
    return out


def popularity_per_user(top_items_NxR: np.ndarray, popularity_M: np.ndarray,
                        ks: Sequence[int]) -> dict[str, np.ndarray]:
    """``{"popularity@K": f64[N]}``: the mean popularity of each row's first K items (entries < 0
    skipped; NaN for a row without any), the host twin of the kernel's ``popularity@K``."""
    top = np.asarray(top_items_NxR)
    pop = np.asarray(popularity_M, np.float64)
    ok = top >= 0
    values = np.where(ok, pop[np.where(ok, top, 0)], 0.0)
    out = {}
    for k in ks:
        kk = min(k, top.shape[1])
        n = ok[:, :kk].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"popularity@{k}"] = np.where(n > 0, values[:, :kk].sum(axis=1) / np.maximum(n, 1), np.nan)
    return out


def group_fairness(groups: Mapping[str, Mapping[str, float]], low: str | None = None,
                   high: str | None = None) -> dict[str, dict[str, float]]:
    """How unequal each metric is across the groups: ``{metric: {"max_minus_min", "low_over_high",
    "std"}}`` over the group values ``groups[g][metric]``.

    max_minus_min = max - min over the groups, low_over_high = value(low) / value(high) (``low`` and
    ``high`` default to the first and the last group, i.e. "low" and "high" mainstream), std = the
    population standard deviation (ddof=0: the groups are all the groups, not a sample). Groups whose
    value is NaN are left out; a statistic with nothing to work on (or high = 0) is NaN.
    """
    names = list(groups)
    if not names:
        return {}
    low = names[0] if low is None else low
    high = names[-1] if high is None else high
    metrics = list(dict.fromkeys(m for g in names for m in groups[g]))
    out = {}
    for metric in metrics:
        vals = np.array([groups[g].get(metric, np.nan) for g in names], np.float64)
        finite = vals[~np.isnan(vals)]
        lo, hi = groups.get(low, {}).get(metric, np.nan), groups.get(high, {}).get(metric, np.nan)
        out[metric] = {
            "max_minus_min": float(finite.max() - finite.min()) if finite.size else float("nan"),
            "low_over_high": float(lo / hi) if not (np.isnan(lo) or np.isnan(hi) or hi == 0)
            else float("nan"),
            "std": float(finite.std()) if finite.size else float("nan"),
        }
    return out


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite-defined (non-NaN) entries; NaN, without a warning, if there are none."""
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def _json_float(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _from_json_float(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _fmt(x: float, spec: str) -> str:
    return "nan" if np.isnan(x) else format(x, spec)


FAIRNESS_COLUMNS: tuple[tuple[str, str, str], ...] = (  # (key, table header, format)
    ("max_minus_min", "max-min", ".4f"), ("low_over_high", "low/high", ".3f"), ("std", "std", ".4f"))


@dataclasses.dataclass(frozen=True)
class RankingSummary:
    """Means of a ``RankingResult``: what a results JSON holds (no per-user arrays)."""

    overall: dict[str, float]
    groups: dict[str, dict[str, float]]  # group name -> metric -> mean; empty without groups
    group_sizes: dict[str, int]
    n_users: int
    n_undefined: int  # users with an empty target set (NaN metrics)

    def by_group(self) -> dict[str, dict[str, float]]:
        return self.groups

    def fairness(self) -> dict[str, dict[str, float]]:
        """:func:`group_fairness` of the group means (``{}`` without groups)."""
        return group_fairness(self.groups)

    def table(self, metrics: Sequence[str] = ("ndcg@20",), reference: Mapping[str, float] | None = None,
              fairness: bool = True) -> str:
        """Aligned text table: rows = metrics, columns = overall then the groups, then (with groups and
        ``fairness``) the spread over the groups: max-min, low/high, std (:func:`group_fairness`). With
        ``reference`` (``{"overall": .., "low": .., ...}``, e.g. ``paper.paper_row``) a "paper" row and a
        "diff" row (ours − paper) follow the first metric's row; the paper row's spread is that of the
        reference's group values."""
        groups = list(self.groups)
        cols = ["overall", *groups]
        spread = fairness and len(groups) > 0
        header = cols + ([h for _, h, _ in FAIRNESS_COLUMNS] if spread else [])
        rows: list[list[str]] = [["", *header]]
        fair = self.fairness() if spread else {}

        def value(metric: str, col: str) -> float:
            return self.overall[metric] if col == "overall" else self.groups[col][metric]

        def spread_cells(stats: Mapping[str, float] | None) -> list[str]:
            if not spread:
                return []
            return [_fmt(stats[key], f) if stats else "" for key, _, f in FAIRNESS_COLUMNS]

        for i, metric in enumerate(metrics):
            if metric not in self.overall:
                raise ValueError(f"unknown metric {metric!r}; available: {sorted(self.overall)}")
            rows.append([metric, *(_fmt(value(metric, c), ".4f") for c in cols),
                         *spread_cells(fair.get(metric))])
            if i == 0 and reference is not None:
                ref = [reference.get(c, float("nan")) for c in cols]
                ref_fair = group_fairness({c: {metric: reference.get(c, float("nan"))} for c in groups})
                rows.append(["paper", *(f"{r:.4f}" for r in ref), *spread_cells(ref_fair.get(metric))])
                rows.append(["diff", *(f"{value(metric, c) - r:+.4f}" for c, r in zip(cols, ref)),
                             *spread_cells(None)])
        widths = [max(len(r[j]) for r in rows) for j in range(len(header) + 1)]
        return "\n".join("  ".join(s.rjust(w) for s, w in zip(r, widths)).rstrip() for r in rows)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN written as null) with the metric definitions and, with groups,
        the spread of every metric over them (``"fairness"``, see :func:`group_fairness`)."""
        return {
            "overall": {k: _json_float(v) for k, v in self.overall.items()},
            "groups": {g: {k: _json_float(v) for k, v in m.items()} for g, m in self.groups.items()},
            "group_sizes": dict(self.group_sizes),
            "n_users": int(self.n_users),
            "n_undefined": int(self.n_undefined),
            "fairness": fairness_json(self.fairness()),
            "definitions": dict(METRIC_DEFINITIONS),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RankingSummary:
        """Inverse of ``to_json`` (the fairness entry is recomputed, not read); raises ValueError
        naming the missing key."""
        for key in ("overall", "groups", "group_sizes", "n_users", "n_undefined"):
            if key not in d:
                raise ValueError(f"ranking summary lacks key {key!r} (has {sorted(d)})")
        return cls(
            overall={k: _from_json_float(v) for k, v in d["overall"].items()},
            groups={g: {k: _from_json_float(v) for k, v in m.items()} for g, m in d["groups"].items()},
            group_sizes={g: int(n) for g, n in d["group_sizes"].items()},
            n_users=int(d["n_users"]),
            n_undefined=int(d["n_undefined"]),
        )


def fairness_json(fairness: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """:func:`group_fairness` output with NaN as null (strict JSON)."""
    return {m: {k: _json_float(v) for k, v in stats.items()} for m, stats in fairness.items()}


@dataclasses.dataclass(frozen=True)
class RankingResult:
    """Per-user metric arrays (``{"ndcg@20": f[N], ...}``, NaN for users with no target) and the users'
    mainstream group (int 0..G-1 indexing ``group_names``, or None).

    Per-user ``item@r`` entries (what the ranking kernel returns with the items) are taken out of
    ``per_user`` into ``top_items`` (int [N, R], -1 = no item). With ``n_items`` the summary also holds
    ``coverage@K``; :meth:`with_catalogue` sets it and adds the per-user ``popularity@K``.
    """

    per_user: dict[str, np.ndarray]
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = GROUP_NAMES
    top_items: np.ndarray | None = None  # int [N, R]: the item at rank r + 1, -1 where there is none
    n_items: int | None = None  # the catalogue size, for coverage

    def __post_init__(self) -> None:
        ranked = {int(m.group(1)): v for k, v in self.per_user.items() if (m := ITEM_KEY.match(k))}
        per_user = {k: np.asarray(v, np.float64) for k, v in self.per_user.items() if not ITEM_KEY.match(k)}
        top = self.top_items
        if ranked:
            if sorted(ranked) != list(range(1, len(ranked) + 1)):
                raise ValueError(f"item@r entries must cover ranks 1..R, got {sorted(ranked)}")
            if top is None:
                top = np.stack([np.asarray(ranked[r]) for r in range(1, len(ranked) + 1)], axis=1)
        if top is not None:
            top = np.asarray(top)
            if top.ndim != 2:
                raise ValueError(f"top_items must be [n_users, R], got shape {top.shape}")
            top = np.rint(top).astype(np.int64) if not np.issubdtype(top.dtype, np.integer) else top
        sizes = {v.shape for v in per_user.values()} | ({(top.shape[0],)} if top is not None else set())
        if len(sizes) > 1 or any(len(s) != 1 for s in sizes):
            raise ValueError(f"per-user metrics must be 1-D arrays of one length, got shapes {sizes}")
        object.__setattr__(self, "per_user", per_user)
        object.__setattr__(self, "top_items", top)
        if self.groups is not None:
            groups = np.asarray(self.groups)
            n = self.n_users
            if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
                raise ValueError(f"groups must be int[{n}], got {groups.dtype}{list(groups.shape)}")
            if n and (groups.min() < 0 or groups.max() >= len(self.group_names)):
                raise ValueError(f"group ids must lie in 0..{len(self.group_names) - 1}, "
                                 f"got {groups.min()}..{groups.max()}")
            object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "group_names", tuple(self.group_names))

    @property
    def n_users(self) -> int:
        if self.per_user:
            return int(next(iter(self.per_user.values())).shape[0])
        return 0 if self.top_items is None else int(self.top_items.shape[0])

    @property
    def ks(self) -> tuple[int, ...]:
        """The cut-offs K of the per-user metrics held (from their ``name@K`` keys)."""
        return tuple(sorted({int(k.rsplit("@", 1)[1]) for k in self.per_user
                             if "@" in k and k.rsplit("@", 1)[1].isdigit()}))

    @property
    def n_undefined(self) -> int:
        """Users with NaN in any metric (empty target set)."""
        if not self.per_user:
            return 0
        return int(np.any(np.stack([np.isnan(v) for v in self.per_user.values()]), axis=0).sum())

    def with_catalogue(self, train: Any, ks: Sequence[int] | None = None) -> RankingResult:
        """This result with ``n_items`` set and the per-user ``popularity@K`` of the ranked items added
        (popularity from ``train``, [N_all, M], via :func:`item_popularity`), for ``ks`` (default: the
        held cut-offs). Without ``top_items`` it is returned unchanged."""
        if self.top_items is None:
            return self
        ks = normalise_ks(ks if ks is not None else self.ks or DEFAULT_KS)
        pop = popularity_per_user(self.top_items, item_popularity(train), ks)
        return dataclasses.replace(self, per_user={**self.per_user, **pop}, n_items=int(train.shape[1]))

    def _coverage(self, rows: np.ndarray | slice) -> dict[str, float]:
        if self.top_items is None or not self.n_items:
            return {}
        return coverage(self.top_items[rows], self.n_items, self.ks or DEFAULT_KS)

    def overall(self) -> dict[str, float]:
        """nanmean of every metric over all users, and ``coverage@K`` over all of them when known."""
        return {**{k: _nanmean(v) for k, v in self.per_user.items()}, **self._coverage(slice(None))}

    def by_group(self) -> dict[str, dict[str, float]]:
        """nanmean of every metric over each group's users (and the group's ``coverage@K``); {} when
        there are no groups."""
        if self.groups is None:
            return {}
        return {name: {**{k: _nanmean(v[self.groups == g]) for k, v in self.per_user.items()},
                       **self._coverage(self.groups == g)}
                for g, name in enumerate(self.group_names)}

    def summary(self) -> RankingSummary:
        sizes = ({} if self.groups is None else
                 {name: int((self.groups == g).sum()) for g, name in enumerate(self.group_names)})
        return RankingSummary(self.overall(), self.by_group(), sizes, self.n_users, self.n_undefined)

    def fairness(self) -> dict[str, dict[str, float]]:
        return self.summary().fairness()

    def table(self, metrics: Sequence[str] = ("ndcg@20",), reference: Mapping[str, float] | None = None,
              fairness: bool = True) -> str:
        return self.summary().table(metrics, reference, fairness)

    def to_json(self) -> dict[str, Any]:
        return self.summary().to_json()

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> RankingSummary:
        """A results JSON holds means only, so this returns the ``RankingSummary``."""
        return RankingSummary.from_json(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    def save_per_user(self, path: str | Path) -> None:
        """.npz with one array per metric, plus ``groups``, ``top_items`` and ``n_items`` when present."""
        arrays = dict(self.per_user)
        if self.groups is not None:
            arrays["groups"] = self.groups
        if self.top_items is not None:
            arrays["top_items"] = self.top_items.astype(np.int32)
        if self.n_items is not None:
            arrays["n_items"] = np.asarray(self.n_items)
        np.savez(path, **arrays)

    @classmethod
    def load_per_user(cls, path: str | Path, group_names: tuple[str, ...] = GROUP_NAMES) -> RankingResult:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        n_items = arrays.pop("n_items", None)
        return cls(arrays, arrays.pop("groups", None), group_names, arrays.pop("top_items", None),
                   None if n_items is None else int(n_items))
