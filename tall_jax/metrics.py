"""Full-ranking top-K metrics (spec §3) and per-mainstream-group result tables (spec §2).

Metric definitions (recorded verbatim in every results JSON, see ``METRIC_DEFINITIONS``):
- full ranking over all M items; the user's train items are set to -inf before ranking; validation items
  are NOT masked when ranking for test (spec §3, §8.16);
- NDCG@K = DCG/IDCG with DCG = sum over hit positions p (1-based) of 1/log2(p+1) and
  IDCG = sum_{p=1}^{min(|G|,K)} 1/log2(p+1);
- Recall@K = hits@K / |G| (the LFT repo's convention, not vae_cf's hits/min(K,|G|));
- users with an empty target set G get NaN for every metric (means use nanmean; the count is reported).

Ties: ``jax.lax.top_k`` places the lower item index first among equal scores, so our ranking is
deterministic; the authors' argpartition+argsort breaks ties arbitrarily. With real-valued logits ties
are rare and only matter at the K-th boundary.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from tall_jax.batching import dense_rows

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)
GROUP_NAMES: tuple[str, ...] = ("low", "med-low", "medium", "med-high", "high")
METRIC_DEFINITIONS: dict[str, str] = {
    "ranking": "full ranking over all items; scores cast to float32; the user's train items set to -inf; "
    "validation items are NOT masked when ranking for test (spec §3)",
    "ties": "jax.lax.top_k order: among equal scores the lower item index ranks first",
    "ndcg@K": "DCG/IDCG; DCG = sum over hit positions p (1-based) of 1/log2(p+1); "
    "IDCG = sum_{p=1}^{min(|G|,K)} 1/log2(p+1)",
    "recall@K": "hits@K / |G| (LFT convention)",
    "undefined": "users with |G| = 0 get NaN for every metric; means are nanmeans over users",
    "groups": "mean of per-user values over each mainstream group (spec §2); overall = mean over all users",
}


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> tuple[str, ...]:
    """The keys ``rank_metrics`` returns, in order: ndcg@k and recall@k for each k."""
    return tuple(f"{name}@{k}" for k in ks for name in ("ndcg", "recall"))


@functools.partial(jax.jit, static_argnames=("ks",))
def rank_metrics(
    scores_BxM: jax.Array,
    exclude_BxM: jax.Array,
    target_BxM: jax.Array,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, jax.Array]:
    """Per-user NDCG@K and Recall@K for each K in ``ks`` (spec §3); returns ``{"ndcg@K": f32[B], ...}``.

    ``exclude_BxM`` (bool or 0/1, the train items) is set to -inf and can never count as a hit;
    ``target_BxM`` (bool or 0/1) is the held-out set G. Users with |G| = 0 get NaN.
    """
    n_items = scores_BxM.shape[-1]
    exclude_BxM = exclude_BxM.astype(bool)
    target_BxM = target_BxM.astype(bool)
    kmax = min(max(ks), n_items)  # a K beyond M ranks every item: same as K = M
    scores_BxM = jnp.where(exclude_BxM, -jnp.inf, scores_BxM.astype(jnp.float32))
    _, top_BxK = jax.lax.top_k(scores_BxM, kmax)
    hit_BxK = jnp.take_along_axis(target_BxM & ~exclude_BxM, top_BxK, axis=-1).astype(jnp.float32)
    discount_K = 1.0 / jnp.log2(jnp.arange(2, kmax + 2, dtype=jnp.float32))
    dcg_BxK = jnp.cumsum(hit_BxK * discount_K[None, :], axis=-1)
    nhit_BxK = jnp.cumsum(hit_BxK, axis=-1)
    idcg_table = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(discount_K)])  # [kmax+1]
    n_target_B = target_BxM.sum(-1)
    defined_B = n_target_B > 0
    safe_n_B = jnp.where(defined_B, n_target_B, 1).astype(jnp.float32)
    out = {}
    for k in ks:
        kk = min(k, kmax)
        idcg_B = idcg_table[jnp.clip(jnp.minimum(n_target_B, kk), 1, kmax)]
        out[f"ndcg@{k}"] = jnp.where(defined_B, dcg_BxK[:, kk - 1] / idcg_B, jnp.nan)
        out[f"recall@{k}"] = jnp.where(defined_B, nhit_BxK[:, kk - 1] / safe_n_B, jnp.nan)
    return out


def valid_test_metrics(scores_BxM: jax.Array, train_BxM: jax.Array, valid_BxM: jax.Array,
                       test_BxM: jax.Array, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, jax.Array]:
    """``{"valid/ndcg@K": .., "test/recall@K": .., ...}`` per user (spec §3): train items are excluded
    from both rankings; validation items stay candidates in the test ranking."""
    excluded = train_BxM > 0
    valid = rank_metrics(scores_BxM, excluded, valid_BxM > 0, ks)
    test = rank_metrics(scores_BxM, excluded, test_BxM > 0, ks)
    return {**{f"valid/{k}": v for k, v in valid.items()}, **{f"test/{k}": v for k, v in test.items()}}


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


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite-defined (non-NaN) entries; NaN, without a warning, if there are none."""
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def _json_float(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _from_json_float(x: float | None) -> float:
    return float("nan") if x is None else float(x)


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

    def table(self, metrics: Sequence[str] = ("ndcg@20",), reference: Mapping[str, float] | None = None) -> str:
        """Aligned text table: rows = metrics, columns = overall then the groups. With ``reference``
        (``{"overall": .., "low": .., ...}``, e.g. ``paper.paper_row``) a "paper" row and a "diff" row
        (ours − paper) follow the first metric's row."""
        cols = ["overall", *self.groups]
        rows: list[list[str]] = [["", *cols]]

        def value(metric: str, col: str) -> float:
            return self.overall[metric] if col == "overall" else self.groups[col][metric]

        for i, metric in enumerate(metrics):
            if metric not in self.overall:
                raise ValueError(f"unknown metric {metric!r}; available: {sorted(self.overall)}")
            rows.append([metric, *(f"{value(metric, c):.4f}" for c in cols)])
            if i == 0 and reference is not None:
                ref = [reference.get(c, float("nan")) for c in cols]
                rows.append(["paper", *(f"{r:.4f}" for r in ref)])
                rows.append(["diff", *(f"{value(metric, c) - r:+.4f}" for c, r in zip(cols, ref))])
        widths = [max(len(r[j]) for r in rows) for j in range(len(cols) + 1)]
        return "\n".join("  ".join(s.rjust(w) for s, w in zip(r, widths)) for r in rows)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN written as null) with the metric definitions."""
        return {
            "overall": {k: _json_float(v) for k, v in self.overall.items()},
            "groups": {g: {k: _json_float(v) for k, v in m.items()} for g, m in self.groups.items()},
            "group_sizes": dict(self.group_sizes),
            "n_users": int(self.n_users),
            "n_undefined": int(self.n_undefined),
            "definitions": dict(METRIC_DEFINITIONS),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RankingSummary:
        """Inverse of ``to_json``; raises ValueError naming the missing key."""
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


@dataclasses.dataclass(frozen=True)
class RankingResult:
    """Per-user metric arrays (``{"ndcg@20": f[N], ...}``, NaN for users with no target) and the users'
    mainstream group (int 0..G-1 indexing ``group_names``, or None)."""

    per_user: dict[str, np.ndarray]
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = GROUP_NAMES

    def __post_init__(self) -> None:
        per_user = {k: np.asarray(v, np.float64) for k, v in self.per_user.items()}
        sizes = {v.shape for v in per_user.values()}
        if len(sizes) > 1 or any(len(s) != 1 for s in sizes):
            raise ValueError(f"per-user metrics must be 1-D arrays of one length, got shapes {sizes}")
        object.__setattr__(self, "per_user", per_user)
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
        return int(next(iter(self.per_user.values())).shape[0]) if self.per_user else 0

    @property
    def n_undefined(self) -> int:
        """Users with NaN in any metric (empty target set)."""
        if not self.per_user:
            return 0
        return int(np.any(np.stack([np.isnan(v) for v in self.per_user.values()]), axis=0).sum())

    def overall(self) -> dict[str, float]:
        """nanmean of every metric over all users."""
        return {k: _nanmean(v) for k, v in self.per_user.items()}

    def by_group(self) -> dict[str, dict[str, float]]:
        """nanmean of every metric over each group's users; {} when there are no groups."""
        if self.groups is None:
            return {}
        return {name: {k: _nanmean(v[self.groups == g]) for k, v in self.per_user.items()}
                for g, name in enumerate(self.group_names)}

    def summary(self) -> RankingSummary:
        sizes = ({} if self.groups is None else
                 {name: int((self.groups == g).sum()) for g, name in enumerate(self.group_names)})
        return RankingSummary(self.overall(), self.by_group(), sizes, self.n_users, self.n_undefined)

    def table(self, metrics: Sequence[str] = ("ndcg@20",), reference: Mapping[str, float] | None = None) -> str:
        return self.summary().table(metrics, reference)

    def to_json(self) -> dict[str, Any]:
        return self.summary().to_json()

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> RankingSummary:
        """A results JSON holds means only, so this returns the ``RankingSummary``."""
        return RankingSummary.from_json(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    def save_per_user(self, path: str | Path) -> None:
        """.npz with one array per metric, plus ``groups`` when present."""
        arrays = dict(self.per_user)
        if self.groups is not None:
            arrays["groups"] = self.groups
        np.savez(path, **arrays)

    @classmethod
    def load_per_user(cls, path: str | Path, group_names: tuple[str, ...] = GROUP_NAMES) -> RankingResult:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(arrays, arrays.pop("groups", None), group_names)


def _dense_rows(mat: Any, rows: np.ndarray) -> np.ndarray:
    if sp.issparse(mat):
        return mat[rows].toarray() != 0
    return np.asarray(mat)[rows] != 0


def evaluate_scores(
    score_fn: Callable[[jax.Array], jax.Array],
    n_users: int,
    exclude: Any,
    targets: Any,
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 1024,
    groups: np.ndarray | None = None,
) -> RankingResult:
    """Rank every user in fixed-size batches (one compilation) and collect per-user metrics.

    ``score_fn(users_B) -> scores_BxM``; ``exclude``/``targets`` are [n_users, M] scipy sparse or dense
    0/1 matrices (train items / held-out items). The last batch is padded with user 0 and cut off.
    """
    out: dict[str, list[np.ndarray]] = {k: [] for k in metric_names(ks)}
    for start in range(0, n_users, batch_size):
        n = min(batch_size, n_users - start)
        users_B = np.zeros(batch_size, np.int32)
        users_B[:n] = np.arange(start, start + n)
        res = rank_metrics(score_fn(jnp.asarray(users_B)), jnp.asarray(_dense_rows(exclude, users_B)),
                           jnp.asarray(_dense_rows(targets, users_B)), ks)
        for k, v in res.items():
            out[k].append(np.asarray(v)[:n])
    return RankingResult({k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}, groups)
