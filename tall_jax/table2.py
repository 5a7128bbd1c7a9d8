"""The rows of the paper's Table 2 and of the spread over the groups, built from runs, and their
Markdown, CSV and PNG forms (used by :mod:`tall_jax.report`).

Table 2 rows: per model the mean ± std (ddof=1) over seeds of the test metric overall and per
mainstream group, the reference rows (docs/fidelity.md#paper-numbers) and "TALL vs X" improvement
rows (tall − x)/x·100 in %. Spread rows: per run max − min, low / high and the std over the groups
(:func:`tall_jax.metrics.group_fairness`), then mean ± std over seeds.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tall_jax import paper
from tall_jax.configs import MODEL_PRESETS, TALLConfig
from tall_jax.files import atomic_write_bytes
from tall_jax.metrics import FAIRNESS_COLUMNS, group_fairness

if TYPE_CHECKING:
    from tall_jax.report import Run

COLUMNS = paper.COLUMNS
MODEL_ORDER = ("multvae", "wl", "enlft", "loca", "lft", "moe", "lmoe", "lmoe_lc", "lmoe_gap_l", "tall")
DATASET_ORDER = ("ml-1m", "yelp", "cds")


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
    seconds: tuple[float, ...] = ()  # "ours" rows: each seed's training time (empty if a run lacks it)

    def seconds_mean_std(self) -> tuple[float, float | None] | None:
        """Mean and std (ddof=1; None for one seed) of the seconds per run; None without them."""
        if not self.seconds:
            return None
        std = float(np.std(self.seconds, ddof=1)) if len(self.seconds) > 1 else None
        return float(np.mean(self.seconds)), std


def _order(names: Sequence[str], preferred: Sequence[str]) -> list[str]:
    known = [n for n in preferred if n in names]
    return known + sorted(set(names) - set(known))


def _improvement(tall: Sequence[float], x: Sequence[float]) -> tuple[float, ...]:
    return tuple((t - v) / v * 100.0 if v != 0 else math.nan for t, v in zip(tall, x))


def n_experts(model: str, variant: str) -> int:
    """E of a row: the ``n_experts=`` of its variant, else its model's preset (1 for MultVAE, WL and
    the local baselines, whose models are single MultVAEs)."""
    for part in variant.split(", "):
        key, _, value = part.partition("=")
        if key == "n_experts":
            return int(value)
    preset = MODEL_PRESETS.get(model)
    return 1 if preset is None else int(preset.get("n_experts", TALLConfig.n_experts))


def _tall_on_subsets(tall_runs: Sequence[Run], x_runs: Sequence[Run], metric: str) -> tuple[float, ...]:
    """TALL's mean over each subset run's own users, averaged over TALL's seeds and the subset runs."""
    per_pair = np.array([[t.values_on(x.users, metric) for t in tall_runs] for x in x_runs])
    return tuple(float(v) for v in per_pair.mean(axis=(0, 1)))


def build_rows(runs: Sequence[Run], metric: str = "ndcg@20",
               reference: str | Sequence[str] | None = "paper") -> list[Row]:
    """Table 2 rows per dataset: each model's mean ± std over seeds, its reference rows (only for the
    paper's metric, NDCG@20; ``reference``: one or several of "paper", "lft_repo"), then "TALL vs X"
    improvement rows when "tall" is present (X on a user subset: TALL over the same users). A TALL row
    is compared with every single model and with the mixtures of its own E only (TALL at E = 100 is
    not set against an LMoE of 10 experts)."""
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
        experts = {name: n_experts(group[0].model, group[0].variant) for name, group in by_name.items()}
        means: dict[str, tuple[float, ...]] = {}
        refs: dict[tuple[str, str], tuple[float, ...]] = {}  # (source, model) -> values
        order = {m: i for i, m in enumerate(MODEL_ORDER)}
        for name in sorted(by_name, key=lambda n: (order.get(base[n], len(order)), base[n], n)):
            vals = np.array([[r.value(metric, c) for c in COLUMNS] for r in by_name[name]], np.float64)
            means[name] = tuple(vals.mean(0))
            std = tuple(vals.std(0, ddof=1)) if len(vals) >= 2 else None
            seconds = [r.seconds for r in by_name[name]]
            rows.append(Row(ds, "ours", name, "", len(vals), means[name], std,
                            seconds=() if None in seconds else tuple(seconds)))
            for source in references:
                ref = paper.paper_row(ds, base[name], source)
                if ref is not None and (source, base[name]) not in refs:
                    refs[source, base[name]] = tuple(ref[c] for c in COLUMNS)
                    rows.append(Row(ds, "paper", base[name], "", 0, refs[source, base[name]], None, source))
        for tall in [n for n in means if base[n] == "tall"]:
            for name in means:
                if base[name] == "tall" or experts[name] not in (1, experts[tall]):
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


def _seconds_cell(row: Row) -> str:
    summary = row.seconds_mean_std()
    if summary is None:
        return ""
    mean, std = summary
    return f"{mean:,.0f}" + (f" ± {std:,.0f}" if std is not None else "")


SECONDS_NOTE = ("Seconds per run: mean ± std over seeds of each run's training time, the sum of its "
                "epochs' seconds (training and evaluation; a resumed run, or one started from another "
                "run's checkpoint, counts every epoch of its history; start-up and compilation not), or "
                "its wall time for runs without an epoch history (the local baselines; one that reused "
                "another run's global model does not count that model's training). Taken on "
                "whatever machine trained the run, often beside other jobs: a cost, not a benchmark.")


def to_markdown(rows: Sequence[Row], metric: str, runs: Sequence[Run],
                fairness: Sequence[Row] = (), produced_by: str = "") -> str:
    """Table 2 per dataset, each followed by its spread-over-groups table when ``fairness`` rows
    (:func:`fairness_rows`) are given; ``produced_by``: a line that says how the page was made."""
    out = [f"# Table 2: test {metric}, mean ± std over seeds (ddof=1)", ""]
    out += [produced_by, ""] if produced_by else []
    out += [SECONDS_NOTE, ""]
    for ds in dict.fromkeys(r.dataset for r in rows):
        splits = sorted({r.split for r in runs if r.dataset == ds})
        out += [f"## {ds} (split: {', '.join(splits)})", "",
                "| model | seeds | " + " | ".join(COLUMNS) + " | seconds per run |",
                "|---|---|" + "---|" * len(COLUMNS) + "---:|"]
        for row in rows:
            if row.dataset == ds:
                seeds = str(row.n_seeds) if row.kind == "ours" else ""
                cells = [_cell(row, j) for j in range(len(COLUMNS))] + [_seconds_cell(row)]
                out.append(f"| {_label(row)} | {seeds} | " + " | ".join(cells) + " |")
        out.append("")
        out += _fairness_markdown(fairness, ds, metric)
    return "\n".join(out)


def write_csv(rows: Sequence[Row], path: Path, metric: str, columns: Sequence[str] = COLUMNS,
              ids: Sequence[str] = ("dataset", "kind", "model", "vs", "note"), seconds: bool = True) -> None:
    """One line per row: the ``ids`` fields, the metric, the seed count, then per value column its
    mean and std at full precision (std empty without one), then (``seconds``) the mean and std of
    the seconds per run. Table 2: ``columns=COLUMNS``; the spread over groups:
    ``columns=FAIRNESS_KEYS`` without the ``vs`` id and the seconds."""
    header = [*ids, "metric", "n_seeds"]
    for c in columns:
        header += [c, f"{c}_std"]
    lines: list[list[Any]] = [header + (["seconds", "seconds_std"] if seconds else [])]
    for r in rows:
        line: list[Any] = [getattr(r, k) for k in ids] + [metric, r.n_seeds if r.kind == "ours" else ""]
        for j in range(len(columns)):
            line += [repr(float(r.mean[j])), "" if r.std is None else repr(float(r.std[j]))]
        if seconds:
            summary = r.seconds_mean_std()
            line += ["", ""] if summary is None else [repr(summary[0]),
                                                      "" if summary[1] is None else repr(summary[1])]
        lines.append(line)
    buf = io.StringIO()
    csv.writer(buf).writerows(lines)
    atomic_write_bytes(path, buf.getvalue().encode())  # bytes: csv's own \r\n line ends, untranslated


def write_fairness_csv(rows: Sequence[Row], path: Path, metric: str) -> None:
    """``fairness.csv``: :func:`write_csv` over the spread columns (max − min, low / high, std)."""
    write_csv(rows, path, metric, FAIRNESS_KEYS, ("dataset", "kind", "model", "note"), seconds=False)


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


