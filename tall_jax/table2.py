"""The rows of the paper's Table 2 and of the spread over the groups, built from runs, and their
Markdown, CSV and PNG forms (used by :mod:`tall_jax.report`).

Table 2 rows: per model the mean ± std (ddof=1) over seeds of the test metric overall and per
mainstream group, the reference rows (docs/fidelity.md#paper-numbers) and "TALL vs X" improvement
rows (tall − x)/x·100 in %. Spread rows: per run max − min, low / high and the std over the groups
(:func:`tall_jax.metrics.group_fairness`), then mean ± std over seeds.

Every page built from runs groups and orders them here (:func:`grouped_runs`: the paper's models,
then the strong baselines, ``MODEL_ORDER``) and labels them here (:func:`label`: a mixture names its
E, "TALL (E = 100)"; a closed-form model the hyper-parameters it chose, "EASE (λ = 800)"); the plot
(:func:`plot`) has one panel per column and one line per model.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tall_jax import pages, paper
from tall_jax.metrics import FAIRNESS_COLUMNS, group_fairness
from tall_jax.run_records import BLENDS, RunRecord, is_mixture

COLUMNS = paper.COLUMNS
PAPER_BASELINES = ("multvae", "wl", "enlft", "loca", "lft")  # the paper's single-model rows
MIXTURES = ("moe", "lmoe", "lmoe_lc", "lmoe_gap_l", "tall", "tall_plus", "uniform_moe")
# closed-form and neighbourhood models, simplest first (the issue "Strong baselines under the
# per-group protocol"; the paper has no row for them)
STRONG_BASELINES = ("pop", "itemknn", "rp3beta", "ease", "ease_wl", "ease_ms", "ease_kkt", "loca_ease")
# the row order of a page: the paper's models (its baselines, then its mixtures and ours), then the
# strong baselines; any other model after them, alphabetically
MODEL_ORDER = PAPER_BASELINES + MIXTURES + STRONG_BASELINES + tuple(BLENDS)
DATASET_ORDER = ("ml-1m", "yelp", "cds")

# model -> (display name, qualifier shown in the label's brackets)
DISPLAY_NAMES: dict[str, tuple[str, str]] = {
    "multvae": ("MultVAE", ""), "wl": ("WL", ""), "enlft": ("EnLFT", ""), "loca": ("LOCA", ""),
    "lft": ("LFT", ""), "moe": ("MoE", ""), "lmoe": ("LMoE", ""), "lmoe_lc": ("LMoE+LC", ""),
    "lmoe_gap_l": ("LMoE+gap+L", ""), "tall": ("TALL", ""), "tall_plus": ("TALL+", ""),
    "uniform_moe": ("MoE", "uniform gate"),
    "pop": ("Most popular", ""), "itemknn": ("ItemKNN", ""), "rp3beta": ("RP3beta", ""),
    "ease": ("EASE", ""), "ease_wl": ("EASE", "WL weights"), "ease_ms": ("EASE", "MS weights"),
    "ease_kkt": ("EASE", "KKT rounds"), "loca_ease": ("LOCA-EASE", ""),
    "tall_ease": ("TALL + EASE blend", ""), "lmoe_ease": ("LMoE + EASE blend", ""),
    "multvae_ease": ("MultVAE + EASE blend", ""), "tall_plus_ease": ("TALL+ + EASE blend", ""),
}
SOURCE_NAMES = {"paper": "paper", "lft_repo": "LFT repo"}
HP_SYMBOLS = {"lambda": "λ", "lam": "λ", "l2": "λ", "reg": "λ", "alpha": "α", "beta": "β", "gamma": "γ",
              "topk": "k", "top_k": "k", "neighbours": "k", "neighbors": "k"}
FAMILIES = ("the paper's baselines", "mixtures of MultVAEs", "strong baselines", "other")


def family(model: str) -> str:
    """The plot's colour group of a model: one of ``FAMILIES``."""
    if model in PAPER_BASELINES:
        return FAMILIES[0]
    if model in MIXTURES or is_mixture(model):
        return FAMILIES[1]
    return FAMILIES[2] if model in STRONG_BASELINES or model in BLENDS else FAMILIES[3]


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row. ``kind``: "ours" (mean ± std over seeds), "paper" (reference values),
    "improvement" (TALL vs ``vs``, %, ours) or "improvement_paper" (same from the paper's values).
    ``model`` / ``vs``: run names (model [variant], the CSV's keys); ``label`` / ``vs_label``: what a
    reader sees (:func:`label`)."""

    dataset: str
    kind: str
    model: str
    vs: str
    n_seeds: int
    mean: tuple[float, ...]
    std: tuple[float, ...] | None
    note: str = ""  # reference rows: their source; improvement rows: how they were computed
    seconds: tuple[float, ...] = ()  # "ours" rows: each seed's training time (empty if a run lacks it)
    label: str = ""
    vs_label: str = ""
    base: str = ""  # the model (no variant)
    chosen_hp: str = ""  # "ours" rows: the chosen hyper-parameters as JSON ("" without)
    subset: bool = False  # "ours" rows: evaluated on a subset of the users (LFT --users)
    experts: int | None = None  # E of a mixture's row (None: a single model)

    def seconds_mean_std(self) -> tuple[float, float | None] | None:
        """Mean and std (ddof=1; None for one seed) of the seconds per run; None without them."""
        if not self.seconds:
            return None
        std = float(np.std(self.seconds, ddof=1)) if len(self.seconds) > 1 else None
        return float(np.mean(self.seconds)), std

    @property
    def title(self) -> str:
        """The row's label on a page."""
        return _label(self)


def _order(names: Sequence[str], preferred: Sequence[str]) -> list[str]:
    known = [n for n in preferred if n in names]
    return known + sorted(set(names) - set(known))


def _hp_value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    return format(v, "g") if isinstance(v, float) else str(v)


def format_hp(hp: Sequence[tuple[str, Any]] | None) -> str:
    """Chosen hyper-parameters for a label: "λ = 800, k = 50" (``HP_SYMBOLS`` names the usual ones)."""
    return ", ".join(f"{HP_SYMBOLS.get(k.lower(), k)} = {_hp_value(v)}" for k, v in hp or ())


def label(model: str, variant: str = "", experts: int | None = None, hp: str = "", source: str = "") -> str:
    """A row's label: the model's display name, then in brackets its qualifier, E for a mixture
    (``experts``), the variant's other settings (``users=200`` as "200 users"), the chosen
    hyper-parameters ``hp`` and a reference ``source``: "TALL (E = 100)", "EASE (WL weights, λ = 800)",
    "LFT (200 users)", "TALL (E = 100, paper)"."""
    name, qualifier = DISPLAY_NAMES.get(model, (model, ""))
    parts = [qualifier] if qualifier else []
    if experts is not None:
        parts.append(f"E = {experts}")
    for part in filter(None, variant.split(", ")):
        key, _, value = part.partition("=")
        if key != "n_experts":
            parts.append(f"{value} users" if key == "users" else part)
    parts += [p for p in (hp, SOURCE_NAMES.get(source, source)) if p]
    return f"{name} ({', '.join(parts)})" if parts else name


def run_label(group: Sequence[RunRecord]) -> str:
    """The label of the row of ``group`` (the runs of one row name): its E, and the hyper-parameters
    its runs chose (when they differ between seeds: "chosen per seed")."""
    first = group[0]
    hps = {r.chosen_hp for r in group}
    hp = format_hp(first.chosen_hp) if len(hps) == 1 else "chosen per seed"
    variant = first.variant
    if first.users is not None and "users=" not in variant:  # a subset run says so in its label
        variant = ", ".join(filter(None, (variant, f"users={len(first.users)}")))
    return label(first.model, variant, first.experts, hp)


def reference_label(model: str, source: str = "") -> str:
    """The label of a reference row (the paper's mixtures have E = ``paper.EXPERTS``)."""
    return label(model, experts=paper.EXPERTS if is_mixture(model) else None, source=source)


def grouped_runs(runs: Sequence[RunRecord]) -> list[tuple[str, str, list[RunRecord]]]:
    """(dataset, row name, its runs) in page order: datasets in ``DATASET_ORDER``, models in
    ``MODEL_ORDER`` (others after them, alphabetically), within a model the larger E first, then by
    name. The one grouping of runs into rows of every page (Table 2, the spread, the niche page)."""
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    out = []
    for ds in _order({r.dataset for r in runs}, DATASET_ORDER):
        by_name: dict[str, list[RunRecord]] = {}
        for r in runs:
            if r.dataset == ds:
                by_name.setdefault(r.name, []).append(r)

        def key(name: str) -> tuple:
            first = by_name[name][0]
            return order.get(first.model, len(order)), first.model, -(first.experts or 1), name

        out += [(ds, name, by_name[name]) for name in sorted(by_name, key=key)]
    return out


def _hp_json(group: Sequence[RunRecord]) -> str:
    hps = {r.chosen_hp for r in group}
    if len(hps) != 1 or group[0].chosen_hp is None:
        return "" if hps == {None} else json.dumps([dict(r.chosen_hp or ()) for r in group], default=str)
    return json.dumps(dict(group[0].chosen_hp), default=str)


def _improvement(tall: Sequence[float], x: Sequence[float]) -> tuple[float, ...]:
    return tuple((t - v) / v * 100.0 if v != 0 else math.nan for t, v in zip(tall, x))


def _tall_on_subsets(tall_runs: Sequence[RunRecord], x_runs: Sequence[RunRecord],
                     metric: str) -> tuple[float, ...]:
    """TALL's mean over each subset run's own users, averaged over TALL's seeds and the subset runs."""
    per_pair = np.array([[t.values_on(x.users, metric) for t in tall_runs] for x in x_runs])
    return tuple(float(v) for v in per_pair.mean(axis=(0, 1)))


def build_rows(runs: Sequence[RunRecord], metric: str = "ndcg@20",
               reference: str | Sequence[str] | None = "paper") -> list[Row]:
    """Table 2 rows per dataset, in :func:`grouped_runs` order: each model's mean ± std over seeds, its
    reference rows (only for the paper's metric, NDCG@20; ``reference``: one or several of "paper",
    "lft_repo"), then "TALL vs X" improvement rows when "tall" is present (X on a user subset: TALL
    over the same users). A TALL row is compared with every single model and with the mixtures of its
    own E only (TALL at E = 100 is not set against an LMoE of 10 experts)."""
    references = [] if reference is None else [reference] if isinstance(reference, str) else list(reference)
    if metric != paper.PAPER_METRIC:
        references = []
    rows: list[Row] = []
    groups = grouped_runs(runs)
    for ds in dict.fromkeys(ds for ds, _, _ in groups):
        by_name = {name: group for d, name, group in groups if d == ds}
        base = {name: group[0].model for name, group in by_name.items()}
        experts = {name: group[0].experts or 1 for name, group in by_name.items()}
        labels = {name: run_label(group) for name, group in by_name.items()}
        means: dict[str, tuple[float, ...]] = {}
        refs: dict[tuple[str, str], tuple[float, ...]] = {}  # (source, model) -> values
        for name, group in by_name.items():
            vals = np.array([[r.value(metric, c) for c in COLUMNS] for r in group], np.float64)
            means[name] = tuple(vals.mean(0))
            std = tuple(vals.std(0, ddof=1)) if len(vals) >= 2 else None
            seconds = [r.seconds for r in group]
            rows.append(Row(ds, "ours", name, "", len(vals), means[name], std,
                            seconds=() if None in seconds else tuple(seconds), label=labels[name],
                            base=base[name], chosen_hp=_hp_json(group),
                            subset=any(r.users is not None for r in group), experts=group[0].experts))
            for source in references:
                ref = paper.paper_row(ds, base[name], source)
                if ref is not None and (source, base[name]) not in refs:
                    refs[source, base[name]] = tuple(ref[c] for c in COLUMNS)
                    rows.append(Row(ds, "paper", base[name], "", 0, refs[source, base[name]], None, source,
                                    label=reference_label(base[name], source), base=base[name],
                                    experts=paper.EXPERTS if is_mixture(base[name]) else None))
        for tall in [n for n in means if base[n] == "tall"]:
            for name in means:
                if base[name] == "tall" or experts[name] not in (1, experts[tall]):
                    continue
                ids = dict(label=labels[tall], vs_label=labels[name], base="tall")
                subset = [r for r in by_name[name] if r.users is not None]
                if subset:
                    n_users = sorted({len(r.users) for r in subset})
                    ref_tall = _tall_on_subsets(by_name[tall], subset, metric)
                    rows.append(Row(ds, "improvement", tall, name, 0, _improvement(ref_tall, means[name]), None,
                                    f"same {'/'.join(map(str, n_users))} users", **ids))
                else:
                    rows.append(Row(ds, "improvement", tall, name, 0, _improvement(means[tall], means[name]),
                                    None, **ids))
                for source in references:
                    if ("tall", "tall") == (tall, base[tall]) and (source, "tall") in refs \
                            and (source, base[name]) in refs:
                        rows.append(Row(ds, "improvement_paper", "tall", base[name], 0,
                                        _improvement(refs[source, "tall"], refs[source, base[name]]), None,
                                        source, label=reference_label("tall"),
                                        vs_label=reference_label(base[name]), base="tall"))
    return rows


FAIRNESS_KEYS = tuple(key for key, _, _ in FAIRNESS_COLUMNS)  # max_minus_min, low_over_high, std


def fairness_rows(runs: Sequence[RunRecord], metric: str = "ndcg@20",
                  reference: str | Sequence[str] | None = "paper") -> list[Row]:
    """Per dataset and row name, the spread of ``metric`` over the mainstream groups (``FAIRNESS_KEYS``
    of :func:`tall_jax.metrics.group_fairness`): "ours" rows hold the mean ± std (ddof=1) over seeds of
    each run's own spread; "paper" rows the spread of the reference's group values (NDCG@20 only)."""
    references = [] if reference is None else [reference] if isinstance(reference, str) else list(reference)
    if metric != paper.PAPER_METRIC:
        references = []
    rows: list[Row] = []
    seen: set[tuple[str, str, str]] = set()
    for ds, name, group in grouped_runs(runs):
        stats = [r.test.fairness().get(metric) for r in group]
        if any(s is None for s in stats):
            raise ValueError(f"{group[0].path}: no per-group {metric!r} for the fairness summary")
        vals = np.array([[s[k] for k in FAIRNESS_KEYS] for s in stats], np.float64)
        std = tuple(vals.std(0, ddof=1)) if len(vals) >= 2 else None
        base = group[0].model
        rows.append(Row(ds, "ours", name, "", len(vals), tuple(vals.mean(0)), std, label=run_label(group),
                        base=base))
        for source in references:
            ref = paper.paper_row(ds, base, source)
            if ref is not None and (ds, source, base) not in seen:
                seen.add((ds, source, base))
                fair = group_fairness({c: {metric: ref[c]} for c in COLUMNS[1:]})[metric]
                rows.append(Row(ds, "paper", base, "", 0, tuple(fair[k] for k in FAIRNESS_KEYS), None,
                                source, label=reference_label(base, source), base=base))
    return rows


def _fairness_markdown(rows: Sequence[Row], ds: str, metric: str) -> list[str]:
    mine = [r for r in rows if r.dataset == ds]
    if not mine:
        return []
    lines = [[_label(row), str(row.n_seeds) if row.kind == "ours" else "",
              *(pages.mean_std(row.mean[j], None if row.std is None else row.std[j], fmt)
                for j, (_, _, fmt) in enumerate(FAIRNESS_COLUMNS))] for row in mine]
    return [f"Spread of test {metric} over the groups (max − min, low / high, std with ddof=0 over the "
            "groups; mean ± std over seeds):", "",
            *pages.table(["model", "seeds", *(h for _, h, _ in FAIRNESS_COLUMNS)], lines), ""]


def _label(row: Row) -> str:
    note = f", {SOURCE_NAMES.get(row.note, row.note)}" if row.note else ""
    if row.kind in ("ours", "paper"):
        return row.label or (row.model if row.kind == "ours" else f"{row.model} ({row.note})")
    return f"{row.label or row.model} vs {row.vs_label or row.vs} (%{note})"


def value_cell(row: Row, j: int) -> str:
    """Column ``j`` of a row on a page: "mean ± std" (4 decimals), an improvement as "+1.23" (%)."""
    m = row.mean[j]
    if row.kind.startswith("improvement"):
        return f"{m:+.2f}"
    return pages.mean_std(m, None if row.std is None else row.std[j])


def seconds_cell(row: Row) -> str:
    """A row's seconds per run on a page: "1,234 ± 56" ("" without them)."""
    summary = row.seconds_mean_std()
    return "" if summary is None else pages.mean_std(*summary, fmt=",.0f")


SECONDS_NOTE = ("Seconds per run: mean ± std over seeds of each run's training time, the sum of its "
                "epochs' seconds (training and evaluation; a resumed run, or one started from another "
                "run's checkpoint, counts every epoch of its history; start-up and compilation not), or "
                "its wall time for runs without an epoch history (the local baselines; one that reused "
                "another run's global model does not count that model's training). Taken on "
                "whatever machine trained the run, often beside other jobs: a cost, not a benchmark.")


LABELS_NOTE = ("Labels: a mixture of MultVAE experts names its E (the paper's mixtures have E = 100); a "
               "single model (MultVAE, WL, the local and closed-form baselines) has none. A closed-form "
               "model names the hyper-parameters it chose on validation. A row's run name (model "
               "[variant], as the runs record it) is its key in the CSV.")


def to_markdown(rows: Sequence[Row], metric: str, runs: Sequence[RunRecord],
                fairness: Sequence[Row] = (), produced_by: str = "") -> str:
    """Table 2 per dataset, each followed by its spread-over-groups table when ``fairness`` rows
    (:func:`fairness_rows`) are given; ``produced_by``: a line that says how the page was made."""
    out = [f"# Table 2: test {metric}, mean ± std over seeds (ddof=1)", ""]
    out += [produced_by, ""] if produced_by else []
    out += [SECONDS_NOTE, "", LABELS_NOTE, ""]
    for ds in dict.fromkeys(r.dataset for r in rows):
        splits = sorted({r.split for r in runs if r.dataset == ds})
        lines = [[_label(row), str(row.n_seeds) if row.kind == "ours" else "",
                  *(value_cell(row, j) for j in range(len(COLUMNS))), seconds_cell(row),
                  row.model if row.kind == "ours" else ""] for row in rows if row.dataset == ds]
        out += [f"## {ds} (split: {', '.join(splits)})", "",
                *pages.table(["model", "seeds", *COLUMNS, "seconds per run", "run name"], lines,
                             "l" * (2 + len(COLUMNS)) + "rl"), ""]
        out += _fairness_markdown(fairness, ds, metric)
    return "\n".join(out)


def write_csv(rows: Sequence[Row], path: Path, metric: str, columns: Sequence[str] = COLUMNS,
              ids: Sequence[str] = ("dataset", "kind", "model", "label", "vs", "note", "chosen_hp"),
              seconds: bool = True) -> None:
    """One line per row: the ``ids`` fields ("label": the row's label on the page), the metric, the
    seed count, then per value column its mean and std at full precision (std empty without one),
    then (``seconds``) the mean and std of the seconds per run. Table 2: ``columns=COLUMNS``; the
    spread over groups: ``columns=FAIRNESS_KEYS`` without the ``vs`` and ``chosen_hp`` ids and the
    seconds."""
    header = [*ids, "metric", "n_seeds"]
    for c in columns:
        header += [c, f"{c}_std"]
    lines: list[list[Any]] = [header + (["seconds", "seconds_std"] if seconds else [])]
    for r in rows:
        line: list[Any] = [r.title if k == "label" else getattr(r, k) for k in ids]
        line += [metric, r.n_seeds if r.kind == "ours" else ""]
        for j in range(len(columns)):
            line += [repr(float(r.mean[j])), "" if r.std is None else repr(float(r.std[j]))]
        if seconds:
            summary = r.seconds_mean_std()
            line += ["", ""] if summary is None else [repr(summary[0]),
                                                      "" if summary[1] is None else repr(summary[1])]
        lines.append(line)
    pages.write_csv(path, lines)


def write_fairness_csv(rows: Sequence[Row], path: Path, metric: str) -> None:
    """``fairness.csv``: :func:`write_csv` over the spread columns (max − min, low / high, std)."""
    write_csv(rows, path, metric, FAIRNESS_KEYS, ("dataset", "kind", "model", "label", "note"), seconds=False)


FAMILY_COLOURS = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:green", "tab:gray")))


def plot(rows: Sequence[Row], path: Path, metric: str, best: bool = False) -> Any:
    """One panel per column (overall, then each mainstream group), one line per model ("ours" rows,
    in the table's order, top to bottom; one row of panels per dataset): the mean over seeds with its
    std as error bar, coloured by :func:`family`; the model's reference value (the first source) as a
    black bar; the paper's TALL as a dashed line (the value to beat). ``best``: a star on each
    column's best model (of the runs over all users). The height grows with the number of models, so
    labels never overlap. Returns the figure (written to ``path``)."""
    # why: matplotlib is loaded only when a page draws its plot, not by every report
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    datasets = list(dict.fromkeys(r.dataset for r in rows if r.kind == "ours"))
    ours = {ds: [r for r in rows if r.dataset == ds and r.kind == "ours"] for ds in datasets}
    source = next((r.note for r in rows if r.kind == "paper"), "")
    heights = [max(len(ours[ds]), 3) * 0.25 + 0.7 for ds in datasets]
    longest = max(len(r.title) for rs in ours.values() for r in rs)
    fig = pages.new_figure((1.0 + 0.065 * longest + 1.9 * len(COLUMNS), sum(heights) + 1.3))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(len(datasets), len(COLUMNS), sharey="row", squeeze=False,
                        gridspec_kw={"height_ratios": heights})
    used: set[str] = set()
    aim_shown = False
    for i, ds in enumerate(datasets):
        mine = ours[ds]
        y = np.arange(len(mine))
        ref = {r.base: r.mean for r in rows if r.dataset == ds and r.kind == "paper" and r.note == source}
        aim = next((r.mean for r in rows if r.dataset == ds and r.kind == "paper" and r.note == "paper"
                    and r.base == "tall"), None)
        fam = [family(r.base) for r in mine]
        used |= set(fam)
        for j, column in enumerate(COLUMNS):
            ax = axes[i, j]
            mean = np.array([r.mean[j] for r in mine])
            err = np.array([r.std[j] if r.std is not None else 0.0 for r in mine])
            for f in FAMILIES:
                idx = [k for k, g in enumerate(fam) if g == f]
                if idx:
                    ax.errorbar(mean[idx], y[idx], xerr=err[idx], fmt="o", ms=4, color=FAMILY_COLOURS[f],
                                elinewidth=1, capsize=2, zorder=3)
            marks = [(ref[r.base][j], k) for k, r in enumerate(mine)  # a reference of the row's own E only
                     if r.base in ref and r.experts in (None, paper.EXPERTS)]
            if marks:
                ax.scatter(*zip(*marks), marker="|", s=110, color="black", linewidths=1.5, zorder=4)
            if aim is not None:
                ax.axvline(aim[j], color="crimson", ls="--", lw=1, zorder=2)
                aim_shown = True
            whole = [k for k, r in enumerate(mine) if not r.subset]
            if best and whole:
                k = max(whole, key=lambda k: mean[k])
                ax.scatter([mean[k]], [k], marker="*", s=150, facecolor="gold", edgecolor="black",
                           linewidths=0.6, zorder=5)
            ax.set_title(column if len(datasets) == 1 else f"{ds}: {column}", fontsize="medium")
            ax.grid(axis="x", alpha=0.3)
            ax.grid(axis="y", alpha=0.15)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%.3f"))
            ax.tick_params(axis="x", labelsize=7.5)
            if j == 0:
                ax.set_yticks(y, [f"{r.title}  (n={r.n_seeds})" for r in mine], fontsize=8.5)
                ax.set_ylim(len(mine) - 0.5, -0.5)
        axes[i, 0].set_ylabel(ds)
    for ax in axes[-1]:
        ax.set_xlabel(f"test {metric}", fontsize="small")
    handles = [Line2D([], [], marker="o", ls="", color=FAMILY_COLOURS[f], label=f) for f in FAMILIES if f in used]
    if any(r.kind == "paper" for r in rows):
        handles.append(Line2D([], [], marker="|", ls="", color="black", markersize=10, markeredgewidth=1.5,
                              label=f"its {SOURCE_NAMES.get(source, source)} value (same E)"))
    if aim_shown:
        handles.append(Line2D([], [], color="crimson", ls="--", label=f"the paper's TALL (E = {paper.EXPERTS})"))
    if best:
        handles.append(Line2D([], [], marker="*", ls="", markersize=11, markerfacecolor="gold",
                              markeredgecolor="black", label="best of the column"))
    fig.suptitle(f"test {metric} by mainstream group: mean ± std over seeds (n = seeds)", fontsize="medium")
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small", frameon=False)
    pages.save_figure(fig, path)
    return fig
