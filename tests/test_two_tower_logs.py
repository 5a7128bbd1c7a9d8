"""Your own logs for the two-tower models (docs/two_tower.md#your-own-logs): ``--data`` end to end, one
``error: FILE:LINE: reason`` line per bad input with nothing written, groups, the cache, streaming equal
to the in-memory path, and the synthetic log generator read back."""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from tall_jax.two_tower.log_cache import build_log_cache
from tall_jax.two_tower.log_days import LogProtocol, groups_by_size, groups_from_map, make_log_two_tower
from tall_jax.two_tower.shards import Chain, Column, NpyWriter, Rows, block_order
from tall_jax.two_tower.steps import prefetch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_two_tower.py"
HEADER = "user,title,territory,day"


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("examples_train_two_tower_logs", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "cache"))


def tiny_log(path: Path, n_users: int = 90, days: int = 5) -> Path:
    """A small log without labels: two territories (north large, south small), each user on every day
    with three titles its territory likes (north: n*, south: s*, both: g*)."""
    rng = np.random.default_rng(7)
    lines = [HEADER]
    for d in range(days):
        day = (dt.date(2024, 3, 1) + dt.timedelta(days=d)).isoformat()
        for u in range(1, n_users + 1):
            terr = "north" if u <= 2 * n_users // 3 else "south"
            liked = [f"{terr[0]}{k}" for k in range(6)] + ["g0", "g1", "g2"]
            for t in rng.choice(liked, 3, replace=False):
                lines.append(f"{u},{t},{terr},{day}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _fails(ex, argv, capsys) -> str:
    from tall_jax.two_tower.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(lambda: ex.main(argv), "train_two_tower.py")
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


TRAIN = ["--width", "16", "--batch-size", "256", "--epochs", "1", "--inc-epochs", "1", "--no-progress"]


def test_a_tiny_log_trains_end_to_end(ex, tmp_path):
    log = tiny_log(tmp_path / "log.csv")
    assert ex.main(["--data", str(log), "--seed", "0", "--n-groups", "2", "--out", "o", *TRAIN]) == 0
    rec = json.loads((tmp_path / "o" / "two_tower_results.json").read_text())
    assert rec["dataset"] == "log" and rec["territories"] == ["north", "south"]
    for model in ("baseline", "baseline_up", "mtl"):
        ap = rec["ap"]["territory"][model]["mean"]
        assert len(ap) == 2 and all(0 <= a <= 1 for a in ap), ap
    info = rec["data_info"][0]
    assert info["user_input"] == "learned id embedding" and info["days"][-1]["is_test"]
    assert info["days"][0]["n_users_added_active"] == 0  # no history before day 0: nobody active
    assert any(d["n_users_added_active"] > 0 for d in info["days"][1:])


BAD = [
    (f"{HEADER},color\n1,a,X,0,red\n", ":1: unknown column 'color'"),
    ("user,title,day\n1,a,0\n", ":1: missing column 'territory'"),
    (f"{HEADER}\nx,a,X,0\n", ":2: user 'x' is not an integer"),
    (f"{HEADER}\n1.5,a,X,0\n", ":2: user '1.5' is not an integer"),
    (f"{HEADER}\n1,a,X,0\n2,a,X,yesterday\n", ":3: day 'yesterday'"),
    (f"{HEADER}\n1,a,X,0\n2,a,X,2024-01-02\n", ":3: day '2024-01-02' is a date"),
    (f"{HEADER}\n1,a,X,2024-13-02\n", ":2:"),
    (f"{HEADER},label\n1,a,X,0,1\n1,b,X,0,2\n", ":3: label '2' is not 0 or 1"),
    ("", ":1: empty file"),
    (f"{HEADER}\n", ":2: no rows after the header"),
    (f"{HEADER}\n1,a,X\n", ":2: 3 fields, not 4"),
    (f"{HEADER}\n1,,X,0\n", ":2: empty title"),
    (f"{HEADER}\n1,a,X,0\n\n1,b,Y,1\n", ":4: user 1 is in territory 'Y' here but 'X'"),
    (b"user,title,territory,day\n1,a,X,0\n2,caf\xe9,X,0\n", ":3: not UTF-8"),
]


@pytest.mark.parametrize("content, expected", BAD, ids=[b[1] for b in BAD])
def test_a_bad_log_is_one_line_with_file_and_line(ex, tmp_path, capsys, content, expected):
    log = tmp_path / "bad.csv"
    log.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = _fails(ex, ["--data", str(log), "--out", "o", *TRAIN], capsys)
    assert line.startswith(f"error: {log}:") and expected in line, line
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, expected", [
    ([], "give one of --dataset"),
    (["--dataset", "synthetic", "--data", "x.csv"], "give one of --dataset"),
    (["--dataset", "synthetic", "--groups", "g.csv"], "--groups applies to --data only"),
    (["--data", "x.csv", "--data-dir", "."], "--data-dir applies to --dataset ml-1m only"),
    (["--data", "x.csv", "--test-days", "0"], "--test-days must be >= 1"),
    (["--data", "x.csv", "--user-features-on-disk"], "--user-features-on-disk applies to --user-features only"),
])
def test_log_flag_errors(ex, capsys, argv, expected):
    assert expected in _fails(ex, argv, capsys)


def test_errors_in_a_folder_name_the_file(ex, tmp_path, capsys):
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "a.csv").write_text(f"{HEADER}\n1,a,X,0\n")
    (tmp_path / "log" / "b.csv").write_text(f"{HEADER},label\n1,a,X,1,1\n")
    line = _fails(ex, ["--data", str(tmp_path / "log"), "--out", "o", *TRAIN], capsys)
    assert f"{tmp_path / 'log' / 'b.csv'}:1: has label column" in line
    (tmp_path / "empty").mkdir()
    assert "no .csv" in _fails(ex, ["--data", str(tmp_path / "empty"), *TRAIN], capsys)
    assert "no such file" in _fails(ex, ["--data", str(tmp_path / "nowhere.csv"), *TRAIN], capsys)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_feature_and_group_file_errors(ex, tmp_path, capsys):
    log = tiny_log(tmp_path / "log.csv", n_users=20, days=4)
    np.save(tmp_path / "t.npy", np.ones((2, 3), np.float32))
    (tmp_path / "t.ids").write_text("n0\nn1\n")
    line = _fails(ex, ["--data", str(log), "--title-features", str(tmp_path / "t.npy"), "--out", "o", *TRAIN], capsys)
    assert f"{tmp_path / 't.ids'}: title" in line and "has no vector" in line
    (tmp_path / "t.ids").write_text("n0\n")
    line = _fails(ex, ["--data", str(log), "--title-features", str(tmp_path / "t.npy"), *TRAIN], capsys)
    assert f"{tmp_path / 't.ids'}:1: 1 ids for 2 rows" in line
    np.save(tmp_path / "u.npy", np.ones((4, 2), np.float32))
    for ids, expected in (("1\n2\n7\n2\n", ":4: id '2' appears twice"), ("1\n2\n3\n4\n", ": user '5' of the log has no vector"),
                          ("1\nx\n3\n4\n", ":2: user id 'x' is not an integer")):
        (tmp_path / "u.ids").write_text(ids)
        line = _fails(ex, ["--data", str(log), "--user-features", str(tmp_path / "u.npy"), *TRAIN], capsys)
        assert f"{tmp_path / 'u.ids'}{expected}" in line, line
    np.save(tmp_path / "u.npy", np.array([[1.0, 2.0], [1.0, 2.0], [3.0, np.inf], [4.0, 5.0]], np.float32))
    line = _fails(ex, ["--data", str(log), "--user-features", str(tmp_path / "u.npy"), *TRAIN], capsys)
    assert f"{tmp_path / 'u.npy'}:3: row of id '3' is not finite" in line, line
    (tmp_path / "g.csv").write_text("territory,group\nnorth,A\n")
    line = _fails(ex, ["--data", str(log), "--groups", str(tmp_path / "g.csv"), *TRAIN], capsys)
    assert "territory 'south' of the log has no group" in line
    (tmp_path / "g.csv").write_text("territory,group\nnorth,A\nnorth,B\n")
    assert f"{tmp_path / 'g.csv'}:3: territory 'north' appears twice" in _fails(
        ex, ["--data", str(log), "--groups", str(tmp_path / "g.csv"), *TRAIN], capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()


def test_parquet_logs_read_like_csv_and_name_the_row(ex, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    log = tiny_log(tmp_path / "log.csv", n_users=20, days=4)
    rows = [line.split(",") for line in log.read_text().splitlines()[1:]]
    table = pa.table({"user": [int(r[0]) for r in rows], "title": [r[1] for r in rows],
                      "territory": [r[2] for r in rows], "day": [dt.date.fromisoformat(r[3]) for r in rows]})
    pq.write_table(table, tmp_path / "log.parquet")
    a = build_log_cache(log, tmp_path / "c1", progress=False)
    b = build_log_cache(tmp_path / "log.parquet", tmp_path / "c2", progress=False)
    for name in ("user", "title", "day", "label"):
        np.testing.assert_array_equal(np.asarray(a.column(name)), np.asarray(b.column(name)))
    assert a.manifest["days"] == b.manifest["days"] and a.manifest["titles"] == b.manifest["titles"]
    bad = table.append_column("label", pa.array([1] * (len(rows) - 1) + [3]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    line = _fails(ex, ["--data", str(tmp_path / "bad.parquet"), *TRAIN], capsys)
    assert f"{tmp_path / 'bad.parquet'}:{len(rows)}: label 3 is not 0 or 1" in line


def test_groups_by_size_and_from_a_map():
    users_T = np.array([5, 50, 20, 1, 20])
    names = ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(groups_by_size(users_T, names, 2), [1, 0, 0, 1, 0])  # b, c, e | a, d
    np.testing.assert_array_equal(groups_by_size(users_T, names, 5), [3, 0, 1, 4, 2])
    with pytest.raises(ValueError, match="--n-groups 6"):
        groups_by_size(users_T, names, 6)
    group_T, group_names = groups_from_map({"a": "Y", "b": "X", "c": "Y", "d": "X", "e": "Z", "f": "W"}, names, "g.csv")
    assert group_names == ["Y", "X", "Z"] and group_T.tolist() == [0, 1, 0, 1, 2]


def test_the_cache_is_reused_and_rebuilt_when_the_log_changes(tmp_path):
    log = tiny_log(tmp_path / "log.csv", n_users=20, days=4)
    first = build_log_cache(log, progress=False)
    assert first.rebuilt and first.n_rows == 20 * 4 * 3
    again = build_log_cache(log, progress=False)
    assert not again.rebuilt and again.folder == first.folder
    with open(log, "a") as f:
        f.write("21,n0,north,2024-03-01\n")
    changed = build_log_cache(log, progress=False)
    assert changed.rebuilt and changed.n_rows == first.n_rows + 1 and changed.n_users == 21
    assert [p.name for p in changed.folder.parent.iterdir()] == [changed.folder.name]  # no temporaries left


def test_columns_chains_and_block_order(tmp_path):
    w = NpyWriter(tmp_path / "a.npy", np.int32)
    for k in range(5):
        w.append(np.arange(k * 1000, (k + 1) * 1000))
    w.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(5000))
    col = Column(tmp_path / "a.npy", window=700)
    idx = np.random.default_rng(0).integers(0, 5000, 300)
    np.testing.assert_array_equal(col[idx], idx)
    assert col.sum() == np.arange(5000).sum() and len(col) == 5000
    chain = Chain([col, np.arange(10)])
    np.testing.assert_array_equal(chain[np.array([4999, 5000, 5009, 3])], [4999, 0, 9, 3])
    batches = list(block_order(5000, 64, np.random.default_rng(1), window=700))
    assert all(len(b) == 64 for b in batches[:-1]) and len(batches) == -(-5000 // 64)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(5000))
    assert all(len(np.unique(b // 700)) <= 2 for b in batches)  # one or two windows per batch


def test_prefetch_keeps_order_and_raises_the_producers_error():
    assert list(prefetch(iter(range(20)), 3)) == list(range(20))

    def broken():
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(prefetch(broken(), 2))


@pytest.mark.parametrize("window", [None, 16])
def test_streamed_examples_and_training_equal_the_in_memory_path(tmp_path, monkeypatch, window):
    from tall_jax.two_tower import shards
    from tall_jax.two_tower.data import concat_pairs
    from tall_jax.two_tower.experiment import TrainConfig, _gather, model_spec, step_config_of
    from tall_jax.two_tower.steps import init, iterate_batches, train_two_tower

    if window:  # many windows: reads and shuffles cross window and file boundaries
        monkeypatch.setattr(shards, "WINDOW", window)
    cache = build_log_cache(tiny_log(tmp_path / "log.csv"), progress=False)
    kw = dict(group_T=np.array([0, 1]), group_names=["G1", "G2"])
    disk = make_log_two_tower(cache, LogProtocol(), 0, **kw)
    mem = make_log_two_tower(cache, LogProtocol(), 0, in_memory=True, **kw)
    assert isinstance(disk.days[0].train_upsampled.user, Chain)
    for a, b in zip(disk.days, mem.days):
        for part in ("train_plain", "train_upsampled", "valid", "test"):
            for c in ("user", "item", "label"):
                np.testing.assert_array_equal(np.asarray(getattr(getattr(a, part), c)), getattr(getattr(b, part), c))
    cfg = TrainConfig(width=8, batch_size=64)
    model, _, _ = model_spec("mtl", disk, cfg)
    runs = []
    for data, stream in ((disk, dict(order=block_order, prefetch_depth=2)), (mem, dict(order=block_order)),
                         (mem, dict(order=iterate_batches))):
        train = concat_pairs([d.train_upsampled for d in data.days[:2]])
        assert window is None or len(train) > 8 * window
        state = init(jax.random.PRNGKey(0), step_config_of(model, cfg), 1, 1)
        state, losses = train_two_tower(step_config_of(model, cfg), state, _gather(data, train, None), len(train),
                                        epochs=2, batch_size=64, seed=3, progress=False, **stream)
        runs.append((jax.tree.leaves(state.params), losses))
    # on disk + prefetched == in memory, batch for batch; below one window block_order is the full permutation
    (p0, l0), (p1, l1), (p2, l2) = runs
    assert l0 == l1 and (l0 == l2) == (window is None)
    for a, b in zip(p0, p1):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_generator_reads_back_through_data(ex, tmp_path):
    from tall_jax.two_tower.cli import make_builder
    from tall_jax.two_tower.synthetic_log import main as generate

    assert generate(["--out", "g", "--examples", "5000", "--territories", "8", "--titles", "40", "--days", "5",
                     "--title-dim", "8", "--no-progress"]) == 0
    info = json.loads((tmp_path / "g" / "info.json").read_text())
    assert info["examples"] == 5000 and info["positives"] == 1000 and len(list((tmp_path / "g" / "log").iterdir())) == 5
    argv = ["--data", "g/log", "--title-features", "g/titles.npy", "--groups", "g/groups.csv", "--seed", "0", *TRAIN]
    data = make_builder(ex.parse_args(argv))(0)
    m = build_log_cache("g/log").manifest
    assert m["rows"] == 5000 and m["positives"] == 1000 and m["has_label"] and len(m["days"]) == 5
    assert data.item_x.shape == (len(m["titles"]), 8) and data.item_vocab == 0 and data.user_vocab == m["users"]
    # the generated user vectors cover every user of the log (the universe, written as id + 1)
    ids = (tmp_path / "g" / "users.ids").read_text().split()
    assert np.load(tmp_path / "g" / "users.npy").shape == (len(ids), 32) and ids[0] == "1"
    data = make_builder(ex.parse_args([*argv, "--user-features", "g/users.npy"]))(0)
    assert data.user_x.shape == (m["users"], 32) and data.user_vocab == 0
    assert set(data.group_names) <= {"G1", "G2", "G3", "G4"}
    n = sum(len(d.train_plain) + len(d.train_upsampled) - len(d.train_plain) + len(d.valid) + len(d.test)
            for d in data.days)
    assert 0 < n <= 5000  # every example used at most once (a test user's other days are dropped)
    if importlib.util.find_spec("pyarrow"):  # the same log as Parquet reads back to the same columns
        assert generate(["--out", "p", "--examples", "5000", "--territories", "8", "--titles", "40", "--days", "5",
                         "--title-dim", "8", "--no-progress", "--format", "parquet"]) == 0
        a, b = build_log_cache("g/log", progress=False), build_log_cache("p/log", progress=False)
        for name in ("user", "title", "day", "label"):
            np.testing.assert_array_equal(np.asarray(a.column(name)), np.asarray(b.column(name)))


def test_sampled_negatives_are_never_positives_and_pools_are_disjoint(tmp_path):
    log = tiny_log(tmp_path / "log.csv")
    cache = build_log_cache(log, progress=False)
    data = make_log_two_tower(cache, LogProtocol(alpha=2.0), 1, group_T=np.array([0, 1]), group_names=["a", "b"],
                              in_memory=True)
    i_n = len(cache.manifest["titles"])
    pos = set((np.asarray(cache.column("user")).astype(np.int64) * i_n + np.asarray(cache.column("title"))).tolist())
    terr_U = data.user_territory
    avail = cache.array("avail_TxI")
    for day in data.days:
        for p in (day.train_upsampled, day.valid, day.test):
            neg = p.label == 0
            assert not set((p.user[neg].astype(np.int64) * i_n + p.item[neg]).tolist()) & pos
            assert avail[terr_U[p.user[neg]], p.item[neg]].all()  # titles of the user's territory
            assert neg.sum() <= 2 * p.n_pos  # alpha per positive, minus the draws that were positives
    assert sum(int((d.train_upsampled.label == 0).sum()) for d in data.days) > 0
    users = lambda part: set(np.concatenate([getattr(d, part).user for d in data.days]).tolist())  # noqa: E731
    train, valid, test = users("train_upsampled"), users("valid"), users("test")
    assert train and valid and test and not (train & valid) and not (train & test) and not (valid & test)
    tests = [set(d.test_users.tolist()) for d in data.days[data.first_test_day:]]
    assert all(not (a & b) for i, a in enumerate(tests) for b in tests[i + 1:])


def test_user_features_replace_the_user_id_embedding(ex, tmp_path):
    from tall_jax.two_tower.cli import make_builder

    log = tiny_log(tmp_path / "log.csv", n_users=30, days=4)
    np.save(tmp_path / "u.npy", np.arange(31 * 3, dtype=np.float32).reshape(31, 3))
    (tmp_path / "u.ids").write_text("".join(f"{u}\n" for u in range(31, 0, -1)))  # any order, one extra
    argv = ["--data", str(log), "--user-features", str(tmp_path / "u.npy"), "--seed", "0", *TRAIN]
    data = make_builder(ex.parse_args(argv))(0)
    ids = build_log_cache(log).array("user_ids")
    assert data.user_vocab == 0 and data.item_vocab > 0 and data.user_x.shape == (30, 3)
    np.testing.assert_array_equal(data.user_x[:, 0], (31 - ids) * 3)  # the row of each user's id
    # --user-features-on-disk: read by row, in any order and shape, as the table in memory gives them
    disk = make_builder(ex.parse_args([*argv, "--user-features-on-disk"]))(0).user_x
    assert isinstance(disk, Rows) and disk.shape == (30, 3) and disk[7].shape == (3,)
    idx = np.array([[5, 0], [29, 5]])
    np.testing.assert_array_equal(disk[idx], data.user_x[idx])
    np.testing.assert_array_equal(np.asarray(disk), data.user_x)


def test_the_study_runs_on_a_log_and_its_page_names_no_local_path(tmp_path):
    from tall_jax.two_tower import study

    log = tiny_log(tmp_path / "log.csv", n_users=60, days=4)
    assert study.main(["--data", str(log), "--seed", "0", "--doc", "page.md", *TRAIN]) == 0
    page = (tmp_path / "page.md").read_text()
    assert "--data PATH" in page and str(tmp_path) not in page and "log.csv@" in page
    assert "Not testable on this data: every group has one territory" in page  # two territories, two groups
    assert "averaged over the three test days" in page
    assert study.main(["--data", str(log), "--seed", "0", "--doc", "p2.md", "--runs", "r2", "--test-days", "2",
                       *TRAIN]) == 0
    assert "averaged over the 2 test days" in (tmp_path / "p2.md").read_text()  # per day: divided by 2, not 3


def test_validation_and_test_examples_scored_from_disk_equal_them_in_memory(tmp_path):
    """A log's validation and test examples stay on disk and are read when scored: the whole protocol
    (early stopping on validation AP, test AP per territory and group) equals it with them in memory."""
    from tall_jax.two_tower.experiment import TrainConfig, run_seed

    cache = build_log_cache(tiny_log(tmp_path / "log.csv"), progress=False)
    disk = make_log_two_tower(cache, LogProtocol(), 0, group_T=np.array([0, 1]), group_names=["G1", "G2"])
    assert isinstance(disk.days[0].valid.label, Column) and isinstance(disk.days[-1].test.user, Column)
    mem = dataclasses.replace(disk, days=[dataclasses.replace(d, valid=d.valid.in_memory(), test=d.test.in_memory())
                                          for d in disk.days])
    cfg = TrainConfig(width=8, batch_size=64, epochs=2, inc_epochs=1, eval_batch_size=96)
    a, b = (run_seed(data, cfg, 0, models=("baseline", "mtl"), progress=False) for data in (disk, mem))
    for key in ("ap_territory", "ap_group", "ap_all"):
        for m in ("baseline", "mtl"):
            np.testing.assert_array_equal(a[key][m], b[key][m])
    assert a["history"] == b["history"] and np.isfinite(a["ap_all"]["mtl"]).any()  # (later test days: no users)


def test_the_data_digest_of_a_log_is_the_same_in_every_build(ex, tmp_path):
    """Day checkpoints are refused for other data (resume.digest): on-disk columns and feature rows must
    hash as their files, not as the objects' addresses, or a killed study on a log never resumes."""
    from tall_jax.two_tower.cli import make_builder
    from tall_jax.two_tower.resume import digest

    log = tiny_log(tmp_path / "log.csv", n_users=30, days=4)
    np.save(tmp_path / "u.npy", np.arange(30 * 3, dtype=np.float32).reshape(30, 3))
    (tmp_path / "u.ids").write_text("".join(f"{u}\n" for u in range(1, 31)))
    argv = ["--data", str(log), "--user-features", str(tmp_path / "u.npy"), "--user-features-on-disk", "--seed", "0",
            *TRAIN]
    a, b = (make_builder(ex.parse_args(argv))(0) for _ in range(2))
    assert isinstance(a.days[0].train_plain.user, Column) and isinstance(a.days[0].train_upsampled.user, Chain)
    assert digest(a) == digest(b)
    assert digest(a) != digest(make_builder(ex.parse_args(argv))(1))  # another seed: other examples
