"""The niche-users page on hand-made run folders (results.json + per_user_test.npz): labels, the
best model per group and its cost, the gaps to the paper's TALL, and the paired Wilcoxon tests
checked against scipy directly."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from tall_jax import niche, paper
from tall_jax.metrics import RankingResult
from tall_jax.protocol import GROUP_NAMES

COLS = ("overall", *GROUP_NAMES)
N_USERS = 100
GROUPS = np.repeat(np.arange(5), N_USERS // 5)


def _write(root: Path, model: str, seed: int, ndcg: np.ndarray, *, variant: str = "", seconds: float = 10.0,
           chosen_hp: dict | None = None, users: np.ndarray | None = None) -> Path:
    """A run folder as the runs write it: results.json (test = the means of ``ndcg``) and
    per_user_test.npz; ``users``: a subset run's evaluated users (evaluated_users.npy)."""
    groups = GROUPS if users is None else GROUPS[users]
    res = RankingResult({"ndcg@20": ndcg}, groups)
    d = root / f"{model}-{variant}" / f"seed{seed}"
    d.mkdir(parents=True)
    results = {"dataset": "ml-1m", "model": model, "seed": seed, "split": "authors", "variant": variant,
               "test": res.to_json(), "valid": res.to_json(), "settings": {}, "wall_time_s": seconds}
    if chosen_hp is not None:
        results.update(grid=[chosen_hp], chosen_hp=chosen_hp)
    if users is not None:
        results["evaluated_users"] = f"seeded random subset of {len(users)} of {N_USERS} users"
        np.save(d / "evaluated_users.npy", users)
    (d / "results.json").write_text(json.dumps(results))
    res.save_per_user(d / "per_user_test.npz")
    return d


def _runs(root: Path) -> dict[str, list[np.ndarray]]:
    """Faithful TALL (2 seeds, slow), TALL E = 10 (2 seeds), EASE (best on the low group, fast),
    ItemKNN (EASE within noise on the low group, below it elsewhere; faster), most popular (poor),
    LFT on 20 users (never best)."""
    rng = np.random.default_rng(0)
    base = 0.25 + 0.05 * GROUPS + 0.05 * rng.random(N_USERS)  # the higher the group, the better
    low = GROUPS == 0
    runs = {
        "tall": [base + 0.01 * rng.random(N_USERS) for _ in range(2)],
        "tall [n_experts=10]": [base + 0.012 * rng.random(N_USERS) for _ in range(2)],
        "ease": [base + np.where(low, 0.05, -0.01) + 0.002 * rng.random(N_USERS)],
        "pop": [base - 0.1],
    }
    k = np.arange(N_USERS)
    wiggle = (-1.0) ** k * (1e-4 + 1e-6 * k)  # as often above EASE as below it, a little more below
    runs["itemknn"] = [runs["ease"][0] + np.where(low, wiggle, -0.02)]
    runs["tall"][0][3] = np.nan  # a user without test items in one seed: the other seed's value counts
    seconds = {"tall": 1000.0, "tall [n_experts=10]": 100.0, "ease": 5.0, "itemknn": 2.0, "pop": 0.5}
    hp = {"ease": {"lambda": 800.0}, "itemknn": {"k": 50}}
    for name, seeds in runs.items():
        model, _, variant = name.partition(" [")
        for seed, values in enumerate(seeds):
            _write(root, model, seed, values, variant=variant.rstrip("]"), seconds=seconds[name],
                   chosen_hp=hp.get(name))
    subset = np.arange(0, N_USERS, 5)  # one user in five: 4 per group
    runs["lft"] = [base[subset] + 0.5]
    _write(root, "lft", 0, runs["lft"][0], variant="users=20", seconds=50.0, users=subset)
    return runs


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _seed_mean(values: list[np.ndarray]) -> np.ndarray:
    return np.nanmean(np.stack(values), axis=0)


def _direct(a: np.ndarray, b: np.ndarray, column: str, users: np.ndarray | None = None) -> tuple[float, int]:
    """scipy's two-sided Wilcoxon of a − b over the column's users (``users``: a's user ids)."""
    ids = np.arange(N_USERS) if users is None else users
    mask = np.isfinite(a) & np.isfinite(b[ids])
    if column != "overall":
        mask &= GROUPS[ids] == GROUP_NAMES.index(column)
    d = a[mask] - b[ids][mask]
    return float(scipy.stats.wilcoxon(d, zero_method="wilcox").pvalue), int(mask.sum())


def test_page_tests_labels_best_lines_and_plot(tmp_path):
    runs = _runs(tmp_path / "runs")
    out = tmp_path / "docs"
    assert niche.main([str(tmp_path / "runs"), "--out", str(out), "--name", "ml1m_niche_users"]) == 0
    for suffix in (".md", ".csv", ".png"):
        assert (out / f"ml1m_niche_users{suffix}").stat().st_size > 0
    rows = _read_csv(out / "ml1m_niche_users.csv")
    ours = {(r["model"], r["column"]): r for r in rows if r["kind"] == "ours"}
    # the Table 2 rows, in its order, with its labels
    labels = list(dict.fromkeys((r["model"], r["label"]) for r in rows if r["kind"] == "ours"))
    assert labels == [("lft [users=20]", "LFT (20 users)"), ("tall", "TALL (E = 100)"),
                      ("tall [n_experts=10]", "TALL (E = 10)"), ("pop", "Most popular"),
                      ("itemknn", "ItemKNN (k = 50)"), ("ease", "EASE (λ = 800)")]
    tall = _seed_mean(runs["tall"])
    assert np.isfinite(tall[3])  # the other seed's value
    for name in ("ease", "itemknn", "pop", "tall [n_experts=10]"):
        mine = _seed_mean(runs[name])
        for c in COLS:
            p, n = _direct(mine, tall, c)
            assert float(ours[name, c]["faithful_p"]) == pytest.approx(p, rel=1e-12), (name, c)
            assert int(ours[name, c]["faithful_users"]) == n
    # the subset run is paired on its own users
    subset = np.arange(0, N_USERS, 5)
    p, n = _direct(runs["lft"][0], tall, "low", subset)
    assert float(ours["lft [users=20]", "low"]["faithful_p"]) == pytest.approx(p) and n == 4
    # the best of each column over the runs of all users: EASE on the low group, else a TALL;
    # LFT (+0.5 everywhere, on 20 users) is never the best
    best = {c: ours["ease", c]["best_model"] for c in COLS}
    assert best["low"] == "ease" and best["high"] in ("tall", "tall [n_experts=10]")
    assert "lft [users=20]" not in best.values()
    p, _ = _direct(_seed_mean(runs["itemknn"]), _seed_mean(runs["ease"]), "low")
    assert float(ours["itemknn", "low"]["best_p"]) == pytest.approx(p, rel=1e-12)
    assert ours["ease", "low"]["best_p"] == ""  # the best itself
    # gap to the paper's TALL, and the reference row
    ref = paper.paper_row("ml-1m", "tall")
    gap = float(ours["ease", "low"]["gap_paper_tall"])
    assert gap == pytest.approx(float(ours["ease", "low"]["mean"]) - ref["low"])
    assert {r["label"] for r in rows if r["kind"] == "paper"} == {"TALL (E = 100, paper)"}
    md = (out / "ml1m_niche_users.md").read_text()
    assert "| TALL (E = 100, paper) |  | 0.3456 | 0.2746 | 0.2903 | 0.3112 | 0.3784 | 0.4734 |  |" in md
    assert "![test ndcg@20 by group, every model](ml1m_niche_users.png)" in md
    assert "averaged over its own seeds" in md
    # the best-model line of the low group: EASE, its cost, and ItemKNN (cheaper, within noise on the low
    # group: its differences there are tiny and symmetric) as the cheap alternative
    (low,) = [line for line in md.splitlines() if line.startswith("- **low**")]
    assert low.startswith("- **low**: EASE (λ = 800) serves it best")
    assert "5 s per run" in low and "paper's TALL (E = 100) 0.2746" in low
    p_low = float(ours["itemknn", "low"]["best_p"])
    assert p_low >= 0.05 and f"Cheapest within noise of it (p ≥ 0.05): ItemKNN (k = 50)" in low
    assert "2 s per run" in low
    ease_tall = float(ours["ease", "low"]["faithful_p"])
    assert f"against faithful TALL (E = 100) {float(ours['ease', 'low']['faithful_diff']):+.4f} per user" in low
    assert ease_tall < 1e-3  # EASE is far above TALL on the low group
    # ItemKNN is 0.02 per user below EASE elsewhere: not within noise of the best, so not named there
    (high,) = [line for line in md.splitlines() if line.startswith("- **high**")]
    assert "ItemKNN" not in high


def test_per_user_averages_each_users_seeds_and_pairs_only_common_users(tmp_path):
    from tall_jax.run_records import collect_runs

    a0 = np.linspace(0.1, 0.9, N_USERS)
    a1 = a0[::-1].copy()
    a1[0] = np.nan
    _write(tmp_path, "tall", 0, a0)
    _write(tmp_path, "tall", 1, a1)
    runs = collect_runs(tmp_path)
    got = niche.per_user(runs, "ndcg@20")
    want = (a0 + a0[::-1]) / 2
    want[0] = a0[0]
    np.testing.assert_allclose(got.values, want)
    np.testing.assert_array_equal(got.groups, GROUPS)
    same = niche.paired(got, got, "low")
    assert same.n_users == N_USERS // 5 and same.diff == 0.0 and np.isnan(same.p)  # no difference: no test


def test_without_faithful_tall_or_per_user_files_the_page_still_says_what_it_can(tmp_path, capsys):
    rng = np.random.default_rng(1)
    d = _write(tmp_path, "ease", 0, 0.3 + 0.1 * rng.random(N_USERS), chosen_hp={"lambda": 100})
    _write(tmp_path, "rp3beta", 0, 0.3 + 0.1 * rng.random(N_USERS), chosen_hp={"alpha": 1, "beta": 0.5})
    (d / "per_user_test.npz").unlink()
    assert niche.main([str(tmp_path), "--no-plot"]) == 0
    captured = capsys.readouterr()
    assert "EASE (λ = 100)" in captured.out and "no paired tests" in captured.err
    md = (tmp_path / "niche_users.md").read_text()
    assert "No faithful TALL (run name `tall`) among the runs" in md
    assert "| RP3beta (α = 1, β = 0.5) |" in md and not (tmp_path / "niche_users.png").exists()
    assert niche.main([str(tmp_path), "--name", "a/b"]) == 2
