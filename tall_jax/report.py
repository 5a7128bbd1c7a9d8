"""The paper's Table 2 from a folder of runs: ``python -m tall_jax.report runs/ [--metric ndcg@20] [--out DIR]``.

Reads every ``results.json`` below the folder (written by the training CLI: ``dataset``, ``model``, ``seed``,
``split``, ``test`` = ``RankingSummary.to_json()``), groups runs by (dataset, model), and writes
``table2.md``, ``table2.csv`` and ``table2.png``: per model the mean ± std (ddof=1) over seeds of the test
metric overall and per mainstream group (docs/fidelity.md#groups), the paper's row beside it (docs/fidelity.md#paper-numbers), and "TALL vs X"
improvement rows (tall − x)/x·100 in %. A baseline evaluated on a user subset (LFT ``--users``; its
``evaluated_users.npy``) is compared with TALL's per-user results (``per_user_test.npz``) on the same
users, so both sides of that row average over one user set.

Below each dataset's table, the spread of the metric over the five groups (``fairness.csv`` too): per
run max − min, low / high and the std over the groups (:func:`tall_jax.metrics.group_fairness`), then
mean ± std over seeds; the reference rows get the spread of the reference's own group values.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tall_jax import paper
from tall_jax.metrics import FAIRNESS_COLUMNS, RankingResult, RankingSummary, group_fairness

COLUMNS = paper.COLUMNS
MODEL_ORDER = ("multvae", "wl", "enlft", "loca", "lft", "moe", "lmoe", "lmoe_lc", "lmoe_gap_l", "tall")
DATASET_ORDER = ("ml-1m", "yelp", "cds")
REQUIRED_KEYS = ("dataset", "model", "seed", "test")


@dataclasses.dataclass(frozen=True)
class Run:
    """One results.json: where it came from and its test summary."""

    path: Path
    dataset: str
    model: str
    seed: int
    split: str
    test: RankingSummary
    variant: str = ""  # how the run departs from the faithful configuration, e.g. "n_experts=10"
    users: tuple[int, ...] | None = None  # the evaluated users when the run covered only a subset

    @property
    def name(self) -> str:
        """The table's row name: the model, with its variant in brackets when it has one."""
        return f"{self.model} [{self.variant}]" if self.variant else self.model

    def values_on(self, users: Sequence[int], metric: str) -> tuple[float, ...]:
        """The run's mean ``metric`` over ``users`` only, per column (overall, then each group's share
        of them), from its per-user file."""
        path = self.path.parent / "per_user_test.npz"
        if not path.exists():
            raise ValueError(f"{path}: needed to compare with a user-subset run, but missing")
        res = RankingResult.load_per_user(path)
        idx = np.asarray(users)
        if idx.size and idx.max() >= res.n_users:
            raise ValueError(f"{path}: has {res.n_users} users; the subset needs user {idx.max()}")
        sub = RankingResult({k: v[idx] for k, v in res.per_user.items()},
                            None if res.groups is None else res.groups[idx])
        by_group = sub.by_group()
        values = []
        for column in COLUMNS:
            src = sub.overall() if column == "overall" else by_group.get(column, {})
            if metric not in src:
                raise ValueError(f"{path}: no per-user {metric!r} for column {column!r}")
            values.append(src[metric])
        return tuple(values)

    def value(self, metric: str, column: str) -> float:
        """The run's mean ``metric`` over all users (``column="overall"``) or over one group."""
        src = self.test.overall if column == "overall" else self.test.groups.get(column)
        if src is None or metric not in src:
            raise ValueError(f"{self.path}: test results have no {metric!r} for column {column!r}")
        return src[metric]


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row. ``kind``: "ours" (mean ± std over seeds), "paper" (reference values),
    "improvement" (TALL vs ``vs``, %, ours) or "improvement_paper" (same from the paper's values)."""

    dataset: str
    kind: str
    model: str
    vs: str
    n_seeds: int
    mean: tuple[float, ...]
    std: tuple[float, ...] | None
    note: str = ""  # reference rows: their source; improvement rows: how they were computed


def _order(names: Sequence[str], preferred: Sequence[str]) -> list[str]:
    known = [n for n in preferred if n in names]
    return known + sorted(set(names) - set(known))


def load_run(path: Path) -> Run:
    """Parse one results.json; raises ValueError naming the file and the problem."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read results JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    try:
        test = RankingSummary.from_json(d["test"])
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: malformed 'test' entry: {e}") from e
    try:
        seed = int(d["seed"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: 'seed' must be an integer, got {d['seed']!r}") from e
    users = None
    if d.get("evaluated_users", "all") != "all":
        users_path = path.parent / "evaluated_users.npy"
        if not users_path.exists():
            raise ValueError(f"{path}: evaluated a user subset but {users_path.name} is missing beside it")
        users = tuple(int(u) for u in np.load(users_path))
    return Run(path, str(d["dataset"]), str(d["model"]), seed, str(d.get("split", "?")), test,
               str(d.get("variant", "") or ""), users)


def collect_runs(root: Path, skip_malformed: bool = False) -> list[Run]:
    """Every results.json below ``root`` (sorted by path)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder not found: {root}")
    paths = sorted(root.rglob("results.json"))
    if not paths:
        raise FileNotFoundError(f"no results.json found under {root}")
    runs = []
    for p in paths:
        try:
            runs.append(load_run(p))
        except ValueError as e:
            if not skip_malformed:
                raise
            print(f"warning: skipped {e}", file=sys.stderr)
    seen: dict[tuple, Path] = {}
    for r in runs:
        key = (r.dataset, r.name, r.seed, r.split)
        if key in seen:
            print(f"warning: {r.path} repeats dataset/model/seed/split of {seen[key]}; both are counted",
                  file=sys.stderr)
        seen.setdefault(key, r.path)
    return runs


def _improvement(tall: Sequence[float], x: Sequence[float]) -> tuple[float, ...]:
    return tuple((t - v) / v * 100.0 if v != 0 else math.nan for t, v in zip(tall, x))


def _tall_on_subsets(tall_runs: Sequence[Run], x_runs: Sequence[Run], metric: str) -> tuple[float, ...]:
    """TALL's mean over each subset run's own users, averaged over TALL's seeds and the subset runs."""
    per_pair = np.array([[t.values_on(x.users, metric) for t in tall_runs] for x in x_runs])
    return tuple(float(v) for v in per_pair.mean(axis=(0, 1)))


def build_rows(runs: Sequence[Run], metric: str = "ndcg@20",
               reference: str | Sequence[str] | None = "paper") -> list[Row]:
    """Table 2 rows per dataset: each model's mean ± std over seeds, its reference rows (only for the
    paper's metric, NDCG@20; ``reference``: one or several of "paper", "lft_repo"), then "TALL vs X"
    improvement rows when "tall" is present (X on a user subset: TALL over the same users)."""
    references = [] if reference is None else [reference] if isinstance(reference, str) else list(reference)
    if metric != paper.PAPER_METRIC:
        references = []
    rows: list[Row] = []
    for ds in _order({r.dataset for r in runs}, DATASET_ORDER):
        by_name: dict[str, list[Run]] = {}
        for r in runs:
            if r.dataset == ds:
                by_name.setdefault(r.name, []).append(r)
        base = {name: group[0].model for name, group in by_name.items()}
        means: dict[str, tuple[float, ...]] = {}
        refs: dict[tuple[str, str], tuple[float, ...]] = {}  # (source, model) -> values
        order = {m: i for i, m in enumerate(MODEL_ORDER)}
        for name in sorted(by_name, key=lambda n: (order.get(base[n], len(order)), base[n], n)):
            vals = np.array([[r.value(metric, c) for c in COLUMNS] for r in by_name[name]], np.float64)
            means[name] = tuple(vals.mean(0))
            std = tuple(vals.std(0, ddof=1)) if len(vals) >= 2 else None
            rows.append(Row(ds, "ours", name, "", len(vals), means[name], std))
            for source in references:
                ref = paper.paper_row(ds, base[name], source)
                if ref is not None and (source, base[name]) not in refs:
                    refs[source, base[name]] = tuple(ref[c] for c in COLUMNS)
                    rows.append(Row(ds, "paper", base[name], "", 0, refs[source, base[name]], None, source))
        for tall in [n for n in means if base[n] == "tall"]:
            for name in means:
                if base[name] == "tall":
                    continue
                subset = [r for r in by_name[name] if r.users is not None]
                if subset:
                    n_users = sorted({len(r.users) for r in subset})
                    ref_tall = _tall_on_subsets(by_name[tall], subset, metric)
                    rows.append(Row(ds, "improvement", tall, name, 0, _improvement(ref_tall, means[name]), None,
                                    f"same {'/'.join(map(str, n_users))} users"))
                else:
                    rows.append(Row(ds, "improvement", tall, name, 0, _improvement(means[tall], means[name]),
                                    None))
                for source in references:
                    if ("tall", "tall") == (tall, base[tall]) and (source, "tall") in refs \
                            and (source, base[name]) in refs:
                        rows.append(Row(ds, "improvement_paper", "tall", base[name], 0,
                                        _improvement(refs[source, "tall"], refs[source, base[name]]), None,
                                        source))
    return rows


FAIRNESS_KEYS = tuple(key for key, _, _ in FAIRNESS_COLUMNS)  # max_minus_min, low_over_high, std


def fairness_rows(runs: Sequence[Run], metric: str = "ndcg@20",
                  reference: str | Sequence[str] | None = "paper") -> list[Row]:
    """Per dataset and row name, the spread of ``metric`` over the mainstream groups (``FAIRNESS_KEYS``
    of :func:`tall_jax.metrics.group_fairness`): "ours" rows hold the mean ± std (ddof=1) over seeds of
    each run's own spread; "paper" rows the spread of the reference's group values (NDCG@20 only)."""
    references = [] if reference is None else [reference] if isinstance(reference, str) else list(reference)
    if metric != paper.PAPER_METRIC:
        references = []
    rows: list[Row] = []
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    for ds in _order({r.dataset for r in runs}, DATASET_ORDER):
        by_name: dict[str, list[Run]] = {}
        for r in runs:
            if r.dataset == ds:
                by_name.setdefault(r.name, []).append(r)
        seen: set[tuple[str, str]] = set()
        for name in sorted(by_name, key=lambda n: (order.get(by_name[n][0].model, len(order)),
                                                   by_name[n][0].model, n)):
            group = by_name[name]
            stats = [r.test.fairness().get(metric) for r in group]
            if any(s is None for s in stats):
                raise ValueError(f"{group[0].path}: no per-group {metric!r} for the fairness summary")
            vals = np.array([[s[k] for k in FAIRNESS_KEYS] for s in stats], np.float64)
            std = tuple(vals.std(0, ddof=1)) if len(vals) >= 2 else None
            rows.append(Row(ds, "ours", name, "", len(vals), tuple(vals.mean(0)), std))
            base = group[0].model
            for source in references:
                ref = paper.paper_row(ds, base, source)
                if ref is not None and (source, base) not in seen:
                    seen.add((source, base))
                    fair = group_fairness({c: {metric: ref[c]} for c in COLUMNS[1:]})[metric]
                    rows.append(Row(ds, "paper", base, "", 0, tuple(fair[k] for k in FAIRNESS_KEYS), None,
                                    source))
    return rows


def _fairness_markdown(rows: Sequence[Row], ds: str, metric: str) -> list[str]:
    mine = [r for r in rows if r.dataset == ds]
    if not mine:
        return []
    heads = [h for _, h, _ in FAIRNESS_COLUMNS]
    out = [f"Spread of test {metric} over the groups (max − min, low / high, std with ddof=0 over the "
           "groups; mean ± std over seeds):", "", "| model | seeds | " + " | ".join(heads) + " |",
           "|---|---|" + "---|" * len(heads)]
    for row in mine:
        cells = []
        for j, (_, _, fmt) in enumerate(FAIRNESS_COLUMNS):
            m = row.mean[j]
            cell = "nan" if math.isnan(m) else format(m, fmt)
            if row.std is not None:
                cell += f" ± {row.std[j]:{fmt}}"
            cells.append(cell)
        seeds = str(row.n_seeds) if row.kind == "ours" else ""
        out.append(f"| {_label(row)} | {seeds} | " + " | ".join(cells) + " |")
    return out + [""]


def write_fairness_csv(rows: Sequence[Row], path: Path, metric: str) -> None:
    """One line per fairness row; numbers at full precision; std columns empty without a std."""
    header = ["dataset", "kind", "model", "note", "metric", "n_seeds"]
    for k in FAIRNESS_KEYS:
        header += [k, f"{k}_std"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line: list[Any] = [r.dataset, r.kind, r.model, r.note, metric, r.n_seeds if r.kind == "ours" else ""]
            for j in range(len(FAIRNESS_KEYS)):
                line += [repr(float(r.mean[j])), "" if r.std is None else repr(float(r.std[j]))]
            w.writerow(line)


def _label(row: Row) -> str:
    note = f", {row.note}" if row.note else ""
    return {"ours": row.model, "paper": f"{row.model} ({row.note})",
            "improvement": f"TALL{row.model[4:]} vs {row.vs} (%{note})",
            "improvement_paper": f"TALL vs {row.vs} (%{note})"}[row.kind]


def _cell(row: Row, j: int) -> str:
    m = row.mean[j]
    if row.kind.startswith("improvement"):
        return f"{m:+.2f}"
    if row.std is None:
        return f"{m:.4f}"
    return f"{m:.4f} ± {row.std[j]:.4f}"


def to_markdown(rows: Sequence[Row], metric: str, runs: Sequence[Run],
                fairness: Sequence[Row] = ()) -> str:
    """Table 2 per dataset, each followed by its spread-over-groups table when ``fairness`` rows
    (:func:`fairness_rows`) are given."""
    out = [f"# Table 2: test {metric}, mean ± std over seeds (ddof=1)", ""]
    for ds in dict.fromkeys(r.dataset for r in rows):
        splits = sorted({r.split for r in runs if r.dataset == ds})
        out += [f"## {ds} (split: {', '.join(splits)})", "",
                "| model | seeds | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
        for row in rows:
            if row.dataset == ds:
                seeds = str(row.n_seeds) if row.kind == "ours" else ""
                cells = [_cell(row, j) for j in range(len(COLUMNS))]
                out.append(f"| {_label(row)} | {seeds} | " + " | ".join(cells) + " |")
        out.append("")
        out += _fairness_markdown(fairness, ds, metric)
    return "\n".join(out)


def write_csv(rows: Sequence[Row], path: Path, metric: str) -> None:
    """One line per row; numbers at full precision; std columns empty when there is no std."""
    header = ["dataset", "kind", "model", "vs", "note", "metric", "n_seeds"]
    for c in COLUMNS:
        header += [c, f"{c}_std"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line: list[Any] = [r.dataset, r.kind, r.model, r.vs, r.note, metric, r.n_seeds if r.kind == "ours" else ""]
            for j in range(len(COLUMNS)):
                line += [repr(float(r.mean[j])), "" if r.std is None else repr(float(r.std[j]))]
            w.writerow(line)


def plot(rows: Sequence[Row], path: Path, metric: str) -> None:
    """Bar plot per dataset: one bar group per model, one bar per mainstream group (error bar = std),
    the reference value as a black tick."""
    from tall_jax.plots import new_figure  # pyplot-free: the process's backend is left alone

    datasets = list(dict.fromkeys(r.dataset for r in rows))
    groups = COLUMNS[1:]
    fig = new_figure((10, 3.5 * len(datasets)))
    axes = fig.subplots(len(datasets), 1, squeeze=False)
    width = 0.8 / len(groups)
    for ax, ds in zip(axes[:, 0], datasets):
        ours = [r for r in rows if r.dataset == ds and r.kind == "ours"]
        ref = {r.model: r.mean for r in rows if r.dataset == ds and r.kind == "paper"
               and r.note == next((q.note for q in rows if q.kind == "paper"), "")}  # the first source
        x = np.arange(len(ours))
        for j, g in enumerate(groups, start=1):
            pos = x + (j - 1 - (len(groups) - 1) / 2) * width
            err = [r.std[j] if r.std is not None else 0.0 for r in ours]
            ax.bar(pos, [r.mean[j] for r in ours], width, yerr=err, label=g, capsize=2)
            for p, r in zip(pos, ours):
                if r.model in ref:
                    ax.plot([p - width / 2, p + width / 2], [ref[r.model][j]] * 2, color="black", lw=1.5)
        ax.set_xticks(x, [f"{r.model}\n(n={r.n_seeds})" for r in ours])
        ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the legend
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{ds}: per-group {metric} (black ticks: reference)")
        ax.legend(ncol=len(groups), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tall_jax.report", description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, help="folder searched recursively for results.json")
    ap.add_argument("--metric", default="ndcg@20", help="test metric to tabulate (default ndcg@20)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the runs folder)")
    ap.add_argument("--reference", nargs="+", choices=["paper", "lft_repo", "none"], default=["paper"],
                    help="reference rows, one or more: the TALL paper (docs/fidelity.md#paper-numbers), the LFT repo (docs/fidelity.md#lft-repo-numbers), "
                         "or none (the plot's ticks show the first)")
    ap.add_argument("--skip-malformed", action="store_true", help="warn about bad results.json and go on")
    ap.add_argument("--no-plot", action="store_true", help="skip table2.png")
    args = ap.parse_args(argv)
    reference = [r for r in dict.fromkeys(args.reference) if r != "none"] or None
    try:
        runs = collect_runs(args.runs, args.skip_malformed)
        if not runs:
            raise FileNotFoundError(f"no readable results.json under {args.runs}")
        rows = build_rows(runs, args.metric, reference)
        fair = fairness_rows(runs, args.metric, reference)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.runs
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows, args.metric, runs, fair)
    (out / "table2.md").write_text(md)
    write_csv(rows, out / "table2.csv", args.metric)
    write_fairness_csv(fair, out / "fairness.csv", args.metric)
    if not args.no_plot:
        plot(rows, out / "table2.png", args.metric)
    print(md)
    print(f"wrote {out / 'table2.md'}, {out / 'table2.csv'}, {out / 'fairness.csv'}"
          + ("" if args.no_plot else f", {out / 'table2.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
