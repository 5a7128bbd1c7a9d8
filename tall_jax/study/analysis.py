"""What a study's runs say: per-group test NDCG@20 over seeds, paired tests against a reference
variant, the smoothed model selection, and the gate / weight diagnostics.

Selection. The runs report the test result of the epoch with the best validation score (the
authors' rule); a single validation spike can pick an epoch whose test result is luck. The smoothed
selection takes instead the epoch whose centred 3-epoch moving average of the validation score is
best, and reads that epoch's test NDCG@20 per group from the run's history (evaluated every epoch,
never used to select).

Significance. Against the reference (faithful TALL), over the seeds both variants have:
- over users: each user's NDCG@20 difference, averaged over the common seeds, tested with the
  Wilcoxon signed-rank test (two-sided) within each group;
- over seeds: the per-seed group means, paired by seed, tested with a paired t-test.
Neither is corrected for the number of variants compared; the page says so. The aim's spread
comparison comes with the F-test of equal variances over seeds (:func:`variance_ratio_p`).
"""
from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from tall_jax.protocol import GROUP_NAMES

METRIC = "ndcg@20"
COLUMNS = ("overall",) + GROUP_NAMES
SMOOTH_WIDTH = 3


@dataclasses.dataclass
class RunSummary:
    variant: str
    seed: int
    best: dict[str, float]  # column -> test NDCG@20 at the best-validation epoch
    smoothed: dict[str, float]  # column -> test NDCG@20 at the smoothed-selection epoch
    best_epoch: int
    smoothed_epoch: int
    epochs_run: int
    epoch_seconds: float  # median of its epochs' seconds (training + evaluation), across resumes and forks
    valid_score: float  # best mean validation NDCG@{1,5,10,20}
    gate_entropy: float | None  # mean over users at the best epoch (nats)
    weights: dict[str, float]  # weight statistics at the best epoch (empty without weights)
    per_user_N: np.ndarray  # test NDCG@20 per user, best epoch
    groups_N: np.ndarray
    commit: str | None = None  # of the code that finished the run (None: it predates the record)
    gap: int = 0  # T: the last epoch with w = 1
    # per epoch: "epoch", "test" (overall test NDCG@20), "loss" (weighted training loss), "w_std"
    # (std of the weights; NaN without them); empty when not read from a run folder
    curve: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def smoothed_epoch(history: list[dict[str, Any]], width: int = SMOOTH_WIDTH) -> int:
    """The epoch at the centre of the best ``width``-epoch moving average of the validation score
    (full windows only; the best single epoch when the run is shorter than a window)."""
    scores = np.array([h["valid_score"] for h in history], float)
    if len(scores) < width:
        return int(history[int(np.argmax(scores))]["epoch"])
    averages = np.convolve(scores, np.ones(width) / width, mode="valid")
    return int(history[int(np.argmax(averages)) + width // 2]["epoch"])


def load_run(out_dir: str | Path, variant: str, seed: int) -> RunSummary | None:
    """The summary of a finished run folder (None if it has not finished)."""
    out = Path(out_dir)
    if not (out / "results.json").exists():
        return None
    res = json.loads((out / "results.json").read_text())
    history = res["history"]
    by_epoch = {h["epoch"]: h for h in history}
    best_h = by_epoch[res["best_epoch"]]
    s_epoch = smoothed_epoch(history)
    s_h = by_epoch[s_epoch]
    best = {"overall": res["test"]["overall"][METRIC]}
    best.update({g: res["test"]["groups"][g][METRIC] for g in GROUP_NAMES if g in res["test"]["groups"]})
    smoothed = {"overall": s_h["test_ndcg@20"], **s_h["test_ndcg@20_by_group"]}
    per_user = np.load(out / "per_user_test.npz")
    return RunSummary(
        variant=variant, seed=seed, best=best, smoothed=smoothed, best_epoch=res["best_epoch"],
        smoothed_epoch=s_epoch, epochs_run=res["epochs_run"],
        epoch_seconds=float(np.median([h["seconds"] for h in history])),
        valid_score=best_h["valid_score"],
        gate_entropy=best_h["gate"]["entropy_mean"] if "gate" in best_h else None,
        weights=dict(best_h.get("weights", {})),
        per_user_N=np.asarray(per_user[METRIC], float), groups_N=np.asarray(per_user["groups"]),
        commit=res.get("environment", {}).get("commit"), gap=int(res.get("settings", {}).get("gap", 0)),
        curve=history_curve(history))


def history_curve(history: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A run's per-epoch curves (:attr:`RunSummary.curve`) from its results' history."""
    return {"epoch": np.array([h["epoch"] for h in history], int),
            "test": np.array([h["test_ndcg@20"] for h in history], float),
            "loss": np.array([h["loss"] for h in history], float),
            "w_std": np.array([(h.get("weights") or {}).get("w_std", np.nan) for h in history], float)}


def commits(runs: dict[str, list[RunSummary]]) -> dict[str | None, int]:
    """How many runs each commit finished (None: runs that predate the record), most first."""
    return dict(collections.Counter(r.commit for rs in runs.values() for r in rs).most_common())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def mean_std_text(values: list[float], digits: int = 4) -> str:
    """"m ± s" of :func:`mean_std` (just "m" for one value, "–" for none)."""
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


@dataclasses.dataclass
class PairedTest:
    column: str
    n_seeds: int
    n_users: int
    mean_diff: float  # mean over users of the seed-averaged per-user difference
    p_users: float  # Wilcoxon signed-rank over users
    p_seeds: float  # paired t over seeds (nan with < 2 seeds)


def paired_tests(runs: list[RunSummary], reference: list[RunSummary]) -> list[PairedTest]:
    """Per column (overall and each group), ``runs`` minus ``reference`` on their common seeds."""
    ref = {r.seed: r for r in reference}
    common = sorted(r.seed for r in runs if r.seed in ref)
    if not common:
        return []
    mine = {r.seed: r for r in runs}
    diff_N = np.mean([mine[s].per_user_N - ref[s].per_user_N for s in common], axis=0)
    groups_N = ref[common[0]].groups_N
    tests = []
    for col in COLUMNS:
        users = np.ones_like(groups_N, bool) if col == "overall" else groups_N == GROUP_NAMES.index(col)
        d = diff_N[users & np.isfinite(diff_N)]
        p_users = float("nan")
        if len(d) and np.any(d != 0):
            p_users = float(scipy.stats.wilcoxon(d, zero_method="wilcox").pvalue)
        a = [mine[s].best[col] for s in common]
        b = [ref[s].best[col] for s in common]
        p_seeds = float(scipy.stats.ttest_rel(a, b).pvalue) if len(common) > 1 else float("nan")
        tests.append(PairedTest(col, len(common), int(len(d)), float(np.mean(d)) if len(d) else
                                float("nan"), p_users, p_seeds))
    return tests


@dataclasses.dataclass
class Aim:
    """A variant against the improved preset's aim: above the ``reference`` (faithful TALL) in every
    column, ahead of the ``rival`` (LMoE) on the low group, a seed spread of the overall score no
    larger than the rival's. Means and spreads over the seeds all three have."""
    n_seeds: int
    below_reference: tuple[str, ...]  # the columns where its mean is not above the reference's
    low_vs_rival: float  # its mean low-group score minus the rival's
    spread: float  # std over seeds of its overall score
    rival_spread: float
    spread_p: float = float("nan")  # :func:`variance_ratio_p` of the two spreads

    @property
    def met(self) -> bool:
        return (not self.below_reference and self.low_vs_rival > 0 and self.n_seeds > 1
                and self.spread <= self.rival_spread)


def aim(runs: list[RunSummary], reference: list[RunSummary], rival: list[RunSummary]) -> Aim | None:
    """How ``runs`` stand against the aim (None without a seed common to all three)."""
    by_seed = [{r.seed: r for r in rs} for rs in (runs, reference, rival)]
    common = sorted(set.intersection(*(set(b) for b in by_seed)))
    if not common:
        return None
    mine, ref, riv = ({c: [b[s].best[c] for s in common] for c in COLUMNS} for b in by_seed)
    below = tuple(c for c in COLUMNS if np.mean(mine[c]) <= np.mean(ref[c]))
    return Aim(len(common), below, float(np.mean(mine["low"]) - np.mean(riv["low"])),
               mean_std(mine["overall"])[1], mean_std(riv["overall"])[1],
               variance_ratio_p(mine["overall"], riv["overall"]))


def variance_ratio_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the F-test that ``a`` and ``b`` come from equal variances:
    F = s_a^2 / s_b^2 on (n_a - 1, n_b - 1) degrees of freedom, p = min(1, 2 min(P(X <= F), P(X >= F))).
    NaN below two values or with a zero variance. With 3-5 seeds it tells how little a spread
    ordering can mean; it assumes independent seeds, which runs started from one trunk are not quite."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    var_a, var_b = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    if var_a == 0.0 or var_b == 0.0:
        return float("nan")
    dist = scipy.stats.f(len(a) - 1, len(b) - 1)
    ratio = var_a / var_b
    return float(min(1.0, 2.0 * min(dist.cdf(ratio), dist.sf(ratio))))


def seconds_left(todo: list[tuple[str, int]], runs: dict[str, list[RunSummary]], jobs: int) -> float | None:
    """Wall seconds until the unfinished runs ``todo`` ((variant, epochs done) each) are trained, at
    the pace of the finished runs: per run, (its variant's median epochs run - epochs done, at least
    one) x its variant's median seconds per epoch, both from all finished runs for a variant with
    none, summed and shared by ``jobs`` runs at a time. None before any run has finished."""
    finished = [r for rs in runs.values() for r in rs]
    if not finished:
        return None

    def medians(rs: list[RunSummary]) -> tuple[float, float]:
        return float(np.median([r.epochs_run for r in rs])), float(np.median([r.epoch_seconds for r in rs]))

    pace_all = medians(finished)
    total = 0.0
    for variant, done in todo:
        epochs, seconds = medians(runs[variant]) if runs.get(variant) else pace_all
        total += max(epochs - done, 1.0) * seconds
    return total / max(jobs, 1)


def collect(folders: dict[str, dict[int, Path]]) -> dict[str, list[RunSummary]]:
    """variant -> its finished runs, from ``folders[variant][seed]``."""
    out: dict[str, list[RunSummary]] = {}
    for variant, seeds in folders.items():
        done = [load_run(path, variant, seed) for seed, path in sorted(seeds.items())]
        out[variant] = [r for r in done if r is not None]
    return out
