"""Seed aggregation, Table-2 style gain tables, JSON-ready summaries and text tables for the two-tower runs."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tall_jax.two_tower.experiment import COMPARISONS
from tall_jax.two_tower.metrics import AP_DEFINITION, format_table, gain_table


def _mean_std(x_SxK: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        std = np.nanstd(x_SxK, axis=0, ddof=1) if x_SxK.shape[0] > 1 else np.zeros(x_SxK.shape[1:])
        return np.nanmean(x_SxK, axis=0), std


def summarise(runs: list[dict[str, Any]], territory_names: list[str], group_names: list[str],
              case_titles: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate ``run_seed`` outputs over seeds: AP mean/std per territory, group, overall and case title
    (AP averaged over test days first), and relative gains (per-day gains averaged over days, then
    mean ± std over seeds; paper Table 2 / Table 3)."""
    models = list(runs[0]["ap_territory"])
    comps = [c for c in COMPARISONS if c[0] in models and c[1] in models]
    if "mtl_1head" in models:
        comps.append(("mtl", "mtl_1head"))
    out: dict[str, Any] = {"models": models, "ap_definition": AP_DEFINITION, "territories": territory_names,
                           "groups": group_names, "case_titles": case_titles, "ap": {}, "gain": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for level, names in (("territory", territory_names), ("group", group_names)):
            stack = {m: np.stack([r[f"ap_{level}"][m] for r in runs]) for m in models}  # [S, D, K]
            out["ap"][level] = {m: dict(zip(("mean", "std"), _mean_std(np.nanmean(v, axis=1)))) for m, v in stack.items()}
            out["gain"][level] = gain_table(stack, comps)
        overall = {m: np.stack([r["ap_all"][m] for r in runs])[:, :, None] for m in models}
        out["ap"]["overall"] = {m: dict(zip(("mean", "std"), _mean_std(np.nanmean(v, axis=1)))) for m, v in overall.items()}
        out["gain"]["overall"] = gain_table(overall, comps)
        titles = {m: np.stack([r["title_ap"][m] for r in runs])[:, None, :] for m in models}  # one "day"
        out["ap"]["title"] = {m: dict(zip(("mean", "std"), _mean_std(v[:, 0]))) for m, v in titles.items()}
        out["gain"]["title"] = gain_table(titles, comps)
        out["title_hist"] = {m: np.mean([r["title_hist"][m] for r in runs], axis=0) for m in models}
    out["losses"] = [r["losses"] for r in runs]
    out["eval_counts"] = [r["eval_counts"] for r in runs]
    return out


def text_report(summary: dict[str, Any]) -> str:
    """The per-group / per-territory AP tables and the relative-gain tables (mean ± std over seeds)."""
    parts = []
    for level in ("group", "territory"):
        names = summary["groups"] if level == "group" else summary["territories"]
        ap = summary["ap"][level]
        parts.append(f"AP per {level} (mean ± std over seeds)\n"
                     + format_table(names, {m: (v["mean"], v["std"]) for m, v in ap.items()}))
        gains = summary["gain"][level]
        parts.append(f"relative AP gain % per {level}\n"
                     + format_table(names, {k: (v["mean"], v["std"]) for k, v in gains.items()}, fmt="{:+.2f}"))
    ov = summary["ap"]["overall"]
    parts.append("overall AP: " + ", ".join(f"{m} {v['mean'][0]:.4f} ± {v['std'][0]:.4f}" for m, v in ov.items()))
    titles = [c["name"] for c in summary["case_titles"]]
    if titles:
        parts.append("title-level AP\n" + format_table(titles, {m: (v["mean"], v["std"]) for m, v in summary["ap"]["title"].items()}))
        parts.append("title-level relative gain %\n" + format_table(
            titles, {k: (v["mean"], v["std"]) for k, v in summary["gain"]["title"].items()}, fmt="{:+.2f}"))
    return "\n\n".join(parts)
