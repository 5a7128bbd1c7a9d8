"""Where data lives (data dir, ``$TALL_JAX_DATA``, user cache) and the on-disk split cache.

A processed split is one ``split.npz`` holding the CSR index arrays of train/valid/test (never a
dense matrix) and the ``info`` dict as JSON, in a folder named by dataset, split, filter, seed,
format version and a fingerprint: the size and sha256 of every raw input file plus the split
settings (:func:`fingerprint`). A changed raw file or setting therefore lands in a new folder, and a
cached file whose recorded fingerprint differs from the expected one is rebuilt. Files are written
to a temporary name and then ``os.replace``d, so a partly written file never looks complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from tall_jax.files import atomic_savez

log = logging.getLogger("tall_jax.datasets")

FORMAT_VERSION = 1
ENV_DATA = "TALL_JAX_DATA"
ENV_CACHE = "TALL_JAX_CACHE"


def user_cache_root() -> Path:
    """``$TALL_JAX_CACHE``, else ``$XDG_CACHE_HOME/tall_jax``, else ``~/.cache/tall_jax``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tall_jax"


def check_data_dir(data_dir: str | Path | None) -> Path | None:
    """``data_dir`` as a Path; a ``FileNotFoundError`` when it is given but is not a folder."""
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "no such folder"
        raise FileNotFoundError(f"data folder {data_dir} (data_dir, CLI --data-dir): {what}")
    return path


def data_roots(data_dir: str | Path | None) -> list[tuple[str, Path]]:
    """The folders searched for raw files, in order: data_dir, $TALL_JAX_DATA, the user cache."""
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        roots.append(("data_dir", Path(data_dir).expanduser()))
    env = os.environ.get(ENV_DATA)
    if env:
        roots.append((ENV_DATA, Path(env).expanduser()))
    roots.append(("user cache", user_cache_root()))
    return roots


def find_file(rel_paths: list[str], data_dir: str | Path | None) -> tuple[Path | None, list[Path]]:
    """The first existing ``root/rel`` (or ``root/rel.gz``); also returns every path looked at."""
    looked: list[Path] = []
    for _, root in data_roots(data_dir):
        for rel in rel_paths:
            for cand in (root / rel, root / (rel + ".gz")):
                looked.append(cand)
                if cand.is_file():
                    return cand, looked
    return None, looked


def split_key(name: str, split: str, seed: int | None, filt: tuple | str | None, extra: str = "") -> str:
    """Folder name of a processed split; changes whenever its content would. ``filt``: the authors'
    loop thresholds (a tuple, "kcore9_9_9") or the name of another filter as is ("core10_10")."""
    parts = [name, split]
    if isinstance(filt, str):
        parts.append(filt)
    elif filt is not None:
        parts.append("kcore" + "_".join(str(t) for t in filt))
    if seed is not None:
        parts.append(f"seed{seed}")
    if extra:
        parts.append(extra)
    parts.append(f"v{FORMAT_VERSION}")
    return "-".join(parts)


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file's bytes (its name and place do not enter the digest)."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "size": path.stat().st_size, "sha256": h.hexdigest()}


def fingerprint(files: list[Path], settings: dict[str, Any]) -> dict[str, Any]:
    """What a processed split is built from: size and sha256 of each raw file (in order) and the
    split ``settings`` (JSON-able). ``digest`` (sha256 hex) changes whenever any of them does."""
    record = {"files": [file_fingerprint(f) for f in files], "settings": settings}
    keyed = {"files": [{"size": f["size"], "sha256": f["sha256"]} for f in record["files"]],
             "settings": settings, "format_version": FORMAT_VERSION}
    blob = json.dumps(keyed, sort_keys=True, default=str).encode()
    record["digest"] = hashlib.sha256(blob).hexdigest()
    return record


def save_split(path: Path, parts: tuple[sp.csr_matrix, ...], info: dict[str, Any]) -> Path:
    """Store train/valid/test CSR index arrays and ``info`` (JSON) atomically as ``.npz``."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(FORMAT_VERSION),
        "shape": np.asarray(parts[0].shape, dtype=np.int64),
        "info_json": np.asarray(json.dumps(info)),
    }
    for name, m in zip(("train", "valid", "test"), parts):
        arrays[f"{name}_indptr"] = m.indptr.astype(np.int64)
        arrays[f"{name}_indices"] = m.indices.astype(np.int32)
    return atomic_savez(path, **arrays)


def load_split(path: Path) -> tuple[tuple[sp.csr_matrix, ...], dict[str, Any]] | None:
    """Inverse of :func:`save_split`; None if absent, unreadable or of another format version."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format_version"]) != FORMAT_VERSION:
                return None
            shape = tuple(int(s) for s in z["shape"])
            parts = []
            for name in ("train", "valid", "test"):
                indptr, indices = z[f"{name}_indptr"], z[f"{name}_indices"]
                data = np.ones(indices.size, dtype=np.float32)
                parts.append(sp.csr_matrix((data, indices, indptr), shape=shape))
            info = json.loads(str(z["info_json"]))
    except (OSError, KeyError, ValueError) as e:
        log.warning("ignoring unreadable cached split %s (%s)", path, e)
        return None
    return tuple(parts), info
