"""The split cache is keyed by the raw files' size and sha256 and by the split settings."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from tall_jax.datasets import load_dataset
from tall_jax.datasets.cache import file_fingerprint, fingerprint, load_split, save_split


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "usercache"))
    monkeypatch.delenv("TALL_JAX_DATA", raising=False)
    monkeypatch.delenv("TALL_JAX_OFFLINE", raising=False)


def _yelp_text(n_users: int = 30, n_items: int = 25, per_user: int = 22, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(f"{u + 100}\t{i}\t4.0\t1\n" for u in range(n_users)
                   for i in rng.permutation(n_items)[:per_user])


def _data_dir(tmp_path, text: str):
    folder = tmp_path / "d" / "yelp"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "yelp.rating").write_text(text)
    return tmp_path / "d"


def test_file_fingerprint_is_size_and_sha256(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello\n")
    fp = file_fingerprint(path)
    assert fp["size"] == 6 and fp["sha256"] == hashlib.sha256(b"hello\n").hexdigest()


def test_digest_follows_content_and_settings_not_the_path(tmp_path):
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    a.write_bytes(b"1\t2\n")
    b.write_bytes(b"1\t2\n")  # same bytes elsewhere
    c.write_bytes(b"1\t3\n")  # same size, other bytes
    settings = {"seed": 0, "filter": [8, 8, 19]}
    assert fingerprint([a], settings)["digest"] == fingerprint([b], settings)["digest"]
    assert fingerprint([a], settings)["digest"] != fingerprint([c], settings)["digest"]
    assert fingerprint([a], settings)["digest"] != fingerprint([a], {**settings, "seed": 1})["digest"]


def test_changed_raw_file_invalidates_the_cached_split(tmp_path, caplog):
    text = _yelp_text()
    data_dir = _data_dir(tmp_path, text)
    first = load_dataset("yelp", seed=1, data_dir=data_dir, cache_dir=tmp_path / "c")
    with caplog.at_level("INFO", logger="tall_jax.datasets"):
        again = load_dataset("yelp", seed=1, data_dir=data_dir, cache_dir=tmp_path / "c")
    assert "loaded cached split" in caplog.text and again.cache_dir == first.cache_dir
    assert (again.train != first.train).nnz == 0
    # Same size, one byte changed (a rating): a new fingerprint, a new folder, a rebuilt split.
    changed = text.replace("\t4.0\t", "\t5.0\t", 1)
    assert len(changed) == len(text) and changed != text
    (data_dir / "yelp" / "yelp.rating").write_text(changed)
    caplog.clear()
    with caplog.at_level("INFO", logger="tall_jax.datasets"):
        rebuilt = load_dataset("yelp", seed=1, data_dir=data_dir, cache_dir=tmp_path / "c")
    assert "loaded cached split" not in caplog.text
    assert rebuilt.cache_dir != first.cache_dir
    assert rebuilt.info["fingerprint"]["files"][0]["sha256"] == hashlib.sha256(changed.encode()).hexdigest()
    assert len(list((tmp_path / "c").glob("*/split.npz"))) == 2
    # Another split setting (the seed) is another key as well.
    other_seed = load_dataset("yelp", seed=2, data_dir=data_dir, cache_dir=tmp_path / "c")
    assert other_seed.cache_dir not in (first.cache_dir, rebuilt.cache_dir)


def test_cached_file_with_another_fingerprint_is_rebuilt(tmp_path, caplog):
    data_dir = _data_dir(tmp_path, _yelp_text())
    ds = load_dataset("yelp", data_dir=data_dir, cache_dir=tmp_path / "c")
    path = ds.cache_dir / "split.npz"
    parts, info = load_split(path)
    info["fingerprint"]["digest"] = "0" * 64  # as if built from other input under this key
    save_split(path, parts, info)
    with caplog.at_level("INFO", logger="tall_jax.datasets"):
        again = load_dataset("yelp", data_dir=data_dir, cache_dir=tmp_path / "c")
    assert "built from other input; rebuilding" in caplog.text
    assert again.info["fingerprint"]["digest"] == ds.info["fingerprint"]["digest"]
    assert load_split(path)[1]["fingerprint"]["digest"] == ds.info["fingerprint"]["digest"]


def test_own_data_settings_enter_the_key(tmp_path):
    rows = [f"u{u},i{(u * 7 + k) % 30},{1 + (u + k) % 5}" for u in range(40) for k in range(15)]
    path = tmp_path / "mine.csv"
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    a = load_dataset(str(path), cache_dir=tmp_path / "c", kcore=(2, 2))
    b = load_dataset(str(path), cache_dir=tmp_path / "c", kcore=(2, 2), min_rating=3)
    assert a.cache_dir != b.cache_dir and b.n_interactions < a.n_interactions
    settings = json.dumps(b.info["fingerprint"]["settings"])
    assert '"min_rating": 3' in settings and b.info["fingerprint"]["files"][0]["size"] == path.stat().st_size


def test_own_data_kcore_rule_enters_the_key(tmp_path):
    """Splits cached under the authors' loop rule (key 'kcore9_9_9', settings without a rule) are not
    reused now that own files get a true k-core."""
    rows = [f"u{u},i{(u * 7 + k) % 30}" for u in range(40) for k in range(15)]
    path = tmp_path / "mine.csv"
    path.write_text("user,item\n" + "\n".join(rows) + "\n")
    ds = load_dataset(str(path), cache_dir=tmp_path / "c", kcore=(10, 10))
    assert ds.info["fingerprint"]["settings"]["own"]["kcore_rule"] == "iterative"
    assert "kcore9_9_9" not in ds.cache_dir.name and "-core10_10-" in ds.cache_dir.name
