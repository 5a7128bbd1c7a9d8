"""A study's page: Markdown tables, one CSV row per run, and a bar plot of NDCG@20 per group."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tall_jax.pages import new_figure, p_value, produced_by, save_figure, table, write_markdown
from tall_jax.pages import write_csv as write_csv_lines
from tall_jax.study.analysis import COLUMNS, RunSummary, aim, commits, paired_tests
from tall_jax.study.analysis import mean_std_text as _ms
from tall_jax.study.dynamics import JUMP_FACTOR, jump_epoch, jump_table, plot_curves
from tall_jax.study.variants import Variant

ALPHA = 0.05


def _p(p: float) -> str:
    return p_value(p, ALPHA)


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _contenders(variants: list[Variant], runs: dict[str, list[RunSummary]], reference: str,
                rival: str) -> list[str]:
    """The variants with finished runs that the aim is measured on (all but the two it compares with;
    none unless both of those have runs)."""
    if not (runs.get(reference) and runs.get(rival)):
        return []
    return [v.name for v in variants if v.name not in (reference, rival) and runs.get(v.name)]


def summary_lines(variants: list[Variant], runs: dict[str, list[RunSummary]], reference: str,
                  rival: str) -> list[str]:
    """The page's findings in a few bullet points, each read off one of the tables below."""
    multi = [v.name for v in variants if len(runs.get(v.name, [])) > 1]
    lines = []
    if multi:
        for col in ("overall", "low"):
            top = max(multi, key=lambda n: np.mean([r.best[col] for r in runs[n]]))
            lines.append(f"- Highest mean test NDCG@20 ({col}, variants with 2+ seeds): `{top}`, "
                         f"{_ms([r.best[col] for r in runs[top]])} over {len(runs[top])} seeds.")
    apart: dict[str, list[str]] = {"above": [], "below": []}
    for name in multi:
        tests = paired_tests(runs[name], runs.get(reference, [])) if name != reference else []
        if tests and tests[0].p_seeds < ALPHA:
            apart["above" if tests[0].mean_diff > 0 else "below"].append(f"`{name}` ({tests[0].mean_diff:+.4f})")
    if runs.get(reference):
        lines.append(f"- Apart from `{reference}` over seeds (paired t-test on the overall score, p < {ALPHA:g}): "
                     f"above: {', '.join(apart['above']) or 'none'}; below: {', '.join(apart['below']) or 'none'}.")
    if _contenders(variants, runs, reference, rival):
        met = [n for n in _contenders(variants, runs, reference, rival)
               if (a := aim(runs[n], runs[reference], runs[rival])) is not None and a.met]
        lines.append(f"- Meets the improved preset's aim: {', '.join(f'`{n}`' for n in met)}." if met else
                     "- No variant meets the improved preset's aim (its table says which part each misses).")
    jumps = [(r, j) for v in variants for r in runs.get(v.name, []) if (j := jump_epoch(r)) is not None]
    if jumps:
        lines.append(f"- The weighted training loss jumps (above {JUMP_FACTOR:g} times its lowest since the gap) "
                     f"in {len(jumps)} runs of {len({r.variant for r, _ in jumps})} variants, at epoch "
                     f"{min(j for _, j in jumps)}-{max(j for _, j in jumps)}; their best epoch is at or after "
                     f"the jump in {sum(r.best_epoch >= j for r, j in jumps)} of them.")
    return lines


def results_table(variants: list[Variant], runs: dict[str, list[RunSummary]], key: str) -> list[str]:
    rows = [[v.name, str(len(rs)), *(_ms([getattr(r, key)[c] for r in rs]) for c in COLUMNS)]
            for v in variants if (rs := runs.get(v.name, []))]
    return table(["variant", "seeds", *COLUMNS], rows, "lr" + "r" * len(COLUMNS))


def paired_table(variants: list[Variant], runs: dict[str, list[RunSummary]], reference: str) -> list[str]:
    rows = []
    ref = runs.get(reference, [])
    for v in variants:
        if v.name == reference or not runs.get(v.name) or not ref:
            continue
        tests = paired_tests(runs[v.name], ref)
        if not tests:
            continue
        cells = [f"{t.mean_diff:+.4f} ({_p(t.p_users)}; {_p(t.p_seeds)})" for t in tests]
        rows.append([v.name, str(tests[0].n_seeds), *cells])
    return table(["variant", "seeds", *COLUMNS], rows, "lr" + "r" * len(COLUMNS))


def aim_table(variants: list[Variant], runs: dict[str, list[RunSummary]], reference: str,
              rival: str) -> list[str]:
    header = ["variant", "seeds", f"columns not above `{reference}`", f"low minus `{rival}`",
              "std over seeds (overall)", f"`{rival}`'s std", "F-test p (equal spreads)", "meets the aim"]
    rows = []
    for name in _contenders(variants, runs, reference, rival):
        a = aim(runs[name], runs.get(reference, []), runs.get(rival, []))
        if a is None:
            continue
        spread = (f"{a.spread:.4f}", f"{a.rival_spread:.4f}") if a.n_seeds > 1 else ("–", "–")
        verdict = "yes" if a.met else ("needs 2+ seeds" if a.n_seeds < 2 else "no")
        below = "all" if len(a.below_reference) == len(COLUMNS) else ", ".join(a.below_reference) or "none"
        rows.append([name, str(a.n_seeds), below, f"{a.low_vs_rival:+.4f}", spread[0], spread[1],
                     _p(a.spread_p), verdict])
    return table(header, rows, "lrlrrrrl")


def selection_table(variants: list[Variant], runs: dict[str, list[RunSummary]]) -> list[str]:
    header = ["variant", "best epoch", "smoothed epoch", "overall: best", "overall: smoothed", "low: best",
              "low: smoothed", "high: best", "high: smoothed"]
    rows = []
    for v in variants:
        rs = runs.get(v.name, [])
        if not rs:
            continue
        cells = [_ms([r.best_epoch for r in rs], 1), _ms([r.smoothed_epoch for r in rs], 1)]
        for col in ("overall", "low", "high"):
            cells += [_ms([r.best[col] for r in rs]), _ms([r.smoothed[col] for r in rs])]
        rows.append([v.name, *cells])
    return table(header, rows, "l" + "r" * 8)


def diagnostics_table(variants: list[Variant], runs: dict[str, list[RunSummary]], n_experts: int) -> list[str]:
    header = ["variant", f"gate entropy (log E = {math.log(n_experts):.4f})", "max w", "std w",
              "Spearman(abs(w-1), abs V_u)", "epochs run", "median s per epoch"]
    rows = []
    for v in variants:
        rs = runs.get(v.name, [])
        if not rs:
            continue
        ent = [r.gate_entropy for r in rs if r.gate_entropy is not None]
        w = [r.weights for r in rs if r.weights]
        cells = [_ms(ent, 5) if ent else "–",
                 _ms([x["w_max"] for x in w], 1) if w else "–",
                 _ms([x["w_std"] for x in w], 2) if w else "–",
                 _ms([x["spearman_n_valid"] for x in w if not math.isnan(x["spearman_n_valid"])], 2) if w else "–",
                 _ms([r.epochs_run for r in rs], 0), _ms([r.epoch_seconds for r in rs], 1)]
        rows.append([v.name, *cells])
    return table(header, rows, "l" + "r" * 6)


def write_csv(path: Path, runs: dict[str, list[RunSummary]]) -> None:
    fields = (["variant", "seed", "best_epoch", "smoothed_epoch", "epochs_run", "epoch_seconds_median", "valid_score",
               "gate_entropy", "w_max", "w_std"] + [f"best_{c}" for c in COLUMNS] + [f"smoothed_{c}" for c in COLUMNS]
              + ["commit"])
    write_csv_lines(path, [fields] + [
        [r.variant, r.seed, r.best_epoch, r.smoothed_epoch, r.epochs_run, f"{r.epoch_seconds:.2f}",
         f"{r.valid_score:.6f}", _num(r.gate_entropy, ".6f"), _num(r.weights.get("w_max"), ".4f"),
         _num(r.weights.get("w_std"), ".4f")]
        + [f"{r.best[c]:.6f}" for c in COLUMNS] + [f"{r.smoothed[c]:.6f}" for c in COLUMNS] + [r.commit or ""]
        for rs in runs.values() for r in rs])


def plot(path: Path, variants: list[Variant], runs: dict[str, list[RunSummary]], title: str,
         control: str = "multvae") -> Path | None:
    """One panel per group, one horizontal bar per variant: its mean test NDCG@20 minus the control's
    (one MultVAE), with the variant's std over seeds; the gain is what a reader compares across groups."""
    shown = [v.name for v in variants if runs.get(v.name) and v.name != control]
    if not shown or not runs.get(control):
        return None
    base = np.mean([[r.best[c] for c in COLUMNS] for r in runs[control]], axis=0)
    gain = np.array([np.mean([[r.best[c] for c in COLUMNS] for r in runs[n]], axis=0) - base for n in shown])
    err = np.array([np.std([[r.best[c] for c in COLUMNS] for r in runs[n]], axis=0, ddof=1)
                    if len(runs[n]) > 1 else np.zeros(len(COLUMNS)) for n in shown])
    fig = new_figure((2.3 * len(COLUMNS) + 1.8, 0.32 * len(shown) + 1.4))
    axes = fig.subplots(1, len(COLUMNS), sharey=True, sharex=True)
    y = np.arange(len(shown))[::-1]  # the study's order from the top
    for c, (ax, column) in enumerate(zip(axes, COLUMNS)):
        ax.barh(y, gain[:, c], xerr=err[:, c], color=np.where(gain[:, c] < 0, "tab:red", "tab:blue"),
                capsize=1.5, height=0.7)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_title(column, fontsize="small")
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize="x-small")
    axes[0].set_yticks(y, [f"{n} ({len(runs[n])})" for n in shown])
    fig.supxlabel(f"test NDCG@20 minus {control}'s (seeds in brackets)", fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


def _code_line(runs: dict[str, list[RunSummary]]) -> str:
    """Which commits finished the runs: a study spans sessions and code changes of the same maths."""
    def name(commit: str | None) -> str:
        if commit is None:
            return "before the record"
        return commit[:7] + (" with uncommitted changes" if commit.endswith("+dirty") else "")
    counts = "; ".join(f"{name(c)}: {n}" for c, n in commits(runs).items())
    return (f"Code: runs finished by each commit ({counts}); each run's `results.json` records its "
            "commit, and the CSV lists it.")


def write_page(out: Path, *, study: str, command: str, dataset: str, n_experts: int,
               seeds: list[int], variants: list[Variant], runs: dict[str, list[RunSummary]],
               reference: str = "tall", rival: str = "lmoe", environment: dict[str, Any] | None = None,
               n_planned: int | None = None, curves: Sequence[str] = ()) -> list[Path]:
    """Write ``<out>.md``, ``<out>.csv`` and ``<out>.png`` (and ``<out>_curves.png`` of the variants
    named in ``curves``); returns their paths. Differences are to the ``reference`` variant; the
    ablations' aim is also measured against the ``rival``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    main = [v for v in variants if not v.tune]  # the sweeps have their own table, off the plot's scale
    png = plot(out.with_suffix(".png"), main, runs, f"{dataset}, E = {n_experts}: gain over one MultVAE per group (mean, std over seeds)")
    write_csv(out.with_suffix(".csv"), runs)
    n_done = sum(len(r) for r in runs.values())
    # the sweeps and the LMoE they sweep around (a routing gate at its multi-seed temperature)
    tuned = [v for v in variants if v.tune or (v.model == "lmoe" and "gate_temperature" in dict(v.overrides))]
    lines = [f"# {study.capitalize()} study: {dataset}, E = {n_experts}", "",
             produced_by(command) + f" ({n_done}"
             f"{f' of {n_planned} planned' if n_planned else ''} runs finished; seeds: "
             f"{' '.join(map(str, seeds))}). Rerun the command to resume it and to refresh this page.", ""]
    if environment:
        lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in environment.items()) + ".", ""]
    lines += [_code_line(runs), ""]
    summary = summary_lines(main, runs, reference, rival) if study == "ablations" else []
    if summary:
        lines += ["## Summary", ""] + summary + [""]
    described = []
    for v in variants:
        changes = ", ".join(f"{k}={val}" for k, val in v.overrides) or "(preset)"
        shared = f" (epochs 1..gap are `{v.trunk}`'s: it starts from that run's checkpoint)" if v.trunk else ""
        once = " (first seed only)" if v.side else ""
        described.append([v.name, v.model, changes, f"{v.about}{shared}{once}"])
    lines += ["## Variants", "", *table(["variant", "model", "changes", "what it asks"], described)]
    lines += ["", "## Test NDCG@20 per group (best-validation epoch), mean ± std over seeds", ""]
    lines += results_table(main, runs, "best")
    lines += ["", f"## Paired difference to `{reference}` (test NDCG@20)", "",
              "Each cell: the mean over users of the per-user difference (averaged over the seeds both "
              "variants have), then in brackets the p-value of the Wilcoxon signed-rank test over the group's "
              "users and of the paired t-test over seeds; * marks p < 0.05. Not corrected for the number of "
              "variants compared.", ""]
    lines += paired_table(main, runs, reference)
    if study == "ablations" and _contenders(main, runs, reference, rival):
        lines += ["", "## Against the improved preset's aim", "",
                  f"The aim: a mean above `{reference}`'s in every column, ahead of `{rival}` on the low group, "
                  f"and a seed spread (std over seeds of the overall score) no larger than `{rival}`'s; "
                  "over the seeds the three runs share. The F-test's p-value says how much the two "
                  "spreads' order can be trusted with this many seeds (it assumes independent seeds; "
                  "runs started from one trunk share their first epochs).", ""]
        lines += aim_table(main, runs, reference, rival)
    lines += ["", "## Model selection: best epoch vs smoothed", "",
              "Best: the epoch with the best validation score (the authors' rule). Smoothed: the centre of the "
              f"best {3}-epoch moving average of the validation score; its test NDCG@20 comes from the run's "
              "per-epoch history. A large gap means the best epoch was a validation spike.", ""]
    lines += selection_table(main, runs)
    jumps = jump_table([v.name for v in main], runs)
    curves_png = None
    if len(jumps) > 2:
        curves_png = plot_curves(out.with_name(out.name + "_curves.png"), list(curves), runs,
                                 f"{dataset}, E = {n_experts}: per epoch, mean over seeds")
        lines += ["", "## After the gap: the weights feed back on the training", "",
                  "The loss-change weights favour the users whose validation loss fell fastest over the "
                  "window, and a larger weight makes that loss fall faster still. Jump: the first epoch "
                  f"after the gap T whose weighted training loss (what each step minimises) exceeds "
                  f"{JUMP_FACTOR:g} times its lowest value since T. The variants without adaptive weights are "
                  "the control. Each cell is the mean ± std over the runs that jump; the best epoch's "
                  "column is over all runs.", ""]
        lines += jumps
        if curves_png:
            lines += ["", f"![test NDCG@20, weighted training loss and the weights' spread per epoch]({curves_png.name})"]
    lines += ["", "## Gate and weights at the best epoch", "",
              "Gate entropy: mean over users of -Σ_k g_uk log g_uk (log E for a uniform gate). Weights: the "
              "adaptive weights of the best epoch (max, std over users, Spearman correlation of |w_u - 1| "
              "with the number of validation items). Seconds per epoch: the median of its epochs' times "
              "(training and evaluation; a variant started from its trunk's epoch-T checkpoint counts the "
              "trunk's first T epochs), with `--jobs` runs side by side on a machine that may be doing "
              "other work (the median ignores an epoch stretched by a paused run): a cost, not a benchmark.", ""]
    lines += diagnostics_table(main, runs, n_experts)
    if any(runs.get(v.name) for v in tuned):
        lines += ["", "## Routing-gate temperature (first seed)", "",
                  "The `route` gate weighs the experts by their loss on the user's validation items, and the "
                  "validation metric that early stopping and this sweep read is computed on those same items: "
                  "a sharper gate can look good on validation while the test score falls, so compare the "
                  "test column. The `route_train` gate reads the train items only, so its validation column "
                  "is a fair choice of tau.", ""]
        swept = [[f"{v.name} (seed {r.seed})", str(dict(v.overrides).get("gate_temperature", "")),
                  f"{r.valid_score:.4f}", _num(r.gate_entropy, ".4f"), f"{r.best['overall']:.4f}"]
                 for v in tuned for r in runs.get(v.name, [])[:1]]
        lines += table(["variant", "tau", "validation score (mean NDCG@{1,5,10,20})", "gate entropy",
                        "test NDCG@20"], swept, "lrrrr")
    lines += ["", f"![gain in NDCG@20 over MultVAE per group]({png.name})" if png else "", "",
              f"Per-run values: [{out.with_suffix('.csv').name}]({out.with_suffix('.csv').name}).", ""]
    write_markdown(out.with_suffix(".md"), "\n".join(lines))
    return [p for p in (out.with_suffix(".md"), out.with_suffix(".csv"), png, curves_png) if p is not None]
