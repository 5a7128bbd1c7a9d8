"""tall_jax.study: the variants resolve to the configs they claim, the plan is seed-major and resumable,
a folder of other settings is refused, the statistics equal scipy's and hand-worked values, and one
tiny study runs end to end and writes its page."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from tall_jax import checkpoint
from tall_jax import state as state_lib
from tall_jax.configs import make_config
from tall_jax.protocol import GROUP_NAMES
from tall_jax.study import analysis, jobs, variants as V
from tall_jax.study.__main__ import default_page, main
from tall_jax.study.writeup import write_page


def test_variants_resolve_to_their_configs():
    vs = {v.name: v for v in V.ablation_variants("ml-1m", 10)}
    assert vs["tall"].config("ml-1m", 10, 3) == make_config("ml-1m", "tall", n_experts=10, seed=3)
    mix_reg = vs["multvae_mix_reg"].config("ml-1m", 10, 0)
    assert mix_reg.n_experts == 1 and mix_reg.kl_reduction == "sum_users"
    assert mix_reg.weight_decay == pytest.approx(make_config("ml-1m", "tall", n_experts=10).weight_decay)
    route = vs["tall_route"].config("ml-1m", 10, 0)
    assert (route.gate, route.gate_temperature, route.adaptive) == ("route", V.ROUTE_TEMPERATURE, "loss_change")
    assert vs["lmoe_uniform"].config("ml-1m", 10, 0).gate == "uniform"
    assert len(vs) == len(V.ablation_variants("ml-1m", 10))  # names are unique
    with pytest.raises(ValueError, match="unknown variant"):
        V.select(list(vs.values()), ["nope"])


def test_plan_is_seed_major_and_tune_variants_take_the_first_seed_last(tmp_path):
    vs = V.select(V.ablation_variants("ml-1m", 10), ["multvae", "tall", "lmoe_route_t0.3"])
    runs = jobs.plan(vs, [4, 1], tmp_path, "ml-1m", 10)
    assert [r.label for r in runs] == ["multvae/seed4", "tall/seed4", "multvae/seed1", "tall/seed1",
                                       "lmoe_route_t0.3/seed4"]
    assert runs[1].out_dir == tmp_path / "ml-1m" / "E10" / "tall" / "seed4"


def test_side_variants_take_the_first_seed_after_the_multi_seed_runs(tmp_path):
    vs = V.select(V.ablation_variants("ml-1m", 10), ["tall_route", "tall_route_item_cap"])
    assert [v.side for v in vs] == [False, True]
    runs = jobs.plan(vs, [0, 1], tmp_path, "ml-1m", 10)
    assert [r.label for r in runs] == ["tall_route/seed0", "tall_route/seed1", "tall_route_item_cap/seed0"]
    assert runs[2].trunk is runs[0] and runs[0].keep_epochs == (40,) and runs[1].keep_epochs == ()


def test_forks_share_only_the_epochs_before_the_gap():
    vs = {v.name: v for v in V.ablation_variants("ml-1m", 10)}
    forks = {v.name: v.trunk for v in vs.values() if v.trunk}
    assert forks == {"lmoe": "tall", "lmoe_uniform": "tall_uniform", "lmoe_route": "tall_route",
                     "lmoe_route_train": "tall_route_train",
                     "tall_per_item": "tall", "tall_per_item_matched": "tall", "tall_exact_kkt": "tall", "tall_cap": "tall", "tall_cap3": "tall",
                     "tall_route_item_cap": "tall_route", "tall_uniform_item": "tall_uniform",
                     "tall_uniform_item_cap": "tall_uniform"}
    for name, trunk in forks.items():
        assert vs[name].fork_epoch(vs[trunk], "ml-1m", 10) == make_config("ml-1m", "tall").gap == 40
    with pytest.raises(ValueError, match="gate"):  # a different gate acts from epoch 1
        vs["tall_route"].fork_epoch(vs["tall"], "ml-1m", 10)
    with pytest.raises(ValueError, match="adaptive"):  # WL's weights act from epoch 1
        V.Variant("x", "wl", (), "").fork_epoch(vs["multvae"], "ml-1m", 10)
    bf16 = {v.name: v for v in V.precision_variants()}
    assert bf16["lmoe_bf16"].fork_epoch(bf16["tall_bf16"], "ml-1m", 10) == 40


def test_plan_links_each_fork_to_its_trunk_of_the_same_seed(tmp_path):
    vs = V.select(V.ablation_variants("ml-1m", 10), ["lmoe", "tall", "tall_cap", "tall_route_item_cap"])
    runs = {r.label: r for r in jobs.plan(vs, [0, 1], tmp_path, "ml-1m", 10)}
    assert runs["tall/seed1"].keep_epochs == (40,) and runs["lmoe/seed1"].keep_epochs == ()
    assert runs["tall_cap/seed1"].trunk == runs["tall/seed1"] and runs["tall_cap/seed1"].fork_epoch == 40
    assert runs["tall_route_item_cap/seed0"].trunk is None  # its trunk tall_route is not in this study
    assert jobs.child_command(runs["tall/seed0"], "ml-1m", 10, None)[-2:] == ["--keep-epochs", "40"]
    assert "--keep-epochs" not in jobs.child_command(runs["tall_cap/seed0"], "ml-1m", 10, None)


def test_a_fork_waits_for_its_trunk_unless_it_can_start(tmp_path):
    vs = V.select(V.ablation_variants("ml-1m", 10), ["tall", "tall_cap"])
    trunk, fork = jobs.plan(vs, [0], tmp_path, "ml-1m", 10)
    pending = {trunk.label, fork.label}
    assert jobs.may_start(trunk, pending) and not jobs.may_start(fork, pending)
    assert jobs.standing(fork).text == "waits for tall/seed0 to reach epoch 40"
    assert jobs.may_start(fork, {fork.label})  # the trunk is done without a kept checkpoint: from scratch
    kept = checkpoint.write_folder(state_lib.kept_dir(trunk.out_dir, 40) / state_lib.CHECKPOINT,
                                   {"state.msgpack": b"s", "best.msgpack": b"b", "progress.json": b"{}"})
    assert jobs.may_start(fork, pending)
    assert jobs.standing(fork).text == "not started; starts from tall/seed0 at epoch 40"
    assert state_lib.fork_checkpoint(trunk.out_dir, 40, fork.out_dir)
    copied = fork.out_dir / state_lib.CHECKPOINT
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in kept.iterdir())
    assert (copied / "best.msgpack").read_bytes() == b"b"


def test_default_pages_of_two_expert_counts_differ():
    assert default_page("ml-1m", "ablations", 10) == "docs/results/ml1m_ablations"
    assert default_page("ml-1m", "ablations", 100) == "docs/results/ml1m_ablations_E100"


def test_a_folder_made_for_other_settings_is_refused(tmp_path):
    v = V.select(V.ablation_variants("ml-1m", 10), ["tall"])[0]
    run = jobs.plan([v], [0], tmp_path, "ml-1m", 10)[0]
    run.out_dir.mkdir(parents=True)
    record = run.record("ml-1m", 10)
    record["overrides"] = {"weight_cap": 3.0}
    (run.out_dir / jobs.RECORD).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="overrides"):
        jobs.check_folder(run, "ml-1m", 10)


def test_smoothed_epoch_hand_worked():
    # a spike at epoch 3; the best 3-epoch average is centred on epoch 6 (.5+.6+.5)
    scores = [.1, .2, .9, .1, .5, .6, .5, .2]
    history = [{"epoch": e + 1, "valid_score": s} for e, s in enumerate(scores)]
    assert analysis.smoothed_epoch(history) == 6
    assert analysis.smoothed_epoch(history[:2]) == 2


def _summary(variant, seed, per_user, groups):
    best = {"overall": float(per_user.mean())}
    best.update({g: float(per_user[groups == i].mean()) for i, g in enumerate(GROUP_NAMES)})
    return analysis.RunSummary(variant, seed, best, dict(best), 5, 5, 20, 10.0, 0.3, 2.3, {}, per_user, groups)


def test_paired_tests_equal_scipy():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(5), 40)
    ref = [_summary("tall", s, rng.random(200), groups) for s in range(3)]
    mine = [_summary("x", s, r.per_user_N + rng.normal(0.02, 0.05, 200), groups) for s, r in enumerate(ref)]
    tests = {t.column: t for t in analysis.paired_tests(mine, ref)}
    d = np.mean([m.per_user_N - r.per_user_N for m, r in zip(mine, ref)], axis=0)
    low = groups == 0
    assert tests["low"].mean_diff == pytest.approx(d[low].mean())
    assert tests["low"].p_users == pytest.approx(scipy.stats.wilcoxon(d[low]).pvalue)
    assert tests["overall"].p_seeds == pytest.approx(
        scipy.stats.ttest_rel([m.best["overall"] for m in mine], [r.best["overall"] for r in ref]).pvalue)
    assert tests["overall"].n_seeds == 3 and tests["overall"].n_users == 200
    assert analysis.paired_tests(mine, []) == []


def test_page_from_summaries(tmp_path):
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(5), 10)
    vs = V.select(V.ablation_variants("ml-1m", 10), ["multvae", "lmoe", "tall"])
    runs = {v.name: [_summary(v.name, s, rng.random(50), groups) for s in range(2)] for v in vs}
    written = write_page(tmp_path / "page", study="ablations", command="cmd", dataset="ml-1m",
                         n_experts=10, seeds=[0, 1], variants=vs, runs=runs)
    text = (tmp_path / "page.md").read_text()
    assert "| multvae | 2 |" in text and "Paired difference to `tall`" in text
    summary = text.split("## Summary")[1].split("##")[0]
    best = max(runs, key=lambda n: np.mean([r.best["overall"] for r in runs[n]]))
    assert f"(overall, variants with 2+ seeds): `{best}`" in summary
    assert "Apart from `tall` over seeds" in summary and "No variant meets" in summary
    aim_rows = text.split("## Against the improved preset's aim")[1].split("##")[0]
    assert "| multvae | 2 |" in aim_rows and "| tall |" not in aim_rows and "| lmoe |" not in aim_rows
    assert len((tmp_path / "page.csv").read_text().splitlines()) == 1 + 6
    assert "Code: runs finished by each commit (before the record: 6)" in text
    assert len(written) == 3 and (tmp_path / "page.png").stat().st_size > 0


def test_page_counts_the_commits_that_finished_the_runs(tmp_path):
    groups = np.repeat(np.arange(5), 10)
    vs = V.select(V.ablation_variants("ml-1m", 10), ["multvae", "tall"])
    runs = {v.name: [_summary(v.name, s, np.full(50, .3), groups) for s in range(2)] for v in vs}
    runs["multvae"][0].commit = runs["tall"][0].commit = "a" * 40
    runs["tall"][1].commit = "b" * 40 + "+dirty"
    write_page(tmp_path / "page", study="ablations", command="cmd", dataset="ml-1m", n_experts=10,
               seeds=[0, 1], variants=vs, runs=runs)
    text = (tmp_path / "page.md").read_text()
    # most first; ties in the order the runs are listed
    assert "(aaaaaaa: 2; before the record: 1; bbbbbbb with uncommitted changes: 1)" in text
    rows = (tmp_path / "page.csv").read_text().splitlines()
    assert rows[0].endswith(",commit") and sum(r.endswith("a" * 40) for r in rows) == 2


def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    argv = ["ablations", "--dataset", "synthetic", "--experts", "2", "--seeds", "0", "--variants",
            "multvae", "--epochs", "3", "--root", str(tmp_path / "runs"), "--page", str(tmp_path / "page"),
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out  # --no-progress still logs each run's start and end
    assert "started multvae/seed0" in out and "finished multvae/seed0 in" in out
    folder = tmp_path / "runs" / "synthetic" / "E2" / "multvae" / "seed0"
    assert (folder / "results.json").exists() and (folder / "train.log").exists()
    before = (folder / "results.json").stat().st_mtime_ns
    assert main(argv) == 0  # finished runs are skipped
    assert (folder / "results.json").stat().st_mtime_ns == before
    capsys.readouterr()
    assert main(argv + ["--status"]) == 0
    out = capsys.readouterr().out  # the chosen variants only
    assert "multvae/seed0" in out and "finished: best epoch" in out and "1 of 1 runs finished" in out
    page = (tmp_path / "page.md").read_text()
    assert "| multvae | 1 |" in page
    # the page lists the variants asked for (and those with finished runs), and its command names them
    assert "--variants multvae`" in page and "(1 of 1 planned runs finished" in page
    assert "| tall | tall |" not in page
    assert "Against the improved preset's aim" not in page  # no variant to measure it on: no empty table
    assert json.loads((folder / "results.json").read_text())["epochs_run"] == 3
    assert main(argv[:-1] + ["--jobs", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_record_outlives_the_run_folders(tmp_path, capsys):
    """A fresh checkout has the committed record and no run folders: the study restores the finished
    runs (nothing trains) and rebuilds the same page; a record made for other settings is refused
    with a warning and the run trains again."""
    import shutil

    root, page = tmp_path / "runs", tmp_path / "page"
    argv = ["ablations", "--dataset", "synthetic", "--experts", "2", "--seeds", "0", "--variants",
            "multvae", "--epochs", "2", "--root", str(root), "--page", str(page), "--no-progress"]
    assert main(argv) == 0
    entry = tmp_path / "page_runs" / "multvae" / "seed0"
    assert sorted(p.name for p in entry.iterdir()) == ["per_user_test.npz", "results.json", "study_run.json"]
    with np.load(entry / "per_user_test.npz") as z:
        assert sorted(z.files) == sorted([analysis.METRIC, "groups"])
    first = (tmp_path / "page.csv").read_text()
    shutil.rmtree(root)
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "restored 1 finished run(s)" in out and "started" not in out
    assert (tmp_path / "page.csv").read_text() == first
    shutil.rmtree(root)
    made = json.loads((entry / "study_run.json").read_text())
    (entry / "study_run.json").write_text(json.dumps({**made, "overrides": {"max_epochs": 9}}))
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "made for other settings" in captured.err and "started multvae/seed0" in captured.out
    assert json.loads((entry / "study_run.json").read_text()) == made  # the new run is recorded


def test_the_page_shows_the_recorded_seeds_not_asked_this_time(tmp_path, capsys):
    """A study spread over sessions, one seed each: the page of ``--seeds 1`` also shows the recorded
    seed 0 (restored, not trained again), and its command names both seeds."""
    import shutil

    root, page = tmp_path / "runs", tmp_path / "page"
    argv = ["ablations", "--dataset", "synthetic", "--experts", "2", "--variants", "multvae",
            "--epochs", "2", "--root", str(root), "--page", str(page), "--no-progress", "--seeds"]
    assert main(argv + ["0"]) == 0
    shutil.rmtree(root)  # the next session: a fresh machine with the committed record
    capsys.readouterr()
    assert main(argv + ["1", "--status"]) == 0  # the time left, at the recorded seed's pace
    out = capsys.readouterr().out
    assert "restored 1 finished run(s)" in out
    assert "0 of 1 runs finished" in out and "h of training left" in out
    assert main(argv + ["1"]) == 0
    out = capsys.readouterr().out
    assert "started multvae/seed1" in out and "started multvae/seed0" not in out
    text = page.with_suffix(".md").read_text()
    assert "| multvae | 2 |" in text and "--seeds 0 1 --variants multvae`" in text
    assert "(2 of 2 planned runs finished; seeds: 0 1)" in text
    assert sorted(p.name for p in (tmp_path / "page_runs" / "multvae").iterdir()) == ["seed0", "seed1"]


def test_a_missing_data_folder_fails_before_any_run_and_keeps_the_page(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("an earlier page")
    argv = ["ablations", "--dataset", "ml-1m", "--seeds", "0", "--variants", "multvae", "--root",
            str(tmp_path / "runs"), "--page", str(tmp_path / "page"), "--no-progress",
            "--data-dir", str(tmp_path / "nope")]
    assert main(argv) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "ml-1m" / "E10" / "multvae" / "seed0").exists()
    assert main(argv + ["--report-only"]) == 0  # nothing finished under this root: no page
    assert "not written" in capsys.readouterr().out and page.read_text() == "an earlier page"


def _fixed(variant, seed, overall, low):
    best = {c: overall for c in analysis.COLUMNS}
    best["low"] = low
    return analysis.RunSummary(variant, seed, best, dict(best), 5, 5, 20, 10.0, 0.3, 2.3, {},
                               np.zeros(3), np.zeros(3, int))


def test_aim_hand_worked():
    tall = [_fixed("tall", s, o, .26) for s, o in enumerate([.33, .34])]
    lmoe = [_fixed("lmoe", s, o, .25) for s, o in enumerate([.335, .337])]  # std .0014
    good = [_fixed("x", s, o, .27) for s, o in enumerate([.336, .337])]  # mean .3365 > .335, std .0007
    a = analysis.aim(good, tall, lmoe)
    assert a.n_seeds == 2 and a.below_reference == () and a.low_vs_rival == pytest.approx(.02)
    assert a.spread == pytest.approx(np.std([.336, .337], ddof=1)) and a.met
    shaky = [_fixed("y", s, o, .27) for s, o in enumerate([.33, .345])]  # mean .3375, std .0106
    assert not analysis.aim(shaky, tall, lmoe).met
    low = [_fixed("z", s, o, .255) for s, o in enumerate([.336, .337])]  # low .255 < tall's .26
    assert analysis.aim(low, tall, lmoe).below_reference == ("low",) and not analysis.aim(low, tall, lmoe).met
    assert not analysis.aim(good[:1], tall, lmoe).met  # one seed has no spread
    assert analysis.aim(good, tall, []) is None
    # F = (.0007 / .0014)^2 = 1/4 on (1, 1) degrees of freedom, whose CDF is (2 / pi) arctan(sqrt x)
    assert a.spread_p == pytest.approx(2 * (2 / np.pi) * np.arctan(0.5), rel=1e-3)


def test_variance_ratio_p_hand_worked():
    # On (2, 2) degrees of freedom the F distribution's CDF is x / (1 + x): F = 3 gives p = 2 / 4
    a, b = [0.0, 1.0, 2.0], [0.0, 3 ** -0.5, 2 * 3 ** -0.5]  # variances 1 and 1/3
    assert analysis.variance_ratio_p(a, b) == pytest.approx(0.5)
    assert analysis.variance_ratio_p(b, a) == pytest.approx(0.5)
    assert np.isnan(analysis.variance_ratio_p([1.0], b)) and np.isnan(analysis.variance_ratio_p([1.0, 1.0], b))


def test_seconds_left_hand_worked(tmp_path):
    runs = {"a": [_fixed("a", 0, .3, .2)], "b": []}  # a: 20 epochs at 10 s each
    assert analysis.seconds_left([("a", 5)], {"a": []}, 1) is None  # nothing finished: no pace
    # a at epoch 5: 15 epochs left; b has no run of its own: the pace of all (20 x 10 s); a past its median: 1
    assert analysis.seconds_left([("a", 5), ("b", 0), ("a", 30)], runs, 2) == pytest.approx(
        (15 * 10 + 20 * 10 + 1 * 10) / 2)
    vs = V.select(V.ablation_variants("ml-1m", 10), ["tall", "lmoe"])
    planned = {r.label: r for r in jobs.plan(vs, [0], tmp_path, "ml-1m", 10)}
    assert jobs.standing(planned["tall/seed0"]).epochs == 0
    assert jobs.standing(planned["lmoe/seed0"]).epochs == 40  # it will start from tall's epoch 40


def test_loss_jump_hand_worked():
    from tall_jax.study.dynamics import loss_jump

    epochs = np.arange(1, 9)
    # gap 2: the lowest loss since the gap is 7 (epoch 4); 8.5 > 1.2 * 7 = 8.4 at epoch 6
    loss = np.array([20.0, 19.0, 8.0, 7.0, 8.3, 8.5, 9.0, 6.0])
    assert loss_jump(epochs, loss, gap=2) == 6
    # epochs up to the gap do not count (20 -> 8 is a fall; 8 * 1.2 = 9.6 is never passed after it)
    assert loss_jump(epochs, np.array([5.0, 20.0, 8.0, 8.0, 9.0, 9.5, 9.0, 8.0]), gap=2) is None
    assert loss_jump(epochs, loss, gap=2, factor=1.25) == 7  # 9.0 > 1.25 * 7 = 8.75
    assert loss_jump(epochs, loss, gap=2, factor=1.3) is None  # 9.0 < 1.3 * 7 = 9.1


def test_jump_table_and_curves(tmp_path):
    from tall_jax.study.dynamics import jump_table, plot_curves

    groups = np.repeat(np.arange(5), 10)
    epochs = np.arange(1, 11)
    runs = {}
    for name, loss in (("tall", [9, 8, 7, 6, 5, 5, 7, 8, 6, 5]), ("lmoe", [9, 8, 7, 6, 5, 5, 5, 4, 4, 4])):
        runs[name] = []
        for seed in range(2):
            r = _summary(name, seed, np.full(50, .3 + .01 * seed), groups)
            r.gap, r.best_epoch = 3, 8 - seed
            r.curve = {"epoch": epochs, "test": 0.3 + 0.001 * epochs, "loss": np.array(loss, float),
                       "w_std": np.where(epochs > 3, 0.1 * epochs, np.nan) if name == "tall" else np.full(10, np.nan)}
            runs[name].append(r)
    rows = {line.split(" | ")[0][2:]: line for line in jump_table(["tall", "lmoe", "none"], runs)[2:]}
    assert set(rows) == {"tall", "lmoe"}
    # tall: 7 > 1.2 * 5 at epoch 7 in both seeds; the epoch before it scores .306; best epochs 8 and 7
    assert rows["tall"] == ("| tall | 2 of 2 | 7.0 ± 0.0 | 7.5 ± 0.7 | 2 of 2 | 0.3060 ± 0.0000 | "
                            "0.3050 ± 0.0071 | 1.00 ± 0.00 |")
    assert rows["lmoe"].startswith("| lmoe | 0 of 2 | – | 7.5 ± 0.7 | 0 of 2 |")
    path = plot_curves(tmp_path / "curves.png", ["tall", "lmoe"], runs, "t")
    assert path is not None and path.stat().st_size > 0
    assert plot_curves(tmp_path / "none.png", ["none"], runs, "t") is None


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    """Ctrl-C in `python -m tall_jax.study` prints "interrupted" (no traceback) and exits 130."""
    from tall_jax.study import __main__ as study_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_cli, "plan", interrupted)
    rc = main(["ablations", "--dataset", "synthetic", "--experts", "2", "--seeds", "0",
               "--root", str(tmp_path / "runs"), "--page", str(tmp_path / "page.md")])
    err = capsys.readouterr().err
    assert rc == 130 and err.strip() == "interrupted"
