"""The cache of a log (docs/two_tower.md#your-own-logs): its rows as columns on disk, built once.

``build_log_cache(log, folder)`` reads the log (:mod:`tall_jax.two_tower.logs`) chunk by chunk and
writes, into a temporary folder beside ``folder``, one ``.npy`` column per field (``user``, ``title``,
``day`` int32 codes, ``label`` float32), the user table (``user_ids``, ``user_territory``), per-day
counts per user (``rows_DxU``, ``pos_DxU``), the titles seen in each territory (``avail_TxI``), sorted
keys ``user * I + title`` of the positives in runs (``poskeys_<k>``) and ``manifest.json`` (the source
files' names, sizes and sha256, the vocabularies); then it moves the folder into place. A later call
reuses the cache while every source file has the same size and sha256, and rebuilds it otherwise; a
build that fails (a bad row) leaves the old cache, or none, and no temporary folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from tall_jax.datasets.cache import file_fingerprint, user_cache_root
from tall_jax.files import atomic_write_text
from tall_jax.identity import short_hash
from tall_jax.two_tower.logs import LogReader, day_name, log_files
from tall_jax.two_tower.shards import Column, NpyWriter, remove_tree, replace_dir, write_npy

VERSION = 1
MANIFEST = "manifest.json"
CHUNK = 1 << 20  # rows per chunk of the columns (and per sorted positive-key run)
MAX_IDS = 1 << 24  # ids are exact in float32 up to 2**24


@dataclasses.dataclass(frozen=True)
class LogCache:
    """A built cache folder and its manifest."""

    folder: Path
    manifest: dict[str, Any]
    rebuilt: bool = False

    def column(self, name: str) -> Column:
        return Column(self.folder / f"{name}.npy")

    def array(self, name: str) -> np.ndarray:
        return np.load(self.folder / f"{name}.npy")

    @property
    def n_rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def n_users(self) -> int:
        return int(self.manifest["users"])

    def chunks(self, names: tuple[str, ...], size: int = CHUNK) -> Iterator[dict[str, np.ndarray]]:
        """The rows, ``size`` at a time, as ``{name: array}`` (plus ``start``: the first row's index)."""
        cols = {n: self.column(n) for n in names}
        for lo in range(0, self.n_rows, size):
            yield {"start": lo, **{n: c.read(lo, lo + size) for n, c in cols.items()}}

    def positive_runs(self) -> Iterator[np.ndarray]:
        """The sorted positive-key runs, one in memory at a time."""
        for k in range(int(self.manifest["positive_runs"])):
            yield np.load(self.folder / f"poskeys_{k}.npy")


def default_cache_folder(log: str | Path) -> Path:
    """``<user cache>/two_tower_logs/<name>-<hash of the log's absolute path>``."""
    path = Path(log).expanduser().resolve()
    return user_cache_root() / "two_tower_logs" / f"{path.name}-{short_hash(str(path))}"


def _manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete cache of this version in ``folder``, else None."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    return m if m.get("version") == VERSION else None


def _sources(files: list[Path]) -> list[dict[str, Any]]:
    return [{"name": f.name, "size": (fp := file_fingerprint(f))["size"], "sha256": fp["sha256"]} for f in files]


def build_log_cache(log: str | Path, folder: str | Path | None = None, *, progress: bool = True,
                    chunk: int = CHUNK) -> LogCache:
    """The cache of ``log`` in ``folder`` (default :func:`default_cache_folder`): reused if its manifest
    matches the source files, else built (module docstring)."""
    files = log_files(log)
    folder = Path(folder) if folder is not None else default_cache_folder(log)
    sources = _sources(files)
    old = _manifest(folder)
    if old is not None and old.get("sources") == sources:
        return LogCache(folder, old)
    made = [p for p in reversed(folder.parents) if not p.exists()]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    remove_tree(tmp)
    tmp.mkdir()
    try:
        manifest = _build(files, tmp, sources, progress, chunk)
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
        try:
            replace_dir(tmp, folder)
        except OSError:  # another process put the same cache in place meanwhile: use that one
            other = _manifest(folder)
            if other is None or other.get("sources") != sources:
                raise
            remove_tree(tmp)
            return LogCache(folder, other)
    except BaseException:
        remove_tree(tmp)
        for p in reversed(made):  # a failed build leaves nothing behind, not even empty folders
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    return LogCache(folder, manifest, rebuilt=True)


def _build(files: list[Path], tmp: Path, sources, progress: bool, chunk: int) -> dict[str, Any]:
    reader = LogReader()
    raw = {n: NpyWriter(tmp / f"raw_{n}.npy", dt) for n, dt in
           (("user", np.int64), ("title", np.int32), ("territory", np.int32), ("day", np.int64),
            ("label", np.float32), ("line", np.int64), ("file", np.int32))}
    user_ids, day_values, seen = np.zeros(0, np.int64), np.zeros(0, np.int64), []
    bar = tqdm(unit=" rows", unit_scale=True, desc="reading the log", disable=not progress, leave=False)
    for f_i, path in enumerate(files):
        for ch in reader.chunks(path):
            for n in ("user", "title", "territory", "day", "label", "line"):
                raw[n].append(ch[n])
            raw["file"].append(np.full(len(ch["line"]), f_i, np.int32))
            seen.append(np.unique(ch["user"]))
            day_values = np.union1d(day_values, ch["day"])
            if len(seen) >= 16:  # merged now and then: O(users) memory, not O(rows)
                user_ids, seen = np.unique(np.concatenate([user_ids, *seen])), []
            bar.update(len(ch["line"]))
    bar.close()
    user_ids = np.unique(np.concatenate([user_ids, *seen]))
    for w in raw.values():
        w.close()
    n_rows, u_n, d_n = raw["line"].n, len(user_ids), len(day_values)
    if max(u_n, len(reader.titles)) > MAX_IDS:
        raise ValueError(f"{files[0]}: {u_n} users / {len(reader.titles)} titles; learned id embeddings take "
                         f"at most {MAX_IDS} (ids travel as float32 features)")
    t_n, i_n = len(reader.territories), len(reader.titles)
    terr_U = np.full(u_n, -1, np.int32)
    rows_DxU, pos_DxU = np.zeros((d_n, u_n), np.int32), np.zeros((d_n, u_n), np.int32)
    avail_TxI = np.zeros((t_n, i_n), bool)
    out = {n: NpyWriter(tmp / f"{n}.npy", dt) for n, dt in
           (("user", np.int32), ("title", np.int32), ("day", np.int32), ("label", np.float32))}
    raw_cols = {n: Column(tmp / f"raw_{n}.npy") for n in raw}
    n_runs = 0
    for lo in range(0, n_rows, chunk):
        c = {n: col.read(lo, lo + chunk) for n, col in raw_cols.items()}
        u = np.searchsorted(user_ids, c["user"]).astype(np.int32)
        d = np.searchsorted(day_values, c["day"]).astype(np.int32)
        first = np.unique(u, return_index=True)[1]
        new = first[terr_U[u[first]] < 0]
        terr_U[u[new]] = c["territory"][new]
        bad = np.nonzero(terr_U[u] != c["territory"])[0]
        if len(bad):
            b = bad[0]
            names = list(reader.territories)
            raise ValueError(f"{files[c['file'][b]]}:{c['line'][b]}: user {c['user'][b]} is in territory "
                             f"{names[c['territory'][b]]!r} here but {names[terr_U[u[b]]]!r} on an earlier row "
                             "(one territory per user)")
        pos = c["label"] > 0
        np.add.at(rows_DxU, (d, u), 1)
        np.add.at(pos_DxU, (d[pos], u[pos]), 1)
        avail_TxI[c["territory"][pos], c["title"][pos]] = True
        for n, v in (("user", u), ("title", c["title"]), ("day", d), ("label", c["label"])):
            out[n].append(v)
        keys = np.unique(u[pos].astype(np.int64) * i_n + c["title"][pos])
        write_npy(tmp / f"poskeys_{n_runs}.npy", keys)
        n_runs += 1
        del c, u, d, pos, keys  # before the next chunk is read: one chunk in memory, not two
    for w in out.values():
        w.close()
    for n in raw:
        (tmp / f"raw_{n}.npy").unlink()
    write_npy(tmp / "user_ids.npy", user_ids)
    write_npy(tmp / "user_territory.npy", terr_U)
    write_npy(tmp / "rows_DxU.npy", rows_DxU)
    write_npy(tmp / "pos_DxU.npy", pos_DxU)
    write_npy(tmp / "avail_TxI.npy", avail_TxI)
    return {"version": VERSION, "sources": sources, "rows": n_rows, "users": u_n, "positives": int(pos_DxU.sum()),
            "titles": list(reader.titles), "territories": list(reader.territories),
            "days": [day_name(v, reader.day_kind) for v in day_values], "day_kind": reader.day_kind,
            "has_label": bool(reader.has_label), "positive_runs": n_runs}


__all__ = ["LogCache", "build_log_cache", "default_cache_folder", "MANIFEST", "VERSION"]
