"""The results page of the two-tower study: relative gains with paired t-tests over seeds, the AP
tables, the case-study titles and one verdict per claim of the paper (:mod:`tall_jax.two_tower.study`
trains the seeds)."""
from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
from scipy import stats

from tall_jax.pages import table_text
from tall_jax.two_tower.cli import settings_of
from tall_jax.two_tower.metrics import relative_gain

ALPHA = 0.05  # significance level of the paired t-tests
SIZE_BINS = 5  # runs of territories by size on the page (fewer where there are fewer than 10 territories)
NAMES = {"baseline": "baseline", "baseline_up": "baseline + upsampling", "mtl": "MTL",
         "mtl_1head": "MTL, one shared head"}


# ---------------------------------------------------------------------------------------------- statistics


def _day_mean(x_SxDxK: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x_SxDxK, axis=1)


def paired_test(new_S: np.ndarray, ref_S: np.ndarray) -> float:
    """Two-sided paired t-test over seeds (scipy.stats.ttest_rel); NaN with < 2 usable seeds."""
    ok = np.isfinite(new_S) & np.isfinite(ref_S)
    if ok.sum() < 2 or np.allclose(new_S[ok], ref_S[ok]):
        return float("nan")
    return float(stats.ttest_rel(new_S[ok], ref_S[ok]).pvalue)


def one_sample_test(x_S: np.ndarray) -> float:
    """Two-sided one-sample t-test of ``x_S`` (per seed) against 0 (scipy.stats.ttest_1samp); NaN with
    < 2 values or none apart."""
    return float(stats.ttest_1samp(x_S, 0.0).pvalue) if len(x_S) > 1 and np.std(x_S) > 0 else float("nan")


def compare(ap_SxDxK: dict[str, np.ndarray], new: str, ref: str) -> dict[str, np.ndarray]:
    """Per cell: relative gain % (per-day gains averaged over days, paper Table 2), mean ± std over seeds,
    and the paired t-test over seeds of the day-averaged AP."""
    gain_SxK = _day_mean(relative_gain(ap_SxDxK[new], ap_SxDxK[ref]))
    a, b = _day_mean(ap_SxDxK[new]), _day_mean(ap_SxDxK[ref])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"mean": np.nanmean(gain_SxK, 0), "std": np.nanstd(gain_SxK, 0, ddof=1) if len(gain_SxK) > 1 else
                np.zeros(gain_SxK.shape[1]), "p": np.array([paired_test(a[:, k], b[:, k]) for k in range(a.shape[1])]),
                "per_seed": gain_SxK}


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "–"
    return f"{p:.3f}" + (" *" if p < ALPHA else "")


def _pm(m: float, s: float, fmt: str = "{:.4f}") -> str:
    if not np.isfinite(m):
        return "–"
    return f"{fmt.format(m)} ± {fmt.format(s).lstrip('+')}"


def _finite(v) -> np.ndarray:
    """The finite values of ``v`` (a territory or title a seed could not score is NaN)."""
    v = np.asarray(v, np.float64)
    return v[np.isfinite(v)]


def _pm_finite(v, spread: bool) -> str:
    """:func:`_pm` of the mean and, with ``spread``, the std (ddof=1; NaN for one value) over the
    finite values of ``v``; "–" without one."""
    v = _finite(v)
    if v.size == 0:
        return "–"
    return _pm(float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else float("nan")) if spread else 0.0)


def gain_by_size(gain_SxT: np.ndarray, size_T: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """Territories sorted by ``size_T`` (smallest first, ties by index) and cut into ``n_bins`` runs of
    nearly equal numbers of territories; per run: its territories, size range, the per-seed mean over its
    territories of the relative gain ``gain_SxT`` (NaN territories left out), mean ± std over seeds, a
    one-sample t-test over seeds against 0, and how many territories gain on average over seeds."""
    order = np.argsort(size_T, kind="stable")
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for idx in np.array_split(order, n_bins):
            g_S = np.nanmean(gain_SxT[:, idx], axis=1)
            ok = g_S[np.isfinite(g_S)]
            p = one_sample_test(ok)
            t_mean = np.nanmean(gain_SxT[:, idx], axis=0)
            out.append({"territories": idx, "size_lo": float(size_T[idx].min()), "size_hi": float(size_T[idx].max()),
                        "mean": float(np.mean(ok)) if ok.size else float("nan"),
                        "std": float(np.std(ok, ddof=1)) if ok.size > 1 else 0.0, "p": p,
                        "up": int(np.sum(t_mean > 0)), "n": int(np.sum(np.isfinite(t_mean)))})
    return out


# ------------------------------------------------------------------------------------------------- the page


def build_page(runs: list[dict[str, Any]], metas: list[dict[str, Any]], args, command: str) -> str:
    models = list(runs[0]["ap_territory"])
    terr, groups = metas[0]["territories"], metas[0]["groups"]
    tg = np.asarray(metas[0]["territory_group"])
    seeds = [m["seed"] for m in metas]
    stack = {lvl: {m: np.stack([r[f"ap_{lvl}"][m] for r in runs]) for m in models} for lvl in ("territory", "group")}
    stack["overall"] = {m: np.stack([r["ap_all"][m] for r in runs])[:, :, None] for m in models}
    comps = [(a, b) for a, b in (("mtl", "baseline"), ("mtl", "baseline_up"), ("baseline_up", "baseline"),
                                 ("mtl", "mtl_1head"), ("mtl_1head", "baseline_up")) if a in models and b in models]
    res = {lvl: {c: compare(stack[lvl], *c) for c in comps} for lvl in stack}
    # major = the territory with most test positives in its group (per seed, summed over days), minor = the rest
    pos_SxT = np.array([np.sum(r["eval_counts"]["territory_pos_per_day"], axis=0) for r in runs], float)
    pos_T = pos_SxT.mean(0)
    n_days = len(runs[0]["eval_counts"]["territory_pos_per_day"])  # test days (--test-days; 3 by default)
    days_text = "the three test days" if n_days == 3 else f"the {n_days} test days"
    major = np.zeros(len(terr), bool)
    for g in range(len(groups)):
        members = np.nonzero(tg == g)[0]
        major[members[np.argmax(pos_T[members])]] = True

    info0 = metas[0]["info"]
    out = [f"# {args.title or ('Two-tower multi-task study: ' + args.dataset)}", ""]
    out += ["Generated by `" + command + "` (do not edit by hand; rerun to refresh). "
            f"Seeds {', '.join(map(str, seeds))}; each seed draws its own data (synthetic world or ML-1M user "
            "pools and negatives) and its own initialisation. AP = average precision (step-wise, as "
            "scikit-learn). Per cell, AP is averaged over " + days_text + "; a relative gain is "
            "100 (new − ref) / ref per day, averaged over days (paper Table 2), then mean ± sample std over "
            f"seeds; p is a two-sided paired t-test over seeds on the day-averaged AP (scipy.stats.ttest_rel; "
            f"* = p < {ALPHA}).", ""]
    cfg = settings_of(args)
    out += ["## Settings", "", f"- protocol: **{args.protocol}**" + (
        " (the model scored on test day i was trained on days up to i − 1: a first fit on the days before the "
        "first test day, then one daily update per later test day)" if args.protocol == "incremental" else
        " (one model, trained on the days before the first test day, scores every test day)"),
        f"- models: {', '.join(NAMES.get(m, m) for m in models)}; baseline on the plain random sample, the others on "
        "the upsampled data (random sample + a disjoint sample of active users)",
        f"- training: width d = {args.width}, batch {args.batch_size}, Adam lr {args.lr}, first fit ≤ {args.epochs} "
        f"epochs, daily updates ≤ {args.inc_epochs} epochs, early stopping on the held-out validation users of the "
        f"latest training day (patience {args.patience})"
        + (f"; weight decay {args.weight_decay} on the shared towers" if args.weight_decay else "")
        + (f"; head dropout {args.head_dropout}" if args.head_dropout else "")
        + (f"; head rank {args.head_rank}" if args.head_rank else ""),
        f"- data: {json.dumps(cfg['data'])}",
        "- wall time per seed: " + ", ".join(f"{m['seconds']:.0f} s" for m in metas) + " (2 shared CPU cores)", ""]
    if "days" in info0 and isinstance(info0["days"], list):
        rows = []
        for d in info0["days"]:
            rows.append([str(d["day"]), "test" if d["is_test"] else "train", f"{d['train_plain']['n_pos']:,}",
                         f"{d['train_upsampled']['n_pos']:,}", f"{d['valid']['n_pos']:,}", f"{d['test']['n_pos']:,}"])
        out += [f"Days of seed {seeds[0]} (positives per set; training, validation and test users are disjoint):", "",
                table_text(["day", "role", "train plain", "train upsampled", "validation", "test"], rows), ""]

    def ap_rows(level: str, names: list[str], extra=None) -> list[list[str]]:
        rows = []
        for k, n in enumerate(names):
            cells = [n] + (extra(k) if extra else [])
            for m in models:
                v = _day_mean(stack[level][m])[:, k]
                cells.append(_pm_finite(v, spread=len(v) > 1))
            rows.append(cells)
        return rows

    mheads = [NAMES.get(m, m) for m in models]
    out += ["## Average precision", "", "Overall (all test examples of a day):", "",
            table_text(["", *mheads], ap_rows("overall", ["all"])), "", "Per territory group:", "",
            table_text(["group", *mheads], ap_rows("group", groups)), "", "Per territory (size = mean test positives "
            "over " + days_text + "; major = the largest territory of its group):", "",
            table_text(["territory", "group", "size", "kind", *mheads],
                   ap_rows("territory", terr, lambda k: [groups[tg[k]], f"{pos_T[k] / n_days:.0f}",
                                                         "major" if major[k] else "minor"])), ""]
    cheads = [f"{NAMES[a]} vs {NAMES[b]}" for a, b in comps]
    size_comps = [c for c in comps if c[0] == "mtl" and c[1] != "mtl_1head"]
    n_bins = min(SIZE_BINS, len(terr) // 2)
    if n_bins >= 2 and size_comps:  # many territories: the gain as a function of territory size
        bins = {c: gain_by_size(res["territory"][c]["per_seed"], pos_T / n_days, n_bins) for c in size_comps}
        rows = []
        for b, first in enumerate(bins[size_comps[0]]):
            cells = [f"{b + 1}", f"{len(first['territories'])}", f"{first['size_lo']:.0f}–{first['size_hi']:.0f}"]
            for c in size_comps:
                r = bins[c][b]
                cells.append(f"{_pm(r['mean'], r['std'], '{:+.2f}')} (p {_fmt_p(r['p'])}; up in {r['up']}/{r['n']})")
            rows.append(cells)
        size_section = ["### Relative AP gain % by territory size", "",
                        f"Territories sorted by size (mean test positives per test day) and cut into {n_bins} runs "
                        "of nearly equal numbers of territories, smallest first; per run, the per-seed mean of the "
                        "territories' relative gains, then mean ± std over seeds, a one-sample t-test over seeds "
                        "against 0, and in how many territories the gain (mean over seeds) is positive.", "",
                        table_text(["size run", "territories", "test positives / day",
                                    *[cheads[comps.index(c)] for c in size_comps]], rows), ""]
    else:
        size_section = []
    for level, names in (("overall", ["all"]), ("group", groups), ("territory", terr)):
        rows = []
        for k, n in enumerate(names):
            cells = [n]
            for c in comps:
                r = res[level][c]
                cells.append(f"{_pm(r['mean'][k], r['std'][k], '{:+.2f}')} (p {_fmt_p(r['p'][k])})")
            rows.append(cells)
        title = {"overall": "Relative AP gain %, overall", "group": "Relative AP gain % per group",
                 "territory": "Relative AP gain % per territory (paper Table 2)"}[level]
        out += [f"## {title}" if level == "overall" else f"### {title}", "", table_text(["", *cheads], rows), ""]
        if level == "group":
            out += size_section

    # case study
    cases = metas[0]["case_titles"]
    t_ap = {m: np.stack([r["title_ap"][m] for r in runs]) for m in models}
    t_mean = {m: np.stack([r["title_mean"][m] for r in runs]) for m in models}
    t_hist = {m: np.mean([r["title_hist"][m] for r in runs], axis=0) for m in models}
    if not cases:  # your own logs: no case-study titles are picked
        out += ["## Case study: local and global titles (paper §4.4, Table 3, Fig. 2)", "",
                "Not run on this data: case-study titles are picked on the synthetic and ML-1M data only.", ""]
    else:
        out += ["## Case study: local and global titles (paper §4.4, Table 3, Fig. 2)", "",
                "Rule (per seed): in two territories of different groups, the local title with the most test "
                "positives (synthetic: the titles only that territory has; ML-1M: highest regional lift in the "
                "training data, at least 5 test positives) and the global title whose test-positive count in the "
                "same territory is closest to it (comparable positive counts). Population: every test user of the "
                "territory who has not seen the title before, scored by the model of the user's test day. "
                f"Titles of seed {seeds[0]}: " + "; ".join(
                    f"{c['name']}: title {c['title']}" + (f" (MovieID {c['movie_id']})" if "movie_id" in c else "")
                    + (f", {c['n_test_pos']} test positives" if "n_test_pos" in c else "") for c in cases) + ".", ""]
        rows = []
        for c_i, c in enumerate(cases):
            cells = [c["name"]]
            for m in models:
                cells.append(_pm_finite(t_ap[m][:, c_i], spread=len(runs) > 1))
            for m in models:
                finite = _finite(t_mean[m][:, c_i])
                cells.append(f"{finite.mean():.4f}" if finite.size else "–")
            rows.append(cells)
        out += ["Title-level AP (mean ± std over seeds) and mean predicted propensity:", "",
                table_text(["title", *[f"AP {h}" for h in mheads], *[f"mean score {h}" for h in mheads]], rows), ""]
        bins = t_hist[models[0]].shape[1]
        merge = 2 if bins % 2 == 0 else 1
        for c_i, c in enumerate(cases):
            rows = []
            for b in range(0, bins, merge):
                lo, hi = b / bins, (b + merge) / bins
                cells = [f"{lo:.1f}–{hi:.1f}"] + [f"{t_hist[m][c_i, b:b + merge].sum():.3f}" for m in models]
                rows.append(cells)
            out += [f"Score histogram, {c['name']} (share of users per score bin, mean over seeds):", "",
                    table_text(["score", *mheads], rows), ""]

    out += ["## The paper's claims on this data", ""]
    out += claims(res, major, t_mean, t_ap, cases, models, runs)
    return "\n".join(out) + "\n"


def _verdict(overall: dict[str, np.ndarray], terr: dict[str, np.ndarray]) -> tuple[str, str]:
    g, p = overall["mean"][0], overall["p"][0]
    n_pos = int(np.sum(terr["mean"] > 0))
    n = int(np.sum(np.isfinite(terr["mean"])))
    sig_up = int(np.sum((terr["mean"] > 0) & (terr["p"] < ALPHA)))
    sig_down = int(np.sum((terr["mean"] < 0) & (terr["p"] < ALPHA)))
    facts = (f"overall AP gain {g:+.2f}% (p {_fmt_p(p)}); positive mean gain in {n_pos} of {n} territories "
             f"({sig_up} significantly up, {sig_down} significantly down)")
    if g > 0 and p < ALPHA and n_pos > n / 2:
        return "**holds**", facts
    if g <= 0 or n_pos <= n / 2:
        return "**does not hold**", facts
    return "**not shown** (positive, but not significant over these seeds)", facts


def claims(res, major, t_mean, t_ap, cases, models, runs) -> list[str]:
    out = []
    for new, ref, claim in (("mtl", "baseline", "MTL beats the single global model (paper Table 2, first block)"),
                            ("mtl", "baseline_up", "MTL beats the global model trained on the same upsampled data "
                                                   "(Table 2, second block: the gain is not only the upsampling)"),
                            ("baseline_up", "baseline", "upsampling active users improves the baseline in a good "
                                                        "number of territories (§4.3)")):
        if (new, ref) not in res["overall"]:
            continue
        v, facts = _verdict(res["overall"][(new, ref)], res["territory"][(new, ref)])
        out += [f"**{claim}.** {v}: {facts}.", ""]
    if ("mtl", "mtl_1head") in res["overall"]:
        v, facts = _verdict(res["overall"][("mtl", "mtl_1head")], res["territory"][("mtl", "mtl_1head")])
        out += ["**Control: per-group heads, not the extra depth, make the difference.** MTL against the same "
                f"network with one task block shared by every group: {v}: {facts}.", ""]
    for new, ref in (("mtl", "baseline"), ("mtl", "baseline_up")):
        if (new, ref) not in res["territory"]:
            continue
        g_SxT = res["territory"][(new, ref)]["per_seed"]
        if major.all():
            out += [f"**Minor territories gain more than major ones ({NAMES[new]} vs {NAMES[ref]}).** Not testable "
                    "on this data: every group has one territory, so there is no minor one.", ""]
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            diff_S = np.nanmean(g_SxT[:, ~major], 1) - np.nanmean(g_SxT[:, major], 1)
        p = one_sample_test(diff_S)
        d = float(np.mean(diff_S))
        verdict = "**holds**" if d > 0 and p < ALPHA else ("**does not hold**" if d <= 0 else "**not shown**")
        out += [f"**Minor territories gain more than major ones ({NAMES[new]} vs {NAMES[ref]}; the paper's "
                f"motivation: data-poor territories borrow from data-rich ones).** {verdict}: mean gain "
                f"{np.nanmean(g_SxT[:, ~major]):+.2f}% in minor vs {np.nanmean(g_SxT[:, major]):+.2f}% in major "
                f"territories; minor − major {d:+.2f} points per seed (one-sample t-test over seeds p {_fmt_p(p)}).", ""]
    # local vs global titles
    if cases and "mtl" in models:
        kinds = np.array([c["kind"] for c in cases])
        parts = []
        ok_all = True
        for kind, want in (("local", +1), ("global", -1)):
            idx = np.nonzero(kinds == kind)[0]
            for ref in ("baseline", "baseline_up"):
                if ref not in models:
                    continue
                d_S = np.mean(t_mean["mtl"][:, idx] - t_mean[ref][:, idx], axis=1)  # per seed, over such titles
                p = one_sample_test(d_S)
                moved = "up" if np.mean(d_S) > 0 else "down"
                good = np.sign(np.mean(d_S)) == want and np.isfinite(p) and p < ALPHA
                ok_all &= bool(good)
                parts.append(f"{kind} titles vs {NAMES[ref]}: MTL's mean score {moved} by {np.mean(d_S):+.4f} "
                             f"(p {_fmt_p(p)})")
        ap_gain = {k: np.nanmean(100 * (t_ap["mtl"][:, kinds == k] - t_ap["baseline"][:, kinds == k])
                                 / t_ap["baseline"][:, kinds == k]) for k in ("local", "global")}
        verdict = "**holds**" if ok_all else "**does not hold** (not in every comparison)"
        out += ["**MTL moves local titles' scores up and global titles' scores down (paper §4.4, Fig. 2).** "
                f"{verdict}: " + "; ".join(parts) + f". Title-level AP gain of MTL over the baseline: local "
                f"{ap_gain['local']:+.1f}%, global {ap_gain['global']:+.1f}% (paper Table 3: +3.8 to +6.5% local, "
                "+4.3 to +36.2% global). The case titles have few test positives, so title-level AP is noisy.", ""]
    return out


