"""The two-tower protocol: incremental day-by-day training, disjoint users, early stopping, the one-head
control, the regularisation options, the command line and the study (tiny shapes throughout)."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from tall_jax.two_tower.synthetic import SyntheticConfig, make_synthetic_two_tower
from tall_jax.two_tower.experiment import (TrainConfig, fit_early_stopping, model_spec, run_seed, step_config_of,
                                           train_schedule)
from tall_jax.two_tower.model import TwoTower
from tall_jax.two_tower.steps import TwoTowerConfig, init, make_batch, shared_tower_kernels, two_tower_loss

TINY = dataclasses.replace(SyntheticConfig(), n_users=3000, user_dim=8, item_dim=8, n_global_titles=10,
                           n_local_per_territory=2)
CFG = TrainConfig(width=8, batch_size=512, eval_batch_size=2048, epochs=1, inc_epochs=1, patience=1)


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic_two_tower(TINY, 0)


def _flip_from(data, first_day: int):
    """A copy whose every label (train, validation, test) on days >= first_day is flipped."""
    def flip(p):
        return dataclasses.replace(p, label=(1.0 - p.label).astype(np.float32))

    days = [d if i < first_day else dataclasses.replace(
        d, train_plain=flip(d.train_plain), train_upsampled=flip(d.train_upsampled), valid=flip(d.valid),
        test=flip(d.test)) for i, d in enumerate(data.days)]
    return dataclasses.replace(data, days=days)


def test_synthetic_days_have_their_own_positives_and_disjoint_users(tiny):
    assert len(tiny.days) == TINY.n_train_days + TINY.n_test_days and tiny.first_test_day == TINY.n_train_days
    assert all(d.train_upsampled.n_pos > 0 and d.valid.n_pos > 0 for d in tiny.days)
    assert all(len(d.test) == 0 for d in tiny.days[: tiny.first_test_day])
    assert all(d.test.n_pos > 0 for d in tiny.days[tiny.first_test_day:])
    seen_train = np.unique(np.concatenate([d.train_upsampled.user for d in tiny.days]))
    seen_valid = np.unique(np.concatenate([d.valid.user for d in tiny.days]))
    assert np.intersect1d(seen_train, seen_valid).size == 0
    tests = [np.unique(d.user) for d in tiny.test_days]
    for i, t in enumerate(tests):
        assert np.intersect1d(t, seen_train).size == 0 and np.intersect1d(t, seen_valid).size == 0
        for other in tests[i + 1:]:
            assert np.intersect1d(t, other).size == 0
    # first-time discoveries: a (user, title) is a positive on one day at most
    pos = np.concatenate([np.c_[p.user[p.label > 0], p.item[p.label > 0]] for d in tiny.days
                          for p in (d.train_upsampled, d.valid)])
    assert len(np.unique(pos, axis=0)) == len(pos)
    # plain is a prefix of upsampled, and the days differ
    d0, d1 = tiny.days[0], tiny.days[1]
    np.testing.assert_array_equal(d0.train_upsampled.user[: len(d0.train_plain)], d0.train_plain.user)
    assert not np.array_equal(d0.train_plain.user[:50], d1.train_plain.user[:50])


def test_schedules():
    class D:  # 3 training days + 3 test days
        first_test_day, days = 3, [None] * 6

    assert train_schedule(D, "incremental") == [([0, 1, 2], 2, [3]), ([3], 3, [4]), ([4], 4, [5])]
    assert train_schedule(D, "oneshot") == [([0, 1, 2], 2, [3, 4, 5])]


def test_day_i_model_never_saw_day_i_labels(tiny):
    f = tiny.first_test_day
    ref = run_seed(tiny, CFG, 0, models=("mtl",), progress=False, keep_scores=True)
    assert ref["trained_days"]["mtl"] == [list(range(f)), list(range(f + 1)), list(range(f + 2))]
    # flip every label of day f+1 onwards: the models scored on days f and f+1 must not move at all,
    # the one scored on day f+2 (trained on day f+1) must
    flipped = run_seed(_flip_from(tiny, f + 1), CFG, 0, models=("mtl",), progress=False, keep_scores=True)
    np.testing.assert_array_equal(flipped["scores"]["mtl"][0], ref["scores"]["mtl"][0])
    np.testing.assert_array_equal(flipped["scores"]["mtl"][1], ref["scores"]["mtl"][1])
    assert not np.array_equal(flipped["scores"]["mtl"][2], ref["scores"]["mtl"][2])
    # one-shot: no test day's labels at all
    one = run_seed(_flip_from(tiny, f), dataclasses.replace(CFG, protocol="oneshot"), 0, models=("baseline",),
                   progress=False, keep_scores=True)
    one_ref = run_seed(tiny, dataclasses.replace(CFG, protocol="oneshot"), 0, models=("baseline",),
                       progress=False, keep_scores=True)
    assert one["trained_days"]["baseline"] == [list(range(f))] * 3
    for a, b in zip(one["scores"]["baseline"], one_ref["scores"]["baseline"]):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_keeps_the_best_validation_epoch(tiny):
    from tall_jax.two_tower.experiment import _gather
    from tall_jax.two_tower.metrics import average_precision
    from tall_jax.two_tower.steps import predict_two_tower

    model, _, head = model_spec("baseline", tiny, CFG)
    cfg = dataclasses.replace(CFG, patience=10, learning_rate=3e-2)  # a large step so validation AP moves
    state = init(jax.random.PRNGKey(0), step_config_of(model, cfg), tiny.user_x.shape[1], tiny.item_x.shape[1])
    valid = tiny.days[0].valid
    state, hist = fit_early_stopping(model, state, tiny, tiny.days[0].train_plain, valid, head, cfg, max_epochs=4,
                                     seed=0, start_is_candidate=False, desc="t", progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    got = average_precision(valid.label, predict_two_tower(model, state, _gather(tiny, valid, head), len(valid),
                                                           batch_size=2048))
    assert got == pytest.approx(max(h["valid_ap"] for h in hist), abs=1e-12)
    # patience 1 stops after the first epoch without improvement
    cfg1 = dataclasses.replace(cfg, patience=1)
    _, h1 = fit_early_stopping(model, state, tiny, tiny.days[1].train_plain, tiny.days[1].valid, head, cfg1,
                               max_epochs=6, seed=1, start_is_candidate=True, desc="t", progress=False)
    aps = [h["valid_ap"] for h in h1]
    assert h1[0]["epoch"] == 0 and (len(h1) == 7 or aps[-1] <= max(aps[:-1]))


def test_one_shared_head_control_routes_every_user_to_head_zero(tiny):
    model, which, head = model_spec("mtl_1head", tiny, CFG)
    assert model.n_groups == 1 and which == "upsampled" and np.all(head == 0)
    mtl, _, none = model_spec("mtl", tiny, CFG)
    assert mtl.n_groups == tiny.n_groups == 4 and none is None
    state = init(jax.random.PRNGKey(0), TwoTowerConfig(model), 8, 8)
    assert state.params["head_kernel"].shape == (1, 8, 8)


def test_regularisation_options_keep_the_heads_isolated():
    rng = np.random.default_rng(0)
    n, g = 16, 3
    batch = make_batch(rng.normal(size=(n, 5)), rng.normal(size=(n, 4)), rng.integers(0, 2, n).astype(np.float32),
                       np.zeros(n, np.int32), n)  # every example of group 0
    model = TwoTower(n_groups=g, width=8, head_rank=2, head_dropout=0.5)
    state = init(jax.random.PRNGKey(0), TwoTowerConfig(model, weight_decay=0.1), 5, 4)
    assert state.params["head_a"].shape == (g, 8, 2) and state.params["head_b"].shape == (g, 2, 8)
    loss_fn = jax.jit(lambda p, key: two_tower_loss(p, state.batch_stats, batch, model=model, rng=key)[0])
    grads = jax.jit(jax.grad(loss_fn))(state.params, jax.random.PRNGKey(1))
    for k in ("head_a", "head_b", "head_bias"):
        assert np.all(np.asarray(grads[k])[1:] == 0.0) and np.abs(np.asarray(grads[k])[0]).sum() > 0
    # dropout acts in train mode only, and depends on the key
    l1, l2 = loss_fn(state.params, jax.random.PRNGKey(1)), loss_fn(state.params, jax.random.PRNGKey(2))
    assert float(l1) != float(l2)
    apply = jax.jit(lambda v: model.apply(v, batch.user_x, batch.item_x, train=False))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    np.testing.assert_array_equal(np.asarray(apply(variables)), np.asarray(apply(variables)))
    # weight decay masks exactly the shared towers' Dense kernels
    mask = shared_tower_kernels(state.params)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert {k for k, v in flat.items() if v} == {f"{t}/dense_{i}/kernel" for t in ("user_tower", "item_tower")
                                                for i in range(2)}


# ----------------------------------------------------------------------------------------------- CLI


def _parse(argv):
    from tall_jax.two_tower.cli import check_args, make_parser

    p = make_parser("t", default_seeds=[0])
    return check_args(p, p.parse_args(argv))


def test_cli_seed_spellings_presets_and_no_abbreviations(capsys):
    assert _parse(["--dataset", "synthetic", "--seed", "3"]).seeds == [3]
    assert _parse(["--dataset", "synthetic", "--seed", "3", "4"]).seeds == [3, 4]
    assert _parse(["--dataset", "synthetic", "--seeds", "5", "6"]).seeds == [5, 6]
    assert "deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _parse(["--dataset", "synthetic", "--see", "3"])  # no silent prefix matching
    assert e.value.code == 2
    a = _parse(["--dataset", "synthetic"])
    assert (a.width, a.batch_size, a.epochs, a.protocol) == (128, 1024, 8, "incremental")
    b = _parse(["--dataset", "synthetic", "--preset", "paper"])
    assert (b.width, b.batch_size) == (512, 8192)
    c = _parse(["--dataset", "synthetic", "--preset", "paper", "--batch-size", "256"])
    assert (c.width, c.batch_size) == (512, 256)
    with pytest.raises(SystemExit) as e:
        _parse(["--dataset", "synthetic", "--head-dropout", "1.0"])
    assert e.value.code == 2


def test_cli_help_states_a_default_for_every_flag():
    from tall_jax.two_tower.cli import make_parser

    p = make_parser("t", default_seeds=[0])
    for action in p._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "%(default)s" not in action.help, action.option_strings
    text = p.format_help()
    assert text.count("(default:") >= len([a for a in p._actions if a.option_strings]) - 1


def test_cli_error_hint_names_no_foreign_flags():
    from tall_jax.two_tower.cli import user_error_message

    msg = user_error_message(ValueError("x not found. Not downloading it: offline (download=False; CLI --offline "
                                        "or TALL_JAX_OFFLINE=1). "), "train_two_tower.py")
    assert "--offline" not in msg and "train_two_tower.py never downloads" in msg


@pytest.fixture(autouse=True, scope="module")
def _example_module():
    """Import examples/train_two_tower.py as a module for the CLI tests."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "train_two_tower.py"
    spec = importlib.util.spec_from_file_location("examples_train_two_tower", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["examples_train_two_tower"] = mod
    yield
    sys.modules.pop("examples_train_two_tower", None)


def test_example_exits_2_on_missing_data_and_lets_real_errors_surface(tmp_path, capsys, monkeypatch):
    import examples_train_two_tower as ex
    from tall_jax.two_tower.cli import run_main

    monkeypatch.setenv("TALL_JAX_DATA", str(tmp_path))
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as e:
        run_main(lambda: ex.main(["--dataset", "ml-1m", "--data-dir", str(tmp_path), "--no-progress",
                                  "--out", str(tmp_path / "o")]), "train_two_tower.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and "ratings.dat" in err and "--data-dir" in err
    # an AttributeError inside the embedding code is not turned into a silent SVD fallback
    import tall_jax.two_tower.embedding as embedding
    import tall_jax.two_tower.ml1m.days as days

    def broken(*a, **k):
        raise AttributeError("broken MultVAE API")

    monkeypatch.setattr(embedding, "multvae_user_embedding", broken)
    monkeypatch.setattr(days, "read_timed_ratings", lambda d: (np.array([[1, 1, 5, 100], [1, 2, 5, 200],
                                                                         [2, 1, 4, 300], [2, 2, 3, 400]]), tmp_path))
    with pytest.raises(AttributeError, match="broken MultVAE API"):
        ex.main(["--dataset", "ml-1m", "--user-embedding", "multvae", "--no-progress", "--out", str(tmp_path / "o")])


# --------------------------------------------------------------------------------------------- study


def test_study_is_resumable_and_writes_the_page(tmp_path, monkeypatch):
    from tall_jax.two_tower import study

    argv = ["--dataset", "synthetic", "--seed", "1", "--n-users", "2000", "--width", "8", "--batch-size", "512",
            "--epochs", "1", "--inc-epochs", "1", "--no-progress", "--runs", str(tmp_path / "runs"),
            "--doc", str(tmp_path / "page.md")]
    assert study.main(argv) == 0
    page = (tmp_path / "page.md").read_text()
    for needle in ("Relative AP gain % per territory", "MTL, one shared head", "Score histogram", "p ",
                   "MTL beats the single global model", "Minor territories gain more", "local titles",
                   "Relative AP gain % by territory size"):
        assert needle in page, needle
    rec = json.loads((tmp_path / "runs" / "seed1.json").read_text())
    assert rec["settings"]["models"] == ["baseline", "baseline_up", "mtl", "mtl_1head"]
    # a rerun trains nothing
    monkeypatch.setattr("tall_jax.two_tower.study.run_seed", lambda *a, **k: pytest.fail("retrained a seed"))
    assert study.main(argv) == 0
    # other settings: refused unless --fresh
    with pytest.raises(ValueError, match="other settings"):
        study.main(argv[:-4] + ["--alpha", "3", "--runs", str(tmp_path / "runs"), "--doc", str(tmp_path / "p2.md")])


def test_paired_test_matches_scipy():
    from scipy import stats

    from tall_jax.two_tower.study_page import compare

    rng = np.random.default_rng(0)
    ref = rng.random((5, 3, 2)) * 0.5 + 0.2
    new = ref * 1.1 + rng.normal(size=ref.shape) * 0.01
    r = compare({"a": new, "b": ref}, "a", "b")
    for k in range(2):
        assert r["p"][k] == pytest.approx(stats.ttest_rel(new[:, :, k].mean(1), ref[:, :, k].mean(1)).pvalue)
    assert np.all(r["mean"] > 5) and r["per_seed"].shape == (5, 2)


def test_gain_by_size_against_a_hand_worked_example():
    from scipy import stats

    from tall_jax.two_tower.study_page import gain_by_size

    # 2 seeds, 5 territories of sizes 50, 10, 30, 20, 40 -> runs {10, 20, 30} and {40, 50}; one NaN cell
    gain_SxT = np.array([[1.0, 2.0, 4.0, 6.0, 8.0], [3.0, 0.0, np.nan, -2.0, 2.0]])
    r = gain_by_size(gain_SxT, np.array([50.0, 10.0, 30.0, 20.0, 40.0]), 2)
    assert [list(b["territories"]) for b in r] == [[1, 3, 2], [4, 0]]
    assert (r[0]["size_lo"], r[0]["size_hi"], r[1]["size_lo"], r[1]["size_hi"]) == (10, 30, 40, 50)
    small_S, large_S = np.array([(2 + 6 + 4) / 3, (0 - 2) / 2]), np.array([(8 + 1) / 2, (2 + 3) / 2])
    assert r[0]["mean"] == pytest.approx(small_S.mean()) and r[1]["mean"] == pytest.approx(large_S.mean())
    assert r[0]["std"] == pytest.approx(small_S.std(ddof=1))
    assert r[0]["p"] == pytest.approx(stats.ttest_1samp(small_S, 0.0).pvalue)
    # territory means over seeds: 1 -> 1.0, 3 -> 2.0, 2 -> 4.0 (one seed), 4 -> 5.0, 0 -> 2.0
    assert (r[0]["up"], r[0]["n"], r[1]["up"], r[1]["n"]) == (3, 3, 2, 2)


# ------------------------------------------------------------------------------------ ML-1M, real data


def test_ml1m_days_come_from_timestamps_and_test_users_are_disjoint(shared_data):
    from tall_jax.two_tower.ml1m import make_ml1m_days, read_timed_ratings

    data = make_ml1m_days(shared_data, seed=0)
    arr, _ = read_timed_ratings(shared_data)
    assert len(data.days) == 8 and data.n_test_days == 3
    edges = np.r_[-np.inf, data.info["day_edges_ts"], np.inf]
    ts_of = {(int(u) - 1, int(m)): int(t) for u, m, _, t in arr}
    movies = np.unique(arr[:, 1])
    for i, d in enumerate(data.days):
        for p in (d.train_upsampled, d.valid, d.test):
            pos = p.label > 0
            ts = np.array([ts_of[(int(u), int(movies[t]))] for u, t in zip(p.user[pos][:300], p.item[pos][:300])])
            assert np.all((ts >= edges[i]) & (ts < edges[i + 1]) | (ts == edges[i + 1]))
    train_u = np.unique(np.concatenate([d.train_upsampled.user for d in data.days] + [d.valid.user for d in data.days]))
    tests = [np.unique(t.user) for t in data.test_days]
    assert all(len(t) > 0 and np.intersect1d(t, train_u).size == 0 for t in tests)
    assert all(np.intersect1d(a, b).size == 0 for i, a in enumerate(tests) for b in tests[i + 1:])
    assert {c["kind"] for c in data.case_titles} == {"local", "global"}
