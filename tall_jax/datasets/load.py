"""``load_dataset``: find (or download) the raw files, filter, split, cache (docs/fidelity.md#data); own files too."""
from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import download as dl
from .base import Dataset
from .cache import (
    ENV_DATA, check_data_dir, data_roots, find_file, fingerprint, load_split, save_split, split_key,
    user_cache_root,
)
from .own import MIN_ITEMS, MIN_USERS, OwnData, own_data, read_interactions
from .readers import read_amazon_csv, read_ml1m_ratings, read_split_csv, read_yelp
from .split import (
    KCORE_THRESHOLDS, kcore_filter, kcore_iterative, kcore_rule_text, random_split,
    reindex_first_appearance, to_csr,
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


def _where(rels: list[str], data_dir) -> str:
    """"ml-1m/raw/ratings.dat[.gz] or ... in: /a (data_dir), /b ($TALL_JAX_DATA), /c (user cache)"."""
    places = []
    for label, root in data_roots(data_dir):
        label = {"data_dir": "--data-dir", ENV_DATA: "$" + ENV_DATA}.get(label, label)
        missing = "" if root.is_dir() else ", no such folder"
        places.append(f"{root} ({label}{missing})")
    return f"{' or '.join(r + '[.gz]' for r in rels)} in: {', '.join(places)}"


def _missing(what: str, rels: list[str], data_dir, why: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found. Looked for {_where(rels, data_dir)}. {why}Put the file at "
        f"<dir>/{rels[0]} and pass data_dir=<dir> (CLI: --data-dir <dir>) or set {ENV_DATA}=<dir>."
    )


def _locate(rels: list[str], src: dl.Source | None, what: str, data_dir, download: bool,
            timeout: float) -> Path:
    path, _ = find_file(rels, data_dir)
    if path is not None:
        return path
    if src is None:
        raise _missing(what, rels, data_dir, "")
    if not download:
        raise _missing(what, rels, data_dir, f"Not downloading it: offline (download=False; CLI "
                                             f"--offline or {dl.ENV_OFFLINE}=1). ")
    try:
        dl.fetch_source(src, user_cache_root(), timeout=timeout)
    except dl.DownloadError as e:
        raise dl.DownloadError(
            f"{what} not found (looked for {_where(rels, data_dir)}) and its download failed: {e}"
        ) from None
    path, _ = find_file(rels, data_dir)
    if path is None:
        raise _missing(what, rels, data_dir, "")
    return path


def _authors_files(data_dir, download: bool, timeout: float) -> list[Path]:
    return [
        _locate([f"ml-1m/tall_split/{p}_df.csv"], dl.ML1M_AUTHORS[p],
                f"ML-1M authors' split file {p}_df.csv", data_dir, download, timeout)
        for p in _AUTHORS_PARTS
    ]


def _build_authors(files: list[Path]) -> tuple[tuple[sp.csr_matrix, ...], dict[str, Any]]:
    """The TALL authors' committed ML-1M split, as is (no repair: some users lack valid/test)."""
    pairs = [read_split_csv(f) for f in files]
    n_users = max((int(u.max()) + 1 for u, _ in pairs if u.size), default=0)
    n_items = max((int(i.max()) + 1 for _, i in pairs if i.size), default=0)
    parts = tuple(to_csr(u, i, n_users, n_items) for u, i in pairs)
    info = {"source": "authors' committed split (not repaired)",
            "source_files": [str(f) for f in files],
            "kcore_rule": "none (the authors' committed split, as is)"}
    return parts, info


def _ml1m_random_source(data_dir) -> str:
    """'raw' when a full ratings.dat is found locally, else 'union' of the authors' files if found."""
    if find_file(_RAW["ml-1m"][0], data_dir)[0] is not None:
        return "raw"
    if all(find_file([f"ml-1m/tall_split/{p}_df.csv"], data_dir)[0] for p in _AUTHORS_PARTS):
        return "union"
    return "raw"  # will be downloaded


def _build_random(name: str, seed: int, source: str, files: list[Path]):
    """Read raw pairs, k-core filter, re-index by first appearance, seeded 70/10/20 split."""
    info: dict[str, Any] = {"source_files": [str(f) for f in files]}
    if source == "union":
        pairs = [read_split_csv(f) for f in files]
        users = np.concatenate([u for u, _ in pairs])
        items = np.concatenate([i for _, i in pairs])
        info["source"] = "union of the authors' train/vali/test files (ids kept)"
    else:
        users, items = _RAW[name][1](files[0])
        info["source"] = "raw ratings file"
    thresholds = KCORE_THRESHOLDS[name]
    keep, stats = kcore_filter(users, items, loop_threshold=thresholds[0],
                               user_threshold=thresholds[1], item_threshold=thresholds[2])
    info["filter"] = stats
    info["kcore_rule"] = kcore_rule_text(stats)
    users, items = users[keep], items[keep]
    if source == "union":  # already the spec's ids; compacting keeps their order
        user_ids, u = np.unique(users, return_inverse=True)
        item_ids, i = np.unique(items, return_inverse=True)
    else:
        u, user_ids = reindex_first_appearance(users)
        i, item_ids = reindex_first_appearance(items)
    parts = random_split(u, i, user_ids.size, item_ids.size, seed=seed)
    return parts, info


def _build_own(spec: OwnData, seed: int):
    """Your own file: read, iterative k-core, re-index by first appearance, seeded 70/10/20 split."""
    users, items, user_names, item_names, read_stats = read_interactions(spec)
    keep, stats = kcore_iterative(users, items, min_user=spec.kcore[0], min_item=spec.kcore[1])
    after = stats["after"]
    if after["users"] < MIN_USERS or after["items"] < MIN_ITEMS:
        b = stats["before"]
        raise ValueError(
            f"{spec.path}: the k-core filter (users and items with at least {spec.kcore[0]} and "
            f"{spec.kcore[1]} interactions) leaves {after['users']} users and {after['items']} items "
            f"of {b['users']} and {b['items']}; at least {MIN_USERS} users (five mainstream groups) "
            f"and {MIN_ITEMS} items are needed. Lower it with kcore=(users, items) (CLI: --kcore U,I) or "
            f"add data."
        )
    u, user_codes = reindex_first_appearance(users[keep])
    i, item_codes = reindex_first_appearance(items[keep])
    parts = random_split(u, i, user_codes.size, item_codes.size, seed=seed)
    info = {"source": "your own interaction file", "source_files": [str(spec.path)],
            "read": read_stats, "min_rating": spec.min_rating,
            "below_min_rating": read_stats["below_min_rating"],
            "ids_stripped": read_stats["ids_stripped"], "filter": stats,
            "kcore_rule": kcore_rule_text(stats),
            "user_ids": [user_names[c] for c in user_codes],
            "item_ids": [item_names[c] for c in item_codes]}
    return parts, info


def _kcore_rule(info: dict[str, Any], split: str) -> str:
    """``info["kcore_rule"]``: which filter made the split, in words (docs/fidelity.md#filter)."""
    if info.get("kcore_rule"):
        return info["kcore_rule"]
    if info.get("filter"):  # without a "rule" entry: the authors' loop (splits cached before it)
        return kcore_rule_text(info["filter"])
    return "none (the authors' committed split, as is)" if split == "authors" else "none"


def _check_size(parts, files: list[Path], name: str, info: dict[str, Any]) -> None:
    """ValueError naming the input when the split is too small for the protocol: the users are cut
    into five mainstream groups (at least :data:`MIN_USERS` users) and a ranking needs items."""
    n_users, n_items = (int(n) for n in parts[0].shape)
    if n_users >= MIN_USERS and n_items >= MIN_ITEMS:
        return
    what = ", ".join(str(f) for f in files) or f"the {name} generator"
    filt = info.get("filter")
    if filt and filt["before"]["interactions"] == 0:
        how = "has no interaction lines, so it gives"
    elif filt:
        b = filt["before"]
        how = (f"has {b['users']} users and {b['items']} items; after the k-core filter "
               f"({info.get('kcore_rule') or kcore_rule_text(filt)}) there are")
    else:
        how = "gives"
    raise ValueError(f"{what}: {how} {n_users} users and {n_items} items; at least {MIN_USERS} users "
                     f"(users are cut into five mainstream groups) and {MIN_ITEMS} items are needed")


def load_dataset(
    name: str,
    *,
    split: str | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool | None = None,
    download_timeout: float | None = None,
    columns: str | tuple[str, ...] | None = None,
    min_rating: float | None = None,
    kcore: tuple[int, int] | None = None,
    **synthetic_kwargs: Any,
) -> Dataset:
    """Load a split dataset by name (one of ``KNOWN_DATASETS``, a name given to
    :func:`register_dataset`, or the path of your own ``.csv``/``.tsv``/``.dat`` file); see the
    package docstring.

    ``split`` defaults to ``"authors"`` for ml-1m and ``"random"`` otherwise. ``data_dir``, when
    given, must be an existing folder. Missing raw files are downloaded unless ``download`` is
    False (default: True unless ``$TALL_JAX_OFFLINE=1``), each URL with ``download_timeout``
    seconds (default ``$TALL_JAX_DOWNLOAD_TIMEOUT`` or 60). ``columns``, ``min_rating`` and
    ``kcore`` apply to your own file only (see :mod:`tall_jax.datasets.own`). The processed split
    is cached under ``cache_dir`` (default ``<user cache>/processed``) keyed by dataset, split,
    filter thresholds, seed, format version and the fingerprint (size, sha256) of the raw files; a
    second call reads the cache, a changed raw file is re-split.
    """
    own = None
    if name not in KNOWN_DATASETS:
        own = own_data(name)
        if own is None:
            raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}, "
                             "or the path of your own .csv, .tsv or .dat interaction file")
        if columns is not None or min_rating is not None or kcore is not None:
            own = OwnData(own.path, columns=own.columns if columns is None else columns,
                          min_rating=own.min_rating if min_rating is None else min_rating,
                          kcore=own.kcore if kcore is None else kcore)
    elif columns is not None or min_rating is not None or kcore is not None:
        raise ValueError(f"options columns, min_rating and kcore apply to your own data file only, "
                         f"not to the built-in dataset {name!r}")
    splits = SPLITS[name] if own is None else ("random",)
    split = split or splits[0]
    if split not in splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; choose one of {splits}")
    if synthetic_kwargs and name != "synthetic":
        raise ValueError(f"options {sorted(synthetic_kwargs)} apply only to the synthetic dataset")
    allowed = set(inspect.signature(make_synthetic).parameters) - {"seed"}
    if set(synthetic_kwargs) - allowed:
        raise ValueError(f"unknown synthetic options {sorted(set(synthetic_kwargs) - allowed)}; "
                         f"known: {sorted(allowed)}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    check_data_dir(data_dir)
    download = (not dl.offline_from_env()) if download is None else bool(download)
    timeout = dl.timeout_from_env() if download_timeout is None else dl.check_timeout(download_timeout)
    cache_root = Path(cache_dir).expanduser() if cache_dir else user_cache_root() / "processed"
    t0 = time.perf_counter()

    filt: tuple | str | None
    if own is not None:  # a true k-core ("core"), not the built-ins' authors' loop ("kcore" + 3 values)
        name, filt = own.name, f"core{own.kcore[0]}_{own.kcore[1]}"
    else:
        filt = KCORE_THRESHOLDS.get(name) if split == "random" and name != "synthetic" else None
    source = ""
    settings: dict[str, Any] = {"name": name, "split": split, "seed": None if split == "authors" else seed,
                                "filter": filt, "valid_frac": 0.1, "test_frac": 0.2}
    if name == "synthetic":
        files: list[Path] = []
        settings["generator"] = synthetic_kwargs
    elif own is not None:
        files = [own.path]
        settings["own"] = own.settings()
    elif split == "authors":
        files = _authors_files(data_dir, download, timeout)
    else:
        if name == "ml-1m":
            source = _ml1m_random_source(data_dir)
            settings["source"] = source
        if source == "union":
            files = _authors_files(data_dir, download, timeout)
        else:
            rels, _, src = _RAW[name]
            files = [_locate(rels, src, f"{name} ratings file", data_dir, download, timeout)]
    fp = fingerprint(files, settings)
    extra = "-".join(x for x in (source, fp["digest"][:12]) if x)
    key = split_key(name, split, None if split == "authors" else seed, filt, extra)
    folder = cache_root / key
    cached = load_split(folder / "split.npz")
    if cached is not None and (cached[1].get("fingerprint") or {}).get("digest") != fp["digest"]:
        log.info("%s/%s: cached split %s was built from other input; rebuilding", name, split, folder)
        cached = None
    if cached is not None:
        parts, info = cached
        info["kcore_rule"] = _kcore_rule(info, split)  # splits cached before the rule was recorded
        _check_size(parts, files, name, info)
        log.info("%s/%s: loaded cached split %s", name, split, folder)
    else:
        if name == "synthetic":
            ds = make_synthetic(seed=seed, **synthetic_kwargs)
            parts, info = (ds.train, ds.valid, ds.test), dict(ds.info)
        elif own is not None:
            parts, info = _build_own(own, seed)
        elif split == "authors":
            parts, info = _build_authors(files)
        else:
            parts, info = _build_random(name, seed, source, files)
        info["kcore_rule"] = _kcore_rule(info, split)
        _check_size(parts, files, name, info)  # before anything is cached
        tmp = Dataset(name, split, seed, *parts)
        info["counts"] = tmp.counts()
        info["key"] = key
        info["fingerprint"] = fp
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
