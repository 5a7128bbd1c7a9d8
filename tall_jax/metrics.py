"""Per-user ranking results and per-mainstream-group tables (docs/fidelity.md#metrics,
docs/fidelity.md#groups): :class:`RankingResult`, its :class:`RankingSummary`, the spread over the
groups, coverage and popularity of the ranked items. The ranking kernel itself (per-user metrics of
the top K, the metric names, the K lists, item popularity) is :mod:`tall_jax.ranking`.

``METRIC_DEFINITIONS`` are written verbatim into every results JSON. About 360 lines: the per-user
result and the summary a results JSON holds are one object seen twice, kept side by side.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tall_jax.protocol import GROUP_NAMES
from tall_jax.ranking import DEFAULT_KS, item_popularity, normalise_ks

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
