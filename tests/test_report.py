"""The Table-2 report tool on hand-made runs, and the transcription of the paper's numbers."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tall_jax import paper, report, run_records
from tall_jax.metrics import RankingResult
from tall_jax.protocol import GROUP_NAMES

COLS = ("overall", *GROUP_NAMES)


def _write_run(root: Path, model: str, seed: int, values: tuple[float, ...], dataset: str = "ml-1m") -> None:
    """A results.json whose test NDCG@20 is ``values`` = (overall, low, ..., high)."""
    test = {
        "overall": {"ndcg@20": values[0], "recall@20": 0.5},
        "groups": {g: {"ndcg@20": v, "recall@20": 0.5} for g, v in zip(GROUP_NAMES, values[1:])},
        "group_sizes": {g: 10 for g in GROUP_NAMES},
        "n_users": 50,
        "n_undefined": 0,
    }
    d = root / f"{dataset}_{model}_s{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "dataset": dataset, "model": model, "seed": seed, "split": "authors", "test": test,
        "settings": {}, "wall_time_s": 1.0 + seed,
        "history": [{"epoch": e, "seconds": 10.0 * (seed + 1)} for e in (1, 2, 3)]}))


RUNS = {  # model -> two seeds' rows (overall, low, med-low, medium, med-high, high)
    "tall": ((0.40, 0.30, 0.35, 0.40, 0.45, 0.50), (0.42, 0.32, 0.33, 0.42, 0.47, 0.56)),
    "multvae": ((0.30, 0.20, 0.25, 0.30, 0.35, 0.40), (0.34, 0.22, 0.29, 0.34, 0.37, 0.48)),
    "lft": ((0.36, 0.26, 0.31, 0.36, 0.41, 0.46), (0.36, 0.28, 0.31, 0.36, 0.39, 0.46)),
}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _hand_std(a: float, b: float) -> float:
    m = (a + b) / 2
    return math.sqrt(((a - m) ** 2 + (b - m) ** 2) / (2 - 1))


def test_two_seed_table(tmp_path):
    runs = tmp_path / "runs"
    for model, rows in RUNS.items():
        for seed, vals in enumerate(rows):
            _write_run(runs, model, seed, vals)
    _write_run(runs, "zeta", 0, (0.1,) * 6)  # an unknown model with a single seed
    out = tmp_path / "out"
    assert report.main([str(runs), "--out", str(out)]) == 0
    for name in ("table2.md", "table2.csv", "table2.png"):
        assert (out / name).stat().st_size > 0
    rows = _read_csv(out / "table2.csv")
    ours = {r["model"]: r for r in rows if r["kind"] == "ours"}
    assert list(ours) == ["multvae", "lft", "tall", "zeta"]  # paper order, then others alphabetically
    for model, (a, b) in RUNS.items():
        assert ours[model]["n_seeds"] == "2"
        for j, c in enumerate(COLS):
            assert float(ours[model][c]) == pytest.approx((a[j] + b[j]) / 2, rel=1e-12, abs=1e-15)
            assert float(ours[model][f"{c}_std"]) == pytest.approx(_hand_std(a[j], b[j]), rel=1e-9, abs=1e-15)
    assert ours["zeta"]["n_seeds"] == "1" and ours["zeta"]["overall_std"] == ""
    # seconds per run: the sum of each seed's epoch times (30 s and 60 s), mean and std over seeds
    assert float(ours["tall"]["seconds"]) == 45.0
    assert float(ours["tall"]["seconds_std"]) == pytest.approx(_hand_std(30.0, 60.0))
    assert ours["zeta"]["seconds"] == "30.0" and ours["zeta"]["seconds_std"] == ""
    assert "| 45 ± 21 |" in (out / "table2.md").read_text()
    imp = {r["vs"]: r for r in rows if r["kind"] == "improvement"}
    assert set(imp) == {"multvae", "lft", "zeta"}
    for model in ("multvae", "lft"):
        for j, c in enumerate(COLS):
            t = (RUNS["tall"][0][j] + RUNS["tall"][1][j]) / 2
            x = (RUNS[model][0][j] + RUNS[model][1][j]) / 2
            assert float(imp[model][c]) == pytest.approx((t - x) / x * 100, rel=1e-9)
    # e.g. overall TALL vs MultVAE: (0.41 - 0.32) / 0.32 = 28.125 %
    assert float(imp["multvae"]["overall"]) == pytest.approx(28.125, rel=1e-9)
    # the paper's rows sit beside our rows, with the paper's own improvement rows
    ref = {r["model"]: r for r in rows if r["kind"] == "paper"}
    assert float(ref["tall"]["overall"]) == 0.3456 and float(ref["multvae"]["low"]) == 0.2354
    assert "zeta" not in ref
    imp_paper = {r["vs"]: r for r in rows if r["kind"] == "improvement_paper"}
    assert float(imp_paper["multvae"]["overall"]) == pytest.approx((0.3456 - 0.3260) / 0.3260 * 100)
    md = (out / "table2.md").read_text()
    assert "0.4100 ± 0.0141" in md and "+28.1" in md and "| MultVAE (paper) |" in md
    assert "| TALL (E = 100) | 2 |" in md and "| TALL (E = 100) vs MultVAE (%) |" in md


def test_other_metric_has_no_paper_rows(tmp_path):
    for seed, vals in enumerate(RUNS["tall"]):
        _write_run(tmp_path, "tall", seed, vals)
    assert report.main([str(tmp_path), "--metric", "recall@20", "--no-plot"]) == 0
    rows = _read_csv(tmp_path / "table2.csv")
    assert [r["kind"] for r in rows] == ["ours"] and float(rows[0]["overall"]) == 0.5
    assert not (tmp_path / "table2.png").exists()


def test_name_and_provenance(tmp_path, capsys):
    """--name sets the files' stem; the page says which command made it, from how many runs."""
    runs = tmp_path / "runs"
    for seed, vals in enumerate(RUNS["tall"]):
        _write_run(runs, "tall", seed, vals)
    out = tmp_path / "docs"
    assert report.main([str(runs), "--out", str(out), "--name", "ml1m_table2", "--no-plot"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ml1m_table2.csv", "ml1m_table2.md",
                                                      "ml1m_table2_fairness.csv"]
    md = (out / "ml1m_table2.md").read_text()
    assert (f"Produced by `python -m tall_jax.report {runs} --out {out} --name ml1m_table2 --no-plot` on "
            in md) and "from 2 results.json" in md
    capsys.readouterr()
    assert report.main([str(runs), "--name", "a/b"]) == 2
    assert "--name must be a plain file stem" in capsys.readouterr().err


def test_errors_name_the_file(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no results.json found" in capsys.readouterr().err
    _write_run(tmp_path, "tall", 0, RUNS["tall"][0])
    bad = tmp_path / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"dataset": "ml-1m", "model": "tall"')
    assert report.main([str(tmp_path)]) == 2
    assert str(bad) in capsys.readouterr().err
    bad.write_text(json.dumps({"dataset": "ml-1m", "model": "tall", "seed": 1}))
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "test" in err
    assert report.main([str(tmp_path), "--skip-malformed", "--no-plot"]) == 0
    assert "skipped" in capsys.readouterr().err
    assert report.main([str(tmp_path), "--metric", "ndcg@7", "--skip-malformed"]) == 2
    assert "ndcg@7" in capsys.readouterr().err


def test_reads_ranking_result_json(tmp_path):
    """The tool reads what RankingResult.to_json() writes (nulls for NaN included)."""
    rng = np.random.default_rng(0)
    res = RankingResult({"ndcg@20": rng.random(10)}, np.repeat(np.arange(5), 2))
    for seed in (0, 1):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(
            {"dataset": "yelp", "model": "tall", "seed": seed, "split": "random", "test": res.to_json()}))
    runs = run_records.collect_runs(tmp_path)
    rows = report.build_rows(runs)
    assert rows[0].mean[0] == pytest.approx(res.overall()["ndcg@20"]) and rows[0].std[0] == 0.0
    assert rows[1].kind == "paper" and rows[1].mean[0] == 0.0992


def test_paper_transcription_consistent():
    """The printed improvement rows agree with the table values to rounding; group means ≈ overall."""
    for ds, by_model in paper.TABLE2_IMPROVEMENT_PRINTED.items():
        for model, printed in by_model.items():
            t = np.array(paper.TABLE2[ds]["tall"])
            x = np.array(paper.TABLE2[ds][model])
            np.testing.assert_allclose((t - x) / x * 100, printed, atol=0.006, err_msg=f"{ds} {model}")
    for table in (paper.TABLE2, paper.TABLE3, paper.TABLE4, paper.LFT_REPO):
        for ds, by_model in table.items():
            for model, row in by_model.items():
                assert abs(row[0] - np.mean(row[1:])) < 1e-4, (ds, model)
    assert paper.paper_row("ml-1m", "lmoe_lc")["low"] == 0.2566
    assert paper.paper_row("cds", "lmoe") is None
    assert paper.paper_row("ml-1m", "multvae", "lft_repo")["overall"] == 0.3153
    with pytest.raises(ValueError, match="unknown reference"):
        paper.paper_row("ml-1m", "tall", "nope")


def test_variants_get_their_own_rows_and_tall_variants_are_compared(tmp_path):
    import json
    from tall_jax.report import build_rows
    from tall_jax.run_records import collect_runs

    def write(model, variant, value):
        d = tmp_path / f"{model}{variant}"
        d.mkdir()
        groups = {g: {"ndcg@20": value} for g in ("low", "med-low", "medium", "med-high", "high")}
        test = {"overall": {"ndcg@20": value}, "groups": groups,
                "group_sizes": {g: 1 for g in groups}, "n_users": 5, "n_undefined": 0}
        (d / "results.json").write_text(json.dumps(
            {"dataset": "ml-1m", "model": model, "seed": 0, "split": "authors", "test": test,
             "variant": variant}))

    write("multvae", "", 0.30)
    write("tall", "n_experts=10", 0.33)
    rows = build_rows(collect_runs(tmp_path))
    ours = {r.model: r.mean[0] for r in rows if r.kind == "ours"}
    assert ours == {"multvae": 0.30, "tall [n_experts=10]": 0.33}
    assert {r.model for r in rows if r.kind == "paper"} == {"multvae", "tall"}
    (imp,) = [r for r in rows if r.kind == "improvement"]
    assert imp.model == "tall [n_experts=10]" and imp.vs == "multvae"
    assert abs(imp.mean[0] - 10.0) < 1e-9
    assert not [r for r in rows if r.kind == "improvement_paper"]  # a reduced TALL is not the paper's


def test_tall_is_compared_with_single_models_and_mixtures_of_its_own_size(tmp_path):
    for model, variant, value in [("multvae", "", 0.30), ("lmoe", "", 0.34), ("lmoe", "n_experts=10", 0.32),
                                  ("tall", "", 0.35), ("tall", "n_experts=10, alpha=0.1", 0.33)]:
        d = tmp_path / f"{model}-{variant}"
        d.mkdir()
        groups = {g: {"ndcg@20": value} for g in GROUP_NAMES}
        test = {"overall": {"ndcg@20": value}, "groups": groups,
                "group_sizes": {g: 1 for g in groups}, "n_users": 5, "n_undefined": 0}
        (d / "results.json").write_text(json.dumps(
            {"dataset": "ml-1m", "model": model, "seed": 0, "split": "authors", "test": test,
             "variant": variant}))
    rows = report.build_rows(run_records.collect_runs(tmp_path), reference=None)
    pairs = {(r.model, r.vs): r.mean[0] for r in rows if r.kind == "improvement"}
    assert set(pairs) == {("tall", "multvae"), ("tall", "lmoe"),
                          ("tall [n_experts=10, alpha=0.1]", "multvae"),
                          ("tall [n_experts=10, alpha=0.1]", "lmoe [n_experts=10]")}
    assert pairs["tall", "lmoe"] == pytest.approx((0.35 - 0.34) / 0.34 * 100)
    assert pairs["tall [n_experts=10, alpha=0.1]", "lmoe [n_experts=10]"] == pytest.approx(3.125)


def test_subset_run_is_compared_with_tall_on_the_same_users_and_two_reference_sources(tmp_path):
    runs = tmp_path / "runs"
    groups = np.repeat(np.arange(5), 2)  # 10 users, two per group
    tall_ndcg = np.array([.1, .3, .2, .4, .3, .5, .4, .6, .5, .9])
    _write_run(runs, "tall", 0, (tall_ndcg.mean(), .2, .3, .4, .5, .7))
    RankingResult({"ndcg@20": tall_ndcg}, groups).save_per_user(runs / "ml-1m_tall_s0" / "per_user_test.npz")
    subset = np.array([1, 2, 5, 6, 9])  # one user of each group
    _write_run(runs, "lft", 0, (0.4, 0.2, 0.2, 0.5, 0.4, 0.5))
    d = runs / "ml-1m_lft_s0"
    res = json.loads((d / "results.json").read_text())
    res["evaluated_users"] = "seeded random subset of 5 of 10 users"
    (d / "results.json").write_text(json.dumps(res))
    np.save(d / "evaluated_users.npy", subset)
    assert report.main([str(runs), "--no-plot", "--reference", "paper", "lft_repo"]) == 0
    rows = _read_csv(runs / "table2.csv")
    imp = next(r for r in rows if r["kind"] == "improvement" and r["vs"] == "lft")
    assert imp["note"] == "same 5 users"
    # TALL over users 1, 2, 5, 6, 9: overall mean .46; groups low..high = .3 .2 .5 .4 .9
    want = {"overall": .46, "low": .3, "med-low": .2, "medium": .5, "med-high": .4, "high": .9}
    lft = dict(zip(COLS, (0.4, 0.2, 0.2, 0.5, 0.4, 0.5)))
    for c in COLS:
        assert float(imp[c]) == pytest.approx((want[c] - lft[c]) / lft[c] * 100, rel=1e-9)
    refs = {(r["model"], r["note"]): r for r in rows if r["kind"] == "paper"}
    assert float(refs["lft", "paper"]["overall"]) == 0.3416
    assert float(refs["lft", "lft_repo"]["overall"]) == 0.3372
    assert ("tall", "lft_repo") not in refs  # the LFT repo has no TALL row
    md = (runs / "table2.md").read_text()
    assert "| LFT (LFT repo) |" in md and "| TALL (E = 100) vs LFT (5 users) (%, same 5 users) |" in md
    # a subset run without its user list is an error that names the file
    (d / "evaluated_users.npy").unlink()
    assert report.main([str(runs), "--no-plot"]) == 2


def test_fairness_rows_hand_worked(tmp_path):
    """Spread of NDCG@20 over the groups per run, then mean ± std over seeds, in table2_fairness.csv and the
    markdown; the paper row gets the spread of the paper's own group values."""
    runs = tmp_path / "runs"
    for seed, vals in enumerate(RUNS["tall"]):
        _write_run(runs, "tall", seed, vals)
    assert report.main([str(runs), "--no-plot"]) == 0
    rows = {r["kind"]: r for r in _read_csv(runs / "table2_fairness.csv")}
    ours, ref = rows["ours"], rows["paper"]
    # seed 0: groups .30 .35 .40 .45 .50 -> max-min .20, low/high .6, std sqrt(mean(.1², .05², 0, .05², .1²))
    # seed 1: groups .32 .33 .42 .47 .56 -> max-min .24, low/high .32/.56
    assert float(ours["max_minus_min"]) == pytest.approx(0.22)
    assert float(ours["max_minus_min_std"]) == pytest.approx(_hand_std(0.20, 0.24))
    assert float(ours["low_over_high"]) == pytest.approx((0.6 + 0.32 / 0.56) / 2)
    std0 = math.sqrt((0.01 + 0.0025 + 0 + 0.0025 + 0.01) / 5)
    std1 = float(np.std([0.32, 0.33, 0.42, 0.47, 0.56]))
    assert float(ours["std"]) == pytest.approx((std0 + std1) / 2)
    # paper TALL ML-1M: low .2746, high .4734
    assert float(ref["max_minus_min"]) == pytest.approx(0.4734 - 0.2746)
    assert float(ref["low_over_high"]) == pytest.approx(0.2746 / 0.4734)
    assert ref["n_seeds"] == "" and ref["max_minus_min_std"] == ""
    md = (runs / "table2.md").read_text()
    assert "Spread of test ndcg@20 over the groups" in md
    assert f"| TALL (E = 100) | 2 | 0.2200 ± {_hand_std(0.20, 0.24):.4f} |" in md
    # another metric: no reference rows
    assert report.fairness_rows(run_records.collect_runs(runs), "recall@20")[0].mean[0] == 0.0
    assert [r.kind for r in report.fairness_rows(run_records.collect_runs(runs), "recall@20")] == ["ours"]


def test_fidelity_doc_anchors_exist_and_readme_points_to_it():
    """Every ``docs/fidelity.md#anchor`` named in the package, the examples, the README and the docs
    pages is a heading of docs/fidelity.md (GitHub anchor rules for our plain headings); the README
    points there, not to the spec, and says how to install JAX for a GPU or TPU."""
    import re

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "fidelity.md").read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#{2,4} (.+)$", doc, flags=re.M)}
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "tall_jax").rglob("*.py")),
             *sorted((root / "examples").glob("*.py"))]
    used = set()
    for f in files:
        text = f.read_text()
        for m in re.finditer(r"docs/fidelity\.md((?:#[a-z0-9-]+)(?:(?:, | and )#[a-z0-9-]+)*)", text):
            used |= set(re.findall(r"#([a-z0-9-]+)", m.group(1)))
        used |= set(re.findall(r"\((?:docs/)?fidelity\.md#([a-z0-9-]+)\)", text))  # docs pages link it relatively
    assert used and not used - headings, sorted(used - headings)
    assert set(re.findall(r"\]\(#([a-z0-9-]+)\)", doc)) <= headings  # the page's own contents links
    readme = (root / "README.md").read_text()
    assert "(docs/fidelity.md" in readme and "shared/spec" not in readme and "../shared" not in readme
    assert 'jax[cuda12]' in readme and 'jax[tpu]' in readme


def test_run_seconds_sums_the_epochs_else_takes_the_wall_time():
    assert run_records.run_seconds({"history": [{"seconds": 1.5}, {"seconds": 2.0}], "wall_time_s": 99}) == 3.5
    assert run_records.run_seconds({"wall_time_s": 7}) == 7.0  # a local baseline: no epoch history
    assert run_records.run_seconds({"history": [{"epoch": 1}], "wall_time_s": 4.0}) == 4.0
    assert run_records.run_seconds({}) is None
    # a blend: its neural part by its epochs (also when a finished checkpoint was reused), the rest by wall
    blend = {"wall_time_s": 50.0, "neural_seconds": 2.0, "neural": {"epoch_seconds": 600.0}}
    assert run_records.run_seconds(blend) == 648.0
    assert run_records.run_seconds({"wall_time_s": 50.0, "neural_seconds": 2.0}) == 50.0  # recorded before


def test_report_reads_several_folders(tmp_path):
    _write_run(tmp_path / "a", "tall", 0, (0.4,) * 6)
    _write_run(tmp_path / "b", "tall", 1, (0.5,) * 6)
    assert report.main([str(tmp_path / "a"), str(tmp_path / "b"), "--no-plot"]) == 0
    ours = [r for r in _read_csv(tmp_path / "a" / "table2.csv") if r["kind"] == "ours"]
    assert [(r["model"], r["n_seeds"], float(r["overall"])) for r in ours] == [("tall", "2", pytest.approx(0.45))]


def test_the_record_rebuilds_the_same_table_without_the_run_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")
    for model, rows in RUNS.items():
        for seed, values in enumerate(rows):
            _write_run(runs / "table2", model, seed, values)
    _write_run(runs / "study", "lmoe", 0, (0.38,) * 6)
    d = runs / "table2" / "ml-1m_tall_s0"
    RankingResult({"ndcg@20": np.linspace(0, 1, 10), "recall@20": np.ones(10)},
                  np.repeat(np.arange(5), 2)).save_per_user(d / "per_user_test.npz")
    args = ["runs/table2", "runs/study", "--no-plot", "--out", "first"]
    assert report.main([*args, "--record", "kept"]) == 0
    assert "recorded 7 run(s) in kept" in capsys.readouterr().out
    kept = Path("kept") / "runs" / "table2" / "ml-1m_tall_s0"
    with np.load(kept / "per_user_test.npz") as z:  # the table's metric and the groups only
        assert sorted(z.files) == ["groups", "ndcg@20"]
    assert report.main([*args, "--record", "kept"]) == 0
    assert "kept already holds these runs" in capsys.readouterr().out
    shutil.rmtree(runs)
    assert report.main(["kept", "--no-plot", "--out", "second", "--record", "kept"]) == 0
    assert "already holds" in capsys.readouterr().out  # reading the record never nests it in itself
    assert (Path("second") / "table2.csv").read_text() == (Path("first") / "table2.csv").read_text()


def test_runs_from_a_study_record_are_read_but_not_copied(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = Path("docs") / "page_runs"  # a study's record: <stem>_runs beside <stem>.md
    _write_run(study / "lmoe", "lmoe", 0, (0.38,) * 6)
    _write_run(Path("runs"), "multvae", 0, (0.30,) * 6)
    assert report.main(["runs", str(study), "--no-plot", "--out", "out", "--record", "kept"]) == 0
    # without its page it is just a runs folder, and is kept
    assert sorted(p.parent.name for p in Path("kept").rglob("results.json")) == ["ml-1m_lmoe_s0", "ml-1m_multvae_s0"]
    (study.parent / "page.md").write_text("# a page\n")
    shutil.rmtree("kept")
    assert report.main(["runs", str(study), "--no-plot", "--out", "out", "--record", "kept"]) == 0
    out = capsys.readouterr().out
    assert "recorded 1 run(s) in kept" in out and f"read from the record {study.resolve()} stay there" in out
    assert sorted(p.parent.name for p in Path("kept").rglob("results.json")) == ["ml-1m_multvae_s0"]


def _write_labelled(root: Path, model: str, value: float, variant: str = "", seed: int = 0,
                    settings: dict | None = None, chosen_hp: dict | None = None) -> None:
    """A one-seed run of ``model`` [``variant``] with NDCG@20 ``value`` in every column."""
    groups = {g: {"ndcg@20": value} for g in GROUP_NAMES}
    test = {"overall": {"ndcg@20": value}, "groups": groups, "group_sizes": {g: 1 for g in groups},
            "n_users": 5, "n_undefined": 0}
    d = root / f"{model}-{variant.replace(', ', '_')}-s{seed}"
    d.mkdir(parents=True)
    res = {"dataset": "ml-1m", "model": model, "seed": seed, "split": "authors", "test": test,
           "variant": variant, "settings": settings or {}, "wall_time_s": 2.0}
    if chosen_hp is not None:
        res.update(grid=[chosen_hp], chosen_hp=chosen_hp)
    (d / "results.json").write_text(json.dumps(res))


STRONG = [  # model, chosen hyper-parameters, the label they give
    ("pop", None, "Most popular"),
    ("itemknn", {"k": 100, "shrink": 10.0}, "ItemKNN (k = 100, shrink = 10)"),
    ("rp3beta", {"alpha": 1.0, "beta": 0.3}, "RP3beta (α = 1, β = 0.3)"),
    ("ease", {"lambda": 800.0}, "EASE (λ = 800)"),
    ("ease_wl", {"lambda": 500, "gamma": 1.2}, "EASE (WL weights, λ = 500, γ = 1.2)"),
    ("ease_ms", {"lambda": 500}, "EASE (MS weights, λ = 500)"),
    ("ease_kkt", {"lambda": 500, "rounds": 3}, "EASE (KKT rounds, λ = 500, rounds = 3)"),
    ("loca_ease", {"lambda": 250}, "LOCA-EASE (λ = 250)"),
]


def test_every_mixture_label_names_its_E_and_strong_baselines_follow_the_papers_rows(tmp_path):
    """Labels: a mixture's E (variant, else the preset, else the recorded settings), single models
    none, the chosen hyper-parameters of a closed-form model; rows: the paper's models, then the
    strong baselines simplest first, then unknown ones."""
    for model, hp, _ in reversed(STRONG):  # written in the wrong order on purpose
        _write_labelled(tmp_path, model, 0.33, chosen_hp=hp)
    _write_labelled(tmp_path, "zeta", 0.1)
    _write_labelled(tmp_path, "tall", 0.35)
    _write_labelled(tmp_path, "tall", 0.34, "n_experts=10")
    _write_labelled(tmp_path, "lmoe", 0.32, "n_experts=10")
    _write_labelled(tmp_path, "lmoe", 0.34)
    _write_labelled(tmp_path, "uniform_moe", 0.33, "n_experts=10")
    _write_labelled(tmp_path, "lft", 0.33, "users=200")
    _write_labelled(tmp_path, "multvae", 0.30)
    _write_labelled(tmp_path, "tall", 0.36, "n_experts=2, patience=1, max_epochs=2")
    out = tmp_path / "out"
    assert report.main([str(tmp_path), "--out", str(out), "--no-plot"]) == 0
    rows = _read_csv(out / "table2.csv")
    ours = [(r["model"], r["label"]) for r in rows if r["kind"] == "ours"]
    assert ours == [
        ("multvae", "MultVAE"), ("lft [users=200]", "LFT (200 users)"),
        ("lmoe", "LMoE (E = 100)"), ("lmoe [n_experts=10]", "LMoE (E = 10)"),
        ("tall", "TALL (E = 100)"), ("tall [n_experts=10]", "TALL (E = 10)"),
        ("tall [n_experts=2, patience=1, max_epochs=2]", "TALL (E = 2, patience=1, max_epochs=2)"),
        ("uniform_moe [n_experts=10]", "MoE (uniform gate, E = 10)"),
        *[(model, label) for model, _, label in STRONG], ("zeta", "zeta")]
    hp = {r["model"]: r["chosen_hp"] for r in rows if r["kind"] == "ours"}
    assert json.loads(hp["ease"]) == {"lambda": 800.0} and hp["pop"] == "" and hp["tall"] == ""
    refs = {r["label"] for r in rows if r["kind"] == "paper"}
    assert {"TALL (E = 100, paper)", "LMoE (E = 100, paper)", "MultVAE (paper)", "LFT (paper)"} <= refs
    assert not [r for r in refs if "EASE" in r or "RP3beta" in r]  # the paper has no row for them
    md = (out / "table2.md").read_text()
    for _, _, label in STRONG:
        assert f"| {label} | 1 |" in md
    # improvement rows name both sides' E; a strong baseline is a single model, compared with every TALL
    assert "| TALL (E = 10) vs LMoE (E = 10) (%) |" in md and "| TALL (E = 100) vs EASE (λ = 800) (%) |" in md
    assert "| TALL (E = 100) vs LMoE (E = 100) (%, paper) |" in md
    assert "TALL (E = 10) vs LMoE (E = 100)" not in md
    # the run name stays on the page (the CSV's key), e.g. for a variant with other settings
    assert "| tall [n_experts=2, patience=1, max_epochs=2] |" in md
    fair = [r["label"] for r in _read_csv(out / "table2_fairness.csv") if r["kind"] == "ours"]
    assert fair == [label for _, label in ours]


def test_E_comes_from_the_recorded_settings_when_the_variant_has_none(tmp_path):
    """A dataset preset may set E (synthetic: 10) without a variant: the run's settings say so."""
    _write_labelled(tmp_path, "tall", 0.35, settings={"n_experts": 10})
    _write_labelled(tmp_path, "lmoe", 0.34, settings={"n_experts": 10})
    _write_labelled(tmp_path, "lmoe", 0.30, "n_experts=100")
    _write_labelled(tmp_path, "multvae", 0.30, settings={"n_experts": 1})
    rows = report.build_rows(run_records.collect_runs(tmp_path), reference=None)
    assert [r.title for r in rows if r.kind == "ours"] == ["MultVAE", "LMoE (E = 100)", "LMoE (E = 10)",
                                                           "TALL (E = 10)"]
    assert [r.title for r in rows if r.kind == "improvement"] == ["TALL (E = 10) vs MultVAE (%)",
                                                                  "TALL (E = 10) vs LMoE (E = 10) (%)"]


def test_plot_labels_never_overlap_with_twenty_rows(tmp_path):
    """Twenty rows (every model family, long labels): one panel per column, the figure grows with the
    rows, and no two tick labels of the rendered figure overlap."""
    from tall_jax import table2

    names = [("multvae", ""), ("wl", ""), ("enlft", ""), ("loca", ""), ("lft", "users=200"), ("lmoe", ""),
             ("lmoe", "n_experts=10"), ("tall", ""), ("tall", "n_experts=10"), ("uniform_moe", "n_experts=10"),
             ("tall_plus", "n_experts=10"), ("moe", "n_experts=10")]
    for i, (model, variant) in enumerate(names):
        _write_labelled(tmp_path, model, 0.30 + 0.003 * i, variant)
    for i, (model, hp, _) in enumerate(STRONG):
        _write_labelled(tmp_path, model, 0.31 + 0.004 * i, chosen_hp=hp)
    rows = report.build_rows(run_records.collect_runs(tmp_path))
    assert sum(r.kind == "ours" for r in rows) == 20
    fig = table2.plot(rows, tmp_path / "t.png", "ndcg@20")
    small = table2.plot([r for r in rows if r.base in ("multvae", "tall")], tmp_path / "s.png", "ndcg@20")
    assert (tmp_path / "t.png").stat().st_size > 0
    assert fig.get_figheight() > small.get_figheight() + 3
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    assert len(axes) == len(table2.COLUMNS)
    labels = [t for t in axes[0].get_yticklabels() if t.get_text()]
    assert len(labels) == 20 and labels[0].get_text().startswith("MultVAE")
    for ax in axes:
        for ticks in ([t for t in ax.get_yticklabels() if t.get_text() and t.get_visible()],
                      [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]):
            boxes = [t.get_window_extent(renderer) for t in ticks]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert not a.overlaps(b), (a, b)
    # the panels' tick labels stay clear of each other's panels too: the y labels sit left of every panel
    left = min(ax.get_window_extent(renderer).x0 for ax in axes)
    assert max(t.get_window_extent(renderer).x1 for t in labels) <= left + 1
