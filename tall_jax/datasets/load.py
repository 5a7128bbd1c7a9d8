"""``load_dataset``: find (or download) the raw files, filter, split, cache (spec §1)."""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import download as dl
from .base import Dataset
from .cache import ENV_DATA, find_file, load_split, save_split, split_key, user_cache_root
from .readers import read_amazon_csv, read_ml1m_ratings, read_split_csv, read_yelp
from .split import (
    KCORE_THRESHOLDS, kcore_filter, random_split, reindex_first_appearance, to_csr,
)
from .synthetic import make_synthetic

log = logging.getLogger("tall_jax.datasets")

KNOWN_DATASETS = ("ml-1m", "yelp", "cds", "synthetic")
SPLITS = {"ml-1m": ("authors", "random"), "yelp": ("random",), "cds": ("random",),
          "synthetic": ("random",)}
# Raw file per dataset: paths under a data root, its reader, and its download source.
_RAW = {
    "ml-1m": (["ml-1m/raw/ratings.dat", "ml-1m/ratings.dat"], read_ml1m_ratings, dl.ML1M_ZIP),
    "yelp": (["yelp/yelp.rating"], read_yelp, dl.YELP),
    "cds": (["cds/CDs_and_Vinyl.csv"], read_amazon_csv, dl.CDS),
}
_AUTHORS_PARTS = ("train", "vali", "test")


def _missing(what: str, rel: str, looked: list[Path], download: bool) -> FileNotFoundError:
    places = ", ".join(str(p) for p in looked)
    how = ("" if download else " or allow downloading (download=True, CLI: drop --no-download)")
    return FileNotFoundError(
        f"{what} not found (looked in: {places}). Provide it: put it at <dir>/{rel} and pass "
        f"data_dir=<dir> (CLI: --data-dir <dir>) or set {ENV_DATA}=<dir>{how}."
    )


def _locate(rels: list[str], src: dl.Source | None, what: str, data_dir, download: bool) -> Path:
    path, looked = find_file(rels, data_dir)
    if path is not None:
        return path
    if not download or src is None:
        raise _missing(what, rels[0], looked, download)
    try:
        dl.fetch_source(src, user_cache_root())
    except dl.DownloadError as e:
        raise dl.DownloadError(
            f"{what} not found locally (looked in: {', '.join(map(str, looked))}) and {e}"
        ) from None
    path, looked = find_file(rels, data_dir)
    if path is None:
        raise _missing(what, rels[0], looked, True)
    return path


def _authors_files(data_dir, download: bool) -> list[Path]:
    return [
        _locate([f"ml-1m/tall_split/{p}_df.csv"], dl.ML1M_AUTHORS[p],
                f"ML-1M authors' split file {p}_df.csv", data_dir, download)
        for p in _AUTHORS_PARTS
    ]


def _build_authors(data_dir, download: bool) -> tuple[tuple[sp.csr_matrix, ...], dict[str, Any]]:
    """The TALL authors' committed ML-1M split, as is (no repair: some users lack valid/test)."""
    files = _authors_files(data_dir, download)
    pairs = [read_split_csv(f) for f in files]
    n_users = max(int(u.max()) for u, _ in pairs) + 1
    n_items = max(int(i.max()) for _, i in pairs) + 1
    parts = tuple(to_csr(u, i, n_users, n_items) for u, i in pairs)
    info = {"source": "authors' committed split (not repaired)",
            "source_files": [str(f) for f in files]}
    return parts, info


def _ml1m_random_source(data_dir) -> str:
    """'raw' when a full ratings.dat is found locally, else 'union' of the authors' files if found."""
    if find_file(_RAW["ml-1m"][0], data_dir)[0] is not None:
        return "raw"
    if all(find_file([f"ml-1m/tall_split/{p}_df.csv"], data_dir)[0] for p in _AUTHORS_PARTS):
        return "union"
    return "raw"  # will be downloaded


def _build_random(name: str, seed: int, source: str, data_dir, download: bool):
    """Read raw pairs, k-core filter, re-index by first appearance, seeded 70/10/20 split."""
    info: dict[str, Any] = {}
    if source == "union":
        files = _authors_files(data_dir, download)
        pairs = [read_split_csv(f) for f in files]
        users = np.concatenate([u for u, _ in pairs])
        items = np.concatenate([i for _, i in pairs])
        info["source"] = "union of the authors' train/vali/test files (ids kept)"
        info["source_files"] = [str(f) for f in files]
    else:
        rels, reader, src = _RAW[name]
        path = _locate(rels, src, f"{name} ratings file", data_dir, download)
        users, items = reader(path)
        info["source"] = "raw ratings file"
        info["source_files"] = [str(path)]
    thresholds = KCORE_THRESHOLDS[name]
    keep, stats = kcore_filter(users, items, loop_threshold=thresholds[0],
                               user_threshold=thresholds[1], item_threshold=thresholds[2])
    info["filter"] = stats
    users, items = users[keep], items[keep]
    if source == "union":  # already the spec's ids; compacting keeps their order
        user_ids, u = np.unique(users, return_inverse=True)
        item_ids, i = np.unique(items, return_inverse=True)
    else:
        u, user_ids = reindex_first_appearance(users)
        i, item_ids = reindex_first_appearance(items)
    parts = random_split(u, i, user_ids.size, item_ids.size, seed=seed)
    return parts, info


def load_dataset(
    name: str,
    *,
    split: str | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
    **synthetic_kwargs: Any,
) -> Dataset:
    """Load a split dataset by name (one of ``KNOWN_DATASETS``); see the package docstring.

    ``split`` defaults to ``"authors"`` for ml-1m and ``"random"`` otherwise. The processed split
    is cached under ``cache_dir`` (default ``<user cache>/processed``) keyed by dataset, split,
    filter thresholds, seed and format version; a second call reads the cache.
    """
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    split = split or SPLITS[name][0]
    if split not in SPLITS[name]:
        raise ValueError(f"dataset {name!r} has no split {split!r}; choose one of {SPLITS[name]}")
    if synthetic_kwargs and name != "synthetic":
        raise ValueError(f"options {sorted(synthetic_kwargs)} apply only to the synthetic dataset")
    allowed = set(inspect.signature(make_synthetic).parameters) - {"seed"}
    if set(synthetic_kwargs) - allowed:
        raise ValueError(f"unknown synthetic options {sorted(set(synthetic_kwargs) - allowed)}; "
                         f"known: {sorted(allowed)}")
    seed = int(seed)
    cache_root = Path(cache_dir).expanduser() if cache_dir else user_cache_root() / "processed"
    t0 = time.perf_counter()

    filt = KCORE_THRESHOLDS.get(name) if split == "random" and name != "synthetic" else None
    extra = ""
    source = ""
    if name == "ml-1m" and split == "random":
        source = _ml1m_random_source(data_dir)
        extra = source
    if name == "synthetic":
        blob = json.dumps(synthetic_kwargs, sort_keys=True, default=str)
        extra = hashlib.sha1(blob.encode()).hexdigest()[:10]
    key = split_key(name, split, None if split == "authors" else seed, filt, extra)
    folder = cache_root / key
    cached = load_split(folder / "split.npz")
    if cached is not None:
        parts, info = cached
        log.info("%s/%s: loaded cached split %s", name, split, folder)
    else:
        if name == "synthetic":
            ds = make_synthetic(seed=seed, **synthetic_kwargs)
            parts, info = (ds.train, ds.valid, ds.test), dict(ds.info)
        elif split == "authors":
            parts, info = _build_authors(data_dir, download)
        else:
            parts, info = _build_random(name, seed, source, data_dir, download)
        tmp = Dataset(name, split, seed, *parts)
        info["counts"] = tmp.counts()
        info["key"] = key
        try:
            save_split(folder / "split.npz", parts, info)
        except OSError as e:
            log.warning("could not cache the split in %s (%s); continuing without", folder, e)
        c = info["counts"]
        log.info("%s/%s: %d users, %d items, train/valid/test %d/%d/%d; %d users without a "
                 "validation item, %d without a test item", name, split, c["users"], c["items"],
                 c["train"], c["valid"], c["test"], c["users_without_valid"],
                 c["users_without_test"])
    log.debug("load_dataset(%s) took %.2fs", name, time.perf_counter() - t0)
    return Dataset(name=name, split=split, seed=None if split == "authors" else seed,
                   train=parts[0], valid=parts[1], test=parts[2], info=info, cache_dir=folder)
