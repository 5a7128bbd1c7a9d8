"""Your own interaction file: formats, columns, ratings, line errors, and a tiny run end to end."""
from __future__ import annotations

import hashlib

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tall_jax.configs import make_config
from tall_jax.datasets import OwnData, load_dataset, read_interactions, register_dataset
from tall_jax.protocol import dataset_groups

EXAMPLE = Path(__file__).parent / "data" / "interactions.csv"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "usercache"))
    monkeypatch.delenv("TALL_JAX_DATA", raising=False)
    monkeypatch.delenv("TALL_JAX_OFFLINE", raising=False)


def _interactions(n_users: int = 50, n_items: int = 40, per_user: int = 14, seed: int = 0):
    """(user, item, rating) rows with string ids; every user and item well above a 10-core."""
    rng = np.random.default_rng(seed)
    return [(f"user {u:03d}@x", f"item-{chr(65 + i % 26)}{i}", int(rng.integers(1, 6)))
            for u in range(n_users) for i in rng.permutation(n_items)[:per_user]]


def test_shipped_example_file():
    assert len(EXAMPLE.read_text(encoding="utf-8").splitlines()) == 10
    users, items, user_ids, item_ids, stats = read_interactions(OwnData(EXAMPLE))
    assert user_ids == ["alice", "bob", "carol@example.com", "u-0042"]
    assert "Spirited Away, 2001" in item_ids and "Amélie" in item_ids  # quoted comma, utf-8
    assert users.size == 9 and stats["columns"] == ["user", "item", "rating", "timestamp"]
    kept = read_interactions(OwnData(EXAMPLE, min_rating=4))
    assert kept[0].size == 6 and kept[4]["below_min_rating"] == 3


@pytest.mark.parametrize("suffix, sep", [(".tsv", "\t"), (".dat", "::"), (".dat.gz", "::")])
def test_tsv_dat_and_gz_with_columns(tmp_path, suffix, sep):
    text = "".join(f"{t}{sep}{u}{sep}{i}{sep}{r}\n" for u, i, r, t in
                   [("a", "x", 5, 1), ("b", "x", 1, 2), ("a", "y", 4, 3), ("a", "x", 2, 4)])
    path = tmp_path / f"r{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    spec = OwnData(path, columns="timestamp,user,item,rating")
    users, items, user_ids, item_ids, stats = read_interactions(spec)
    assert user_ids == ["a", "b"] and item_ids == ["x", "y"]
    np.testing.assert_array_equal(users, [0, 1, 0])  # the repeated (a, x) keeps the first
    assert stats["duplicates_dropped"] == 1
    users, _, _, _, _ = read_interactions(OwnData(path, columns="skip,user,item,rating", min_rating=4))
    assert users.size == 2


def test_header_aliases_and_ignored_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("movieId,extra,UserID,Rating\nm1,?,u1,3\nm2,?,u1,5\n")
    users, items, user_ids, item_ids, stats = read_interactions(OwnData(path, min_rating=4))
    assert stats["columns"] == ["item", "skip", "user", "rating"] and item_ids == ["m2"]


@pytest.mark.parametrize("text, options, lineno, reason", [
    ("user,item\na,b\nc\n", {}, 3, "1 fields, not 2"),
    ("user,item,rating\na,b,5\nc,d,five\n", {}, 3, "is not a number"),
    ("user,item\na,b\n,d\n", {}, 3, "empty user id"),
    ("u,i,r\n1,2,3\n", {"columns": "user,item,rating"}, 1, "is not a number"),  # header + --columns
    ("name,thing\na,b\n", {}, 1, "not a header naming a user and an item"),
    ('user,item\n"a,b\n', {}, 2, "cannot parse"),
])
def test_bad_lines_name_file_line_and_reason(tmp_path, text, options, lineno, reason):
    path = tmp_path / "bad_own.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        read_interactions(OwnData(path, **options))
    msg = str(e.value)
    assert "bad_own.csv" in msg and f"line {lineno}" in msg and reason in msg, msg


@pytest.mark.parametrize("make, match", [
    (lambda p: OwnData(p / "nope.csv"), "no such file"),
    (lambda p: OwnData(p / "r.txt"), "unknown file type"),
    (lambda p: OwnData(p / "r.csv", columns="user,thing"), "unknown column name"),
    (lambda p: OwnData(p / "r.csv", columns="user,item", min_rating=3), "needs a rating column"),
    (lambda p: OwnData(p / "r.csv", kcore=(0, 2)), "kcore"),
    (lambda p: read_interactions(OwnData(p / "empty.csv")), "empty file"),
    (lambda p: read_interactions(OwnData(p / "r.csv", min_rating=9)), "no interactions"),
])
def test_bad_requests(tmp_path, make, match):
    (tmp_path / "r.txt").write_text("user,item\na,b\n")
    (tmp_path / "r.csv").write_text("user,item,rating\na,b,5\n")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        make(tmp_path)


def test_load_dataset_filters_splits_and_keeps_the_ids(tmp_path):
    rows = _interactions()
    rows += [("lonely", "item-A0", 5), ("lonely", "item-B1", 5)]  # dropped by the 10-core
    path = tmp_path / "shop.csv"
    path.write_text("user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    ds = load_dataset(str(path), seed=3, cache_dir=tmp_path / "c")
    assert ds.name == "shop.csv" and ds.split == "random" and ds.n_users == 50
    assert "lonely" not in ds.info["user_ids"] and len(ds.info["item_ids"]) == ds.n_items
    assert ds.info["filter"]["before"]["users"] == 51
    c = ds.counts()
    assert c["interactions"] == 50 * 14 and c["users_without_valid"] == c["users_without_test"] == 0
    assert abs(c["test"] / c["interactions"] - 0.2) < 0.02
    # Row u of the matrices is the user ds.info["user_ids"][u]: check one user's items.
    full = ds.train + ds.valid + ds.test
    u = ds.info["user_ids"].index("user 007@x")
    mine = {ds.info["item_ids"][j] for j in full[u].indices}
    assert mine == {i for uu, i, _ in rows if uu == "user 007@x"}
    _, groups = dataset_groups(ds)
    assert np.bincount(groups).tolist() == [10] * 5
    with pytest.raises(ValueError, match="random"):
        load_dataset(str(path), split="authors", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="own data file only"):
        load_dataset("synthetic", min_rating=3)


def test_registered_name_works_for_configs():
    name = register_dataset(EXAMPLE, min_rating=4)
    assert name == "interactions.csv"
    cfg = make_config(name, "tall")  # the generic defaults: TALLConfig's field values
    assert (cfg.n_experts, cfg.batch_size, cfg.gap) == (100, 512, 40)
    from tall_jax.baselines.config import global_config, make_baseline_config
    assert global_config(name, make_baseline_config("lft", dataset=name)).model == "wl"


def test_train_on_own_data_end_to_end(tmp_path, capsys):
    """The CLI on an own file: ratings, k-core, split, groups, TALL, results.json per group, report."""
    import train_tall
    from tall_jax import report

    path = tmp_path / "ratings.tsv"
    path.write_text("".join(f"{u}\t{i}\t{r}\t0\n" for u, i, r in _interactions()))
    out = tmp_path / "runs"
    rc = train_tall.main(["--dataset", str(path), "--columns", "user,item,rating,timestamp",
                          "--min-rating", "2", "--model", "tall", "--experts", "2",
                          "--epochs", "3", "--patience", "2", "--batch-size", "16", "--gap", "1",
                          "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "since_best=" in captured.err and "/2" in captured.err  # the bar: epochs since best / patience
    (run,) = (out / "ratings.tsv").glob("tall-E2-*/seed0")
    res = json.loads((run / "results.json").read_text())
    settings = json.loads((run / "settings.json").read_text())
    assert settings["data"] == {"columns": ["user", "item", "rating", "timestamp"], "min_rating": 2.0,
                                "kcore": [10, 10], "kcore_rule": "iterative", "file": str(path.resolve()),
                                "size": path.stat().st_size,
                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert settings["config"]["n_experts"] == 2
    assert res["dataset"] == "ratings.tsv" and res["split"] == "random" and res["epochs_run"] <= 3
    n_users = res["dataset_counts"]["users"]
    assert 40 < n_users <= 50  # ratings < 2 dropped, then the 10-core
    assert len(res["test"]["groups"]) == 5 and sum(res["test"]["group_sizes"].values()) == n_users
    assert all(0 <= g["ndcg@20"] <= 1 for g in res["test"]["groups"].values())
    assert report.main([str(out), "--out", str(tmp_path / "table"), "--no-plot"]) == 0
    assert "ratings.tsv" in (tmp_path / "table" / "table2.md").read_text()


# --------------------------------------------------- "nothing lost, nothing mixed up" (issue items)
def _write_rows(path: Path, rows, header: str = "user,item,rating\n") -> Path:
    path.write_text(header + "".join(f"{u},{i},{r}\n" for u, i, r in rows), encoding="utf-8")
    return path


def test_kcore_on_own_files_is_a_true_iterative_k_core(tmp_path):
    """Every user already has >= 10 interactions, so the authors' loop would never run and would keep
    the item 'rare' (3 interactions); a k-core drops it, and then the user 'edge' (10 -> 9)."""
    rows = _interactions()
    rows += [(f"user {u:03d}@x", "rare", 5) for u in range(2)]
    rows += [("edge", f"item-{chr(65 + i % 26)}{i}", 5) for i in range(9)] + [("edge", "rare", 5)]
    path = _write_rows(tmp_path / "core.csv", rows)
    ds = load_dataset(str(path), cache_dir=tmp_path / "c")
    full = ds.train + ds.valid + ds.test
    assert "rare" not in ds.info["item_ids"] and "edge" not in ds.info["user_ids"]
    assert np.diff(full.indptr).min() >= 10 and np.bincount(full.indices).min() >= 10
    assert ds.info["kcore_rule"].startswith("iterative") and "users >= 10" in ds.info["kcore_rule"]
    assert ds.info["filter"]["rule"] == "iterative"
    # a stricter item threshold: every item left has >= 50 interactions
    few = [(f"u{u}", f"i{k}", 5) for u in range(60) for k in range(12) if k < 3 or (u + k) % 2]
    ds2 = load_dataset(str(_write_rows(tmp_path / "core2.csv", few)), cache_dir=tmp_path / "c",
                       kcore=(3, 50))
    full2 = ds2.train + ds2.valid + ds2.test
    assert np.bincount(full2.indices).min() >= 50 and np.diff(full2.indptr).min() >= 3


def test_builtin_datasets_record_the_authors_loop_rule(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{u + 100}\t{i}\t4.0\t1\n" for u in range(30) for i in rng.permutation(25)[:22]]
    (tmp_path / "d" / "yelp").mkdir(parents=True)
    (tmp_path / "d" / "yelp" / "yelp.rating").write_text("".join(lines))
    ds = load_dataset("yelp", data_dir=tmp_path / "d", cache_dir=tmp_path / "c")
    assert ds.info["kcore_rule"].startswith("authors' loop") and ds.info["filter"]["rule"] == "authors_loop"


def test_kcore_rule_is_shown_by_the_stats_command(tmp_path, capsys):
    from tall_jax.datasets import __main__ as cli

    path = _write_rows(tmp_path / "shop.csv", _interactions())
    assert cli.main(["stats", "--dataset", str(path), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "iterative (users >= 10 and items >= 10 at the end)" in capsys.readouterr().out


def test_min_rating_drop_is_logged_and_counted(tmp_path, caplog):
    rows = _interactions()
    n_low = sum(r < 3 for _, _, r in rows)
    path = _write_rows(tmp_path / "rated.csv", rows)
    with caplog.at_level("INFO", logger="tall_jax"):
        ds = load_dataset(str(path), cache_dir=tmp_path / "c", min_rating=3, kcore=(2, 2))
    assert f"{n_low} rows rated below 3" in caplog.text
    assert ds.info["below_min_rating"] == n_low == ds.info["read"]["below_min_rating"]


def test_spaces_around_ids_are_stripped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "spaces.csv"
    path.write_text("user,item\n alice,x\nalice ,y\nbob, x \nbob,y\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="tall_jax"):
        users, items, user_ids, item_ids, stats = read_interactions(OwnData(path))
    assert user_ids == ["alice", "bob"] and item_ids == ["x", "y"]
    assert stats["ids_stripped"] == 3  # ' alice', 'alice ', ' x '
    assert "spaces.csv" in caplog.text and "3 ids" in caplog.text and "strip" in caplog.text


@pytest.mark.parametrize("gz", [False, True])
def test_utf8_byte_order_mark_before_the_header(tmp_path, gz):
    text = "\ufeffuser,item,rating\na,x,5\nb,x,4\n".encode("utf-8")
    path = tmp_path / ("bom.csv.gz" if gz else "bom.csv")
    path.write_bytes(gzip.compress(text) if gz else text)
    users, items, user_ids, item_ids, stats = read_interactions(OwnData(path))
    assert user_ids == ["a", "b"] and stats["columns"] == ["user", "item", "rating"]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".dat"])
def test_bad_utf8_byte_names_the_line(tmp_path, suffix):
    sep = "::" if suffix == ".dat" else ","
    lines = [f"user{sep}item\n"] + [f"user{k:05d}{sep}item{k % 97:05d}\n" for k in range(2, 3000)]
    data = "".join(lines).encode() + b"bad\xff" + sep.encode() + b"x\n" + b"u" + sep.encode() + b"i\n"
    path = tmp_path / f"latin{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    with pytest.raises(ValueError) as e:
        read_interactions(OwnData(path))
    msg = str(e.value)
    assert f"latin{suffix}, line 3000" in msg and "utf-8" in msg and "position" not in msg, msg


@pytest.mark.parametrize("what", ["truncated", "not gzip"])
def test_broken_gzip_names_the_file_and_what_is_wrong(tmp_path, capsys, what):
    from tall_jax.datasets import __main__ as cli

    text = "user,item\n" + "".join(f"u{k},i{k % 13}\n" for k in range(3000))
    path = tmp_path / "broken.csv.gz"
    data = gzip.compress(text.encode())
    path.write_bytes(data[: len(data) // 2] if what == "truncated" else text.encode())
    reason = "truncated gzip file" if what == "truncated" else "not a gzip file"
    with pytest.raises(ValueError) as e:
        read_interactions(OwnData(path))
    assert str(path) in str(e.value) and reason in str(e.value), str(e.value)
    rc = cli.main(["stats", "--dataset", str(path), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and reason in err, err


@pytest.mark.parametrize("text", ["", "user,item\n", "user,item\na,b\nc,d\n"])
def test_too_small_own_file_fails_before_caching(tmp_path, text):
    path = tmp_path / "small.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        load_dataset(str(path), cache_dir=tmp_path / "c", kcore=(1, 1))
    assert "small.csv" in str(e.value)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("split.npz"))


def test_stats_verbose_shows_the_min_rating_log(tmp_path, capsys):
    import logging

    from tall_jax.datasets import __main__ as cli

    path = _write_rows(tmp_path / "rated.csv", _interactions())
    try:
        assert cli.main(["stats", "--dataset", str(path), "--min-rating", "3", "--kcore", "2,2", "-v",
                         "--cache-dir", str(tmp_path / "c")]) == 0
        assert logging.getLogger("tall_jax").getEffectiveLevel() == logging.INFO
    finally:
        logging.getLogger("tall_jax").setLevel(logging.NOTSET)
    assert "rated below 3 dropped" in capsys.readouterr().out
