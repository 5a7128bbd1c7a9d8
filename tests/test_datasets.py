"""Readers, load_dataset, file lookup, the split cache and the stats command (spec §1)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from tall_jax.datasets import (
    KNOWN_DATASETS,
    load_dataset,
    read_amazon_csv,
    read_ml1m_movies,
    read_ml1m_ratings,
    read_ml1m_users,
    read_split_csv,
    read_yelp,
)
from tall_jax.datasets import __main__ as cli


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the real user cache; no data dir from the environment unless a test sets it."""
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "usercache"))
    monkeypatch.delenv("TALL_JAX_DATA", raising=False)


def _write(path: Path, text: str, gz: bool = False, newline: str = "\n") -> Path:
    data = text.replace("\n", newline).encode("latin-1")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ------------------------------------------------------------------------------------- readers
@pytest.mark.parametrize("gz", [False, True])
def test_read_ml1m_ratings_drops_duplicates_keeps_order(tmp_path, gz, caplog):
    text = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::1\n1::1193::2::5\n"
    path = _write(tmp_path / ("r.dat.gz" if gz else "r.dat"), text, gz=gz)
    with caplog.at_level("INFO"):
        users, items = read_ml1m_ratings(path)
    np.testing.assert_array_equal(users, [1, 1, 2])
    np.testing.assert_array_equal(items, [1193, 661, 1193])
    assert "dropped 1 repeated" in caplog.text


def test_read_yelp_tab_separated(tmp_path):
    path = _write(tmp_path / "yelp.rating",
                  "0\t0\t4.0\t1329148800\n0\t0\t4.0\t1337011200\n0\t1\t4.0\t1335888000\n3\t1\t5.0\t1\n")
    users, items = read_yelp(path)
    np.testing.assert_array_equal(users, [0, 0, 3])
    np.testing.assert_array_equal(items, [0, 1, 1])


def test_read_amazon_csv_item_first_crlf(tmp_path):
    text = ("0001393774,A1,5.0,1000\n0001393774,A2,4.0,1001\nB0000,A1,1.0,1002\n"
            "0001393774,A1,3.0,1003\n")
    users, items = read_amazon_csv(_write(tmp_path / "cds.csv", text, newline="\r\n"))
    # users A1 -> 0, A2 -> 1; items 0001393774 -> 0, B0000 -> 1 (first appearance); dup dropped
    np.testing.assert_array_equal(users, [0, 1, 0])
    np.testing.assert_array_equal(items, [0, 0, 1])


def test_read_ml1m_users_and_movies_small(tmp_path):
    users = read_ml1m_users(_write(tmp_path / "u.dat", "1::F::1::10::48067\n2::M::56::16::70072\n"))
    assert users["user_id"].tolist() == [1, 2] and users["gender"].tolist() == ["F", "M"]
    assert users["zip"].tolist() == ["48067", "70072"]
    movies = read_ml1m_movies(_write(tmp_path / "m.dat", "1::Toy Story (1995)::Animation|Comedy\n"
                                     "73::Misérables, Les (1995)::Drama|Musical\n"))
    assert movies["movie_id"].tolist() == [1, 73]
    assert movies["title"][1] == "Misérables, Les (1995)"


@pytest.mark.parametrize(
    "reader, text, lineno",
    [
        (read_ml1m_ratings, "1::2::3::4\n1::2::3\n", 2),
        (read_ml1m_ratings, "1::2::3::4\n5::6::7::8\nx::1::1::1\n", 3),
        (read_ml1m_ratings, "1::2::3::4\n1,2,3,4\n", 2),
        (read_yelp, "0\t1\t4.0\t5\n0 1 4.0 5\n", 2),
        (read_yelp, "0\t1\tfour\t5\n", 1),
        (read_amazon_csv, "I1,U1,5.0,1\nI2,U2,5.0\n", 2),
        (read_amazon_csv, "I1,U1,5.0,1\nI1,U3,5.0,1\nI2,U2,x,1\n", 3),
        (read_split_csv, "userId,itemId\n0,1\n0;2\n", 3),
        (read_ml1m_users, "1::F::1::10::48067\n2::X::56::16::70072\n", 2),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, reader, text, lineno):
    path = _write(tmp_path / "bad_file.txt", text)
    with pytest.raises(ValueError) as e:
        reader(path)
    msg = str(e.value)
    assert "bad_file.txt" in msg and f"line {lineno}" in msg and "expected" in msg


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.dat"):
        read_ml1m_ratings(tmp_path / "nope.dat")


# ------------------------------------------------------------------------------- real files
def test_real_raw_files(shared_data):
    from conftest import require_file

    raw = shared_data / "ml-1m" / "raw"
    users, items = read_ml1m_ratings(require_file(raw / "ratings_users_1-2999.dat.gz"))
    assert users.size == 487_650 and np.unique(users).size == 2_999
    assert np.unique(items).size == 3_615
    assert read_ml1m_users(require_file(raw / "users.dat.gz"))["user_id"].size == 6_040
    movies = read_ml1m_movies(require_file(raw / "movies.dat.gz"))
    assert movies["movie_id"].size == 3_883 and movies["movie_id"].max() == 3952


def test_authors_split_counts_and_cache(shared_data, tmp_path):
    ds = load_dataset("ml-1m", data_dir=shared_data, cache_dir=tmp_path / "c")
    assert (ds.split, ds.seed) == ("authors", None)
    c = ds.counts()
    assert (c["users"], c["items"]) == (6_040, 3_706)
    assert (c["train"], c["valid"], c["test"]) == (700_148, 100_020, 200_041)
    assert (c["users_without_valid"], c["users_without_test"]) == (82, 4)
    assert ds.info["counts"]["users_without_valid"] == 82
    assert ds.train.multiply(ds.valid).nnz == 0 and ds.train.multiply(ds.test).nnz == 0
    files = list((tmp_path / "c").rglob("*.npz"))
    assert len(files) == 1 and ds.cache_dir == files[0].parent
    again = load_dataset("ml-1m", data_dir=shared_data, cache_dir=tmp_path / "c")
    for a, b in zip((ds.train, ds.valid, ds.test), (again.train, again.valid, again.test)):
        assert (a != b).nnz == 0
    # The second load reads the cache (keyed by the raw files' fingerprint): nothing is rewritten.
    stamp = files[0].stat().st_mtime_ns
    cached = load_dataset("ml-1m", data_dir=shared_data, cache_dir=tmp_path / "c", download=False)
    assert cached.counts() == c and files[0].stat().st_mtime_ns == stamp
    recorded = cached.info["fingerprint"]["files"]
    assert len(recorded) == 3 and all(Path(f["path"]).stat().st_size == f["size"] for f in recorded)
    # A data dir that does not exist is an error, not silently skipped.
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_dataset("ml-1m", data_dir=tmp_path / "empty", cache_dir=tmp_path / "c", download=False)


def test_ml1m_random_resplit_from_union(shared_data, tmp_path):
    ds = load_dataset("ml-1m", split="random", seed=0, data_dir=shared_data,
                      cache_dir=tmp_path / "c", download=False)
    c = ds.counts()
    assert (c["users"], c["items"], c["interactions"]) == (6_040, 3_706, 1_000_209)
    assert c["users_without_valid"] == 0 and c["users_without_test"] == 0
    assert ds.info["source"].startswith("union")
    authors = load_dataset("ml-1m", data_dir=shared_data, cache_dir=tmp_path / "c")
    full_a = authors.train + authors.valid + authors.test
    full_r = ds.train + ds.valid + ds.test
    assert (full_a != full_r).nnz == 0  # same pairs, same ids


def test_data_dir_from_environment(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TALL_JAX_DATA", str(shared_data))
    ds = load_dataset("ml-1m", cache_dir=tmp_path / "c", download=False)
    assert ds.n_users == 6_040


# ---------------------------------------------------------------------------- bad requests
def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError) as e:
        load_dataset("netflix")
    assert all(name in str(e.value) for name in KNOWN_DATASETS)


def test_unknown_split_and_misplaced_options():
    with pytest.raises(ValueError, match="authors"):
        load_dataset("yelp", split="authors")
    with pytest.raises(ValueError, match="synthetic"):
        load_dataset("ml-1m", n_users=10)


def test_missing_file_says_where_it_looked(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("yelp", data_dir=tmp_path / "mine", cache_dir=tmp_path / "c", download=False)
    msg = str(e.value)
    assert "yelp/yelp.rating[.gz]" in msg and str(tmp_path / "mine") in msg
    assert "usercache" in msg and "TALL_JAX_DATA" in msg and "--data-dir" in msg
    assert "offline" in msg


def test_yelp_from_data_dir_filter_and_reindex(tmp_path):
    # 30 users x 25 items, then a user with 2 interactions that the (8,8,19) filter drops.
    rng = np.random.default_rng(0)
    lines = [f"{u + 100}\t{i}\t4.0\t1\n" for u in range(30) for i in rng.permutation(25)[:22]]
    lines += ["999\t0\t4.0\t1\n", "999\t1\t4.0\t1\n"]
    (tmp_path / "d" / "yelp").mkdir(parents=True)
    (tmp_path / "d" / "yelp" / "yelp.rating").write_text("".join(lines))
    ds = load_dataset("yelp", seed=1, data_dir=tmp_path / "d", cache_dir=tmp_path / "c")
    filt = ds.info["filter"]
    assert filt["before"]["users"] == 31 and filt["after"]["users"] == 30
    assert ds.n_users == 30 and ds.n_interactions == 30 * 22
    assert ds.counts()["users_without_valid"] == 0


def test_synthetic_through_load_dataset(tmp_path):
    a = load_dataset("synthetic", seed=3, cache_dir=tmp_path, n_users=120, n_items=80)
    b = load_dataset("synthetic", seed=3, cache_dir=tmp_path, n_users=120, n_items=80)
    c = load_dataset("synthetic", seed=3, cache_dir=tmp_path, n_users=100, n_items=80)
    assert a.n_users == 120 and c.n_users == 100 and a.cache_dir == b.cache_dir != c.cache_dir
    assert (a.train != b.train).nnz == 0


# ----------------------------------------------------------------------------------- the CLI
def test_stats_command(capsys, tmp_path):
    rc = cli.main(["stats", "--dataset", "synthetic", "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "users         1,500" in out and "med-high" in out and "MS range" in out


def test_stats_command_errors_are_one_line(capsys, tmp_path):
    rc = cli.main(["stats", "--dataset", "cds", "--no-download", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        cli.main(["stats", "--dataset", "ml-1m", "--bogus"])
    assert e.value.code == 2


def test_first_appearance_ids_match_authors_split(shared_data, tmp_path):
    """Spec §1.3 on real data: re-indexing the raw partial file reproduces the authors' ids."""
    from conftest import require_file
    from tall_jax.datasets import reindex_first_appearance, to_csr

    users, items = read_ml1m_ratings(
        require_file(shared_data / "ml-1m" / "raw" / "ratings_users_1-2999.dat.gz"))
    u, user_ids = reindex_first_appearance(users)
    i, _ = reindex_first_appearance(items)
    np.testing.assert_array_equal(user_ids, np.arange(1, 3000))  # userId = UserID - 1
    ds = load_dataset("ml-1m", data_dir=shared_data, cache_dir=tmp_path / "c")
    full = (ds.train + ds.valid + ds.test)[:2999, : i.max() + 1]
    assert (to_csr(u, i, 2999, i.max() + 1) != full).nnz == 0


def test_bad_synthetic_option():
    with pytest.raises(ValueError, match="n_userz"):
        load_dataset("synthetic", n_userz=3)


def test_ml1m_random_prefers_full_raw_ratings(tmp_path):
    # A tiny stand-in ratings.dat: users 5..19 (id order), 12 movies each, 3 ids re-used.
    lines = [f"{u}::{1000 + (u + k) % 14}::4::1\n" for u in range(5, 20) for k in range(12)]
    (tmp_path / "d" / "ml-1m" / "raw").mkdir(parents=True)
    (tmp_path / "d" / "ml-1m" / "raw" / "ratings.dat").write_text("".join(lines))
    ds = load_dataset("ml-1m", split="random", seed=2, data_dir=tmp_path / "d",
                      cache_dir=tmp_path / "c", download=False)
    assert ds.info["source"] == "raw ratings file" and "-raw-" in ds.cache_dir.name
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (15, 14, 180)
    full = ds.train + ds.valid + ds.test
    # First appearance: user 5 -> 0 rated movies 1005..1016 first -> items 0..11.
    np.testing.assert_array_equal(full[0].indices, np.arange(12))


# ------------------------------------------------- too small, broken gzip (issue "nothing lost")
@pytest.mark.parametrize("rel, text", [
    ("yelp/yelp.rating", ""),
    ("cds/CDs_and_Vinyl.csv", ""),
    ("yelp/yelp.rating", "".join(f"{u}\t{i}\t4.0\t1\n" for u in range(3) for i in range(30))),
])
def test_builtin_raw_file_too_small_fails_before_caching(tmp_path, rel, text):
    name = rel.split("/")[0]
    (tmp_path / "d" / name).mkdir(parents=True)
    (tmp_path / "d" / rel).write_text(text)
    with pytest.raises(ValueError) as e:
        load_dataset(name, data_dir=tmp_path / "d", cache_dir=tmp_path / "c", download=False)
    msg = str(e.value)
    assert str(tmp_path / "d" / rel) in msg and "at least 5 users" in msg, msg
    assert not list((tmp_path / "c").rglob("split.npz")) if (tmp_path / "c").exists() else True


def test_authors_split_with_header_only_files_names_them(tmp_path):
    folder = tmp_path / "d" / "ml-1m" / "tall_split"
    folder.mkdir(parents=True)
    for part in ("train", "vali", "test"):
        (folder / f"{part}_df.csv").write_text("userId,itemId\n")
    with pytest.raises(ValueError) as e:
        load_dataset("ml-1m", data_dir=tmp_path / "d", cache_dir=tmp_path / "c", download=False)
    assert "train_df.csv" in str(e.value) and "at least 5 users" in str(e.value), str(e.value)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("split.npz"))


@pytest.mark.parametrize("what, reason", [("truncated", "truncated gzip file"),
                                          ("plain", "not a gzip file")])
def test_builtin_reader_broken_gzip(tmp_path, capsys, what, reason):
    text = "".join(f"{u}::{i}::4::1\n" for u in range(1, 200) for i in range(1, 30))
    data = gzip.compress(text.encode())
    (tmp_path / "d" / "ml-1m" / "raw").mkdir(parents=True)
    path = tmp_path / "d" / "ml-1m" / "raw" / "ratings.dat.gz"
    path.write_bytes(data[: len(data) // 2] if what == "truncated" else text.encode())
    with pytest.raises(ValueError) as e:
        read_ml1m_ratings(path)
    assert str(path) in str(e.value) and reason in str(e.value), str(e.value)
    rc = cli.main(["stats", "--dataset", "ml-1m", "--split", "random", "--no-download",
                   "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and reason in err, err


def test_builtin_reader_bad_utf8_names_the_line(tmp_path):
    data = "".join(f"{u}\t{u % 7}\t4.0\t1\n" for u in range(1000)).encode() + b"1\t\xff\t4.0\t1\n"
    path = tmp_path / "yelp.rating"
    path.write_bytes(data)
    with pytest.raises(ValueError) as e:
        read_yelp(path)
    assert "yelp.rating, line 1001" in str(e.value) and "position" not in str(e.value), str(e.value)
