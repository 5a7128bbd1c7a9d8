"""Niche users: which model serves each mainstream group best, at what cost, and how far each is from
the paper's TALL: ``python -m tall_jax.niche RUNS [MORE ...] [--out DIR] [--name STEM]``.

Reads runs as the Table 2 report does (:func:`tall_jax.run_records.collect_runs`: every ``results.json``
below the folders, run folders and records alike) and groups them into the same rows
(:func:`tall_jax.table2.build_rows`: labels, mean ± std over seeds, seconds per run). Per dataset it
writes ``STEM.md``, ``STEM.csv`` and ``STEM.png``:

- every model's test metric (default NDCG@20) overall and per group, mean ± std over seeds, seconds
  per run, beside the paper's TALL (a reference row, :mod:`tall_jax.paper`);
- each model's gap to the paper's TALL per column (model − paper; the aim: above it everywhere);
- paired per-user tests against faithful TALL (the run name ``tall``: the paper's configuration,
  E = 100) and against each column's best model: each model's per-user metric
  (``per_user_test.npz``) is first averaged over its own seeds (so a deterministic one-seed model
  pairs with a several-seed mixture), then the two-sided Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``: users with a zero difference are dropped)
  over the users both evaluated, within the column's users; no correction for the number of tests;
- per column, the model that serves it best (over runs of all users; a subset run such as LFT
  ``--users`` is tested on its own users but never called best) and its seconds per run, and the
  cheapest model not significantly below it (p ≥ 0.05);
- a plot of the metric by group for every model (:func:`tall_jax.table2.plot`, the best starred).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from tall_jax import pages, paper
from tall_jax.report import produced_by
from tall_jax.run_records import RunRecord, collect_runs
from tall_jax.table2 import (COLUMNS, SECONDS_NOTE, Row, build_rows, grouped_runs, plot, reference_label,
                             seconds_cell, value_cell)

PROG = "python -m tall_jax.niche"
FAITHFUL = "tall"  # the run name of faithful TALL (the paper's configuration, E = 100)
ALPHA = 0.05  # "not significantly below the best": a two-sided p at or above this


@dataclasses.dataclass(frozen=True)
class PerUser:
    """A row's per-user metric by user id, averaged over its seeds (NaN: not evaluated or undefined),
    and each user's group index (-1: unknown)."""

    values: np.ndarray
    groups: np.ndarray


@dataclasses.dataclass(frozen=True)
class Paired:
    """One column's paired test over users: a row's per-user metric minus another's."""

    n_users: int  # users both evaluated, with a defined metric on both sides
    diff: float  # mean over those users of the difference (NaN without users)
    p: float  # two-sided Wilcoxon signed-rank (NaN without users or when every difference is 0)


def per_user(runs: Sequence[RunRecord], metric: str) -> PerUser:
    """The mean over ``runs`` (a row's seeds) of each user's ``metric``: over the seeds that evaluated
    the user with a defined value. Raises ValueError when a per-user file is missing or when two
    seeds put a user in different groups."""
    loaded = [(r, *r.per_user(metric)) for r in runs]
    n = max((int(users.max()) + 1 for _, users, _, _ in loaded if len(users)), default=0)
    sums, counts, groups = np.zeros(n), np.zeros(n), np.full(n, -1, np.int64)
    for run, users, values, g in loaded:
        known = groups[users]
        if np.any((known >= 0) & (known != g)):
            raise ValueError(f"{run.path}: its users' groups differ from another seed's")
        groups[users] = g
        ok = np.isfinite(values)
        sums[users[ok]] += values[ok]
        counts[users[ok]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return PerUser(np.where(counts > 0, sums / counts, np.nan), groups)


def paired(a: PerUser, b: PerUser, column: str) -> Paired:
    """``a`` minus ``b`` over the users of ``column`` ("overall": all) that both have."""
    n = min(len(a.values), len(b.values))
    va, vb, ga, gb = a.values[:n], b.values[:n], a.groups[:n], b.groups[:n]
    if np.any((ga >= 0) & (gb >= 0) & (ga != gb)):
        raise ValueError("two rows put a user in different groups: not the same split")
    groups = np.where(ga >= 0, ga, gb)
    mask = np.isfinite(va) & np.isfinite(vb)
    if column != "overall":
        mask &= groups == COLUMNS.index(column) - 1
    d = va[mask] - vb[mask]
    if not d.size:
        return Paired(0, math.nan, math.nan)
    p = float(scipy.stats.wilcoxon(d, zero_method="wilcox").pvalue) if np.any(d != 0) else math.nan
    return Paired(int(d.size), float(d.mean()), p)


@dataclasses.dataclass
class Entry:
    """A model's row on the page and its tests."""

    row: Row  # the Table 2 "ours" row: label, seeds, mean ± std, seconds
    runs: list[RunRecord]
    users: PerUser | None  # None: a run lacks its per-user file (then no test)
    vs_faithful: dict[str, Paired] = dataclasses.field(default_factory=dict)  # column -> test
    vs_best: dict[str, Paired] = dataclasses.field(default_factory=dict)  # column -> test (not the best)

    @property
    def seconds(self) -> float | None:
        summary = self.row.seconds_mean_std()
        return None if summary is None else summary[0]


@dataclasses.dataclass
class Section:
    """One dataset's page section."""

    dataset: str
    split: str
    entries: list[Entry]
    paper_tall: tuple[float, ...] | None  # the paper's TALL per column (NDCG@20 only)
    faithful: Entry | None
    best: dict[str, Entry]  # column -> best row over all users
    cheapest: dict[str, Entry | None]  # column -> the cheapest row not significantly below the best
    rows: list[Row]  # Table 2 rows (ours and the paper's) for the plot


def build(runs: Sequence[RunRecord], metric: str = "ndcg@20", faithful: str = FAITHFUL,
          alpha: float = ALPHA) -> list[Section]:
    """The page's sections, one per dataset (:func:`tall_jax.table2.grouped_runs` order)."""
    rows = build_rows(runs, metric, "paper")
    groups = {(ds, name): group for ds, name, group in grouped_runs(runs)}
    sections = []
    for ds in dict.fromkeys(r.dataset for r in rows):
        entries = []
        for row in (r for r in rows if r.dataset == ds and r.kind == "ours"):
            group = groups[ds, row.model]
            try:
                users = per_user(group, metric)
            except ValueError as e:
                print(f"warning: {row.model}: no paired tests: {e}", file=sys.stderr)
                users = None
            entries.append(Entry(row, group, users))
        ref = paper.paper_row(ds, "tall") if metric == paper.PAPER_METRIC else None
        tall = next((e for e in entries if e.row.model == faithful), None)
        whole = [e for e in entries if not e.row.subset]
        best = {c: max(whole, key=lambda e, j=j: e.row.mean[j]) for j, c in enumerate(COLUMNS)} if whole else {}
        for e in entries:
            if e.users is None:
                continue
            for c in COLUMNS:
                if tall is not None and tall is not e and tall.users is not None:
                    e.vs_faithful[c] = paired(e.users, tall.users, c)
                if c in best and best[c] is not e and best[c].users is not None:
                    e.vs_best[c] = paired(e.users, best[c].users, c)
        cheapest: dict[str, Entry | None] = {}
        for c, b in best.items():
            cheaper = [e for e in whole if e is not b and e.seconds is not None and b.seconds is not None
                       and e.seconds < b.seconds and c in e.vs_best
                       and not e.vs_best[c].p < alpha]  # NaN (no difference at all) counts as within noise
            cheapest[c] = min(cheaper, key=lambda e: e.seconds, default=None)
        splits = ", ".join(sorted({r.split for r in runs if r.dataset == ds}))
        plotted = [r for r in rows if r.dataset == ds and r.kind in ("ours", "paper")]
        sections.append(Section(ds, splits, entries, None if ref is None else tuple(ref[c] for c in COLUMNS),
                                tall, best, cheapest, plotted))
    return sections


def _seconds(e: Entry) -> str:
    return "seconds unknown" if e.seconds is None else f"{e.seconds:,.0f} s per run"


def _test_cell(t: Paired | None) -> str:
    return "–" if t is None or not t.n_users else f"{t.diff:+.4f} (p {pages.p_value(t.p)})"


def best_lines(section: Section, alpha: float = ALPHA) -> list[str]:
    """Per column, the model that serves it best, at what cost, against the paper's TALL and faithful
    TALL, and the cheapest model not significantly below it."""
    out = []
    tall_label = reference_label("tall")
    for j, c in enumerate(COLUMNS):
        b = section.best.get(c)
        if b is None:
            continue
        line = f"- **{c}**: {b.row.title} serves it best, {value_cell(b.row, j)}, {_seconds(b)}"
        if section.paper_tall is not None:
            line += f"; paper's {tall_label} {section.paper_tall[j]:.4f} ({b.row.mean[j] - section.paper_tall[j]:+.4f})"
        t = b.vs_faithful.get(c)
        if t is not None and t.n_users:
            line += f"; against faithful {section.faithful.row.title} {t.diff:+.4f} per user (p {pages.p_value(t.p)})"
        cheap = section.cheapest.get(c)
        if cheap is not None:
            line += (f". Cheapest within noise of it (p ≥ {alpha}): {cheap.row.title}, {value_cell(cheap.row, j)}, "
                     f"{_seconds(cheap)} (p {pages.p_value(cheap.vs_best[c].p)}).")
        elif b.seconds is not None:
            line += ". No cheaper model is within noise of it."
        else:
            line += "."
        out.append(line)
    return out


def to_markdown(sections: Sequence[Section], metric: str, produced: str = "", plot_name: str | None = None,
                alpha: float = ALPHA) -> str:
    """The page: per dataset the best-per-group lines, the table, the gaps to the paper's TALL and the
    two paired-test tables."""
    out = [f"# Niche users: test {metric} of every model per mainstream group", ""]
    out += [produced, ""] if produced else []
    out += [f"Every model's test {metric} overall and per mainstream group (mean ± std over seeds, ddof=1), "
            f"its gap to the paper's {reference_label('tall')} (the aim: above it in every column), and paired "
            f"per-user tests: each model's per-user {metric} is first averaged over its own seeds (a "
            "deterministic model has one), then the two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, "
            "zero_method='wilcox': users with a zero difference dropped) runs over the users both models "
            "evaluated, within each column's users; cells give the mean per-user difference and p, not "
            "corrected for the number of tests. The best of a column is over the runs of all users (a "
            "subset run, such as LFT on 200 users, is tested on its own users but never called best).", "",
            SECONDS_NOTE, ""]
    for s in sections:
        out += [f"## {s.dataset} (split: {s.split})", ""]
        if plot_name:
            out += [f"![test {metric} by group, every model]({plot_name})", ""]
        out += ["### Who serves each group best", "", *best_lines(s, alpha), ""]
        values = [] if s.paper_tall is None else [
            [reference_label("tall", "paper"), "", *(f"{v:.4f}" for v in s.paper_tall), ""]]
        values += [[e.row.title, str(e.row.n_seeds), *(value_cell(e.row, j) for j in range(len(COLUMNS))),
                    seconds_cell(e.row)] for e in s.entries]
        out += [f"### Test {metric}, mean ± std over seeds", "",
                *pages.table(["model", "seeds", *COLUMNS, "seconds per run"], values,
                             "l" * (2 + len(COLUMNS)) + "r"), ""]
        if s.paper_tall is not None:
            gaps = []
            for e in s.entries:
                gap = [m - p for m, p in zip(e.row.mean, s.paper_tall)]
                gaps.append([e.row.title, *(f"{g:+.4f}" for g in gap), f"{sum(g > 0 for g in gap)} / {len(gap)}"])
            out += [f"### Gap to the paper's {reference_label('tall')}: model − paper", "",
                    *pages.table(["model", *COLUMNS, "above in"], gaps), ""]
        if s.faithful is not None and s.faithful.users is not None:
            tested = []
            for e in s.entries:
                if e is s.faithful:
                    continue
                n = e.vs_faithful["overall"].n_users if "overall" in e.vs_faithful else 0
                tested.append([e.row.title, str(n or "–"), *(_test_cell(e.vs_faithful.get(c)) for c in COLUMNS)])
            out += [f"### Paired against faithful {s.faithful.row.title}: mean per-user difference (p)", "",
                    *pages.table(["model", "users", *COLUMNS], tested, "lr"), ""]
        elif s.faithful is None:
            out += [f"No faithful TALL (run name `{FAITHFUL}`) among the runs: no tests against it.", ""]
        if s.best:
            against = [["*best*", *(s.best[c].row.title for c in COLUMNS)]]
            against += [[e.row.title, *("best" if s.best[c] is e else _test_cell(e.vs_best.get(c))
                                        for c in COLUMNS)] for e in s.entries]
            out += ["### Paired against each column's best model: mean per-user difference (p)", "",
                    *pages.table(["model", *COLUMNS], against), ""]
    return "\n".join(out)


def write_csv(sections: Sequence[Section], path: Path, metric: str) -> None:
    """One line per (model, column): its mean and std over seeds, gap to the paper's TALL, the paired
    tests against faithful TALL and against the column's best (mean difference, p, users), seconds."""
    header = ["dataset", "kind", "model", "label", "column", "metric", "n_seeds", "mean", "std",
              "gap_paper_tall", "faithful_diff", "faithful_p", "faithful_users", "best_model", "best_diff",
              "best_p", "best_users", "seconds", "seconds_std"]
    lines: list[list[Any]] = [header]

    def num(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    def test(t: Paired | None) -> list[Any]:
        return ["", "", ""] if t is None else [num(t.diff), num(t.p), t.n_users]

    for s in sections:
        for j, c in enumerate(COLUMNS):
            if s.paper_tall is not None:
                lines.append([s.dataset, "paper", "tall", reference_label("tall", "paper"), c, metric, "",
                              num(s.paper_tall[j]), *[""] * 11])
            for e in s.entries:
                secs = e.row.seconds_mean_std() or (None, None)
                lines.append([s.dataset, "ours", e.row.model, e.row.title, c, metric, e.row.n_seeds,
                              num(e.row.mean[j]), num(None if e.row.std is None else e.row.std[j]),
                              num(None if s.paper_tall is None else e.row.mean[j] - s.paper_tall[j]),
                              *test(e.vs_faithful.get(c)), s.best[c].row.model if c in s.best else "",
                              *test(e.vs_best.get(c)), num(secs[0]), num(secs[1])])
    pages.write_csv(path, lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="folder(s) searched recursively for results.json "
                                                        "(run folders or records, as for tall_jax.report)")
    ap.add_argument("--metric", default="ndcg@20", help="test metric (default ndcg@20; the paper's TALL row "
                                                        "only for it)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the first runs folder)")
    ap.add_argument("--name", default="niche_users", metavar="STEM",
                    help="file stem: STEM.md, STEM.csv, STEM.png (default niche_users; e.g. --out "
                         "docs/results --name ml1m_niche_users)")
    ap.add_argument("--faithful", default=FAITHFUL, metavar="RUN_NAME",
                    help=f"the row tested against as faithful TALL (default {FAITHFUL!r}: the paper's E = 100)")
    ap.add_argument("--skip-malformed", action="store_true", help="warn about bad results.json and go on")
    ap.add_argument("--no-plot", action="store_true", help="skip the plot (STEM.png)")
    args = ap.parse_args(argv)
    if not args.name or Path(args.name).name != args.name:
        print(f"error: --name must be a plain file stem, got {args.name!r}", file=sys.stderr)
        return 2
    try:
        runs = [r for root in args.runs for r in collect_runs(root, args.skip_malformed)]
        if not runs:
            raise FileNotFoundError(f"no readable results.json under {', '.join(map(str, args.runs))}")
        sections = build(runs, args.metric, args.faithful)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.runs[0]
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"{args.name}{kind}" for kind in (".md", ".csv", ".png")}
    md = to_markdown(sections, args.metric, produced_by(argv, runs, PROG),
                     None if args.no_plot else paths[".png"].name)
    pages.write_markdown(paths[".md"], md)
    write_csv(sections, paths[".csv"], args.metric)
    if not args.no_plot:
        plot([r for s in sections for r in s.rows], paths[".png"], args.metric, best=True)
    print(md)
    print("wrote " + ", ".join(str(p) for kind, p in paths.items() if not (kind == ".png" and args.no_plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
