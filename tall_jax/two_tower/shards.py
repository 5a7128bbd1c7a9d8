"""Columnar on-disk arrays for logs larger than memory (docs/two_tower.md#your-own-logs).

- :class:`NpyWriter` appends chunks to a 1-d ``.npy`` file whose header is written on close, so a
  column of unknown length is written in one pass, in bounded memory.
- :class:`Column` is a 1-d ``.npy`` file read by ranges (``np.fromfile`` at an offset), never whole:
  ``column[idx]`` reads the fixed windows of ``WINDOW`` elements that ``idx`` falls in and keeps the
  last two, so batches drawn inside one window (:func:`block_order`) cost one read per window.
- :class:`Chain` is the concatenation of columns (and arrays) without copying them.
- :class:`Rows` is a 2-d ``.npy`` matrix (a feature table) read row by row through a row map.
- :func:`block_order` shuffles ``0..n-1`` window by window: a random order of windows, a random order
  inside each; the batches it yields touch one or two windows each.

Each of these keeps O(``WINDOW``) elements in memory, whatever the length of the column (:class:`Rows`
keeps its row map, 8 bytes a row).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

WINDOW = 1 << 16  # elements per read of a Column; also the shuffle block of block_order
_HEADER = 128  # bytes reserved for the .npy header (magic, version, length, dict, padding)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


class NpyWriter:
    """Append 1-d chunks of one dtype to ``path`` (a ``.npy`` file once :meth:`close` ran)."""

    def __init__(self, path: str | Path, dtype):
        self.path, self.dtype, self.n = Path(path), np.dtype(dtype), 0
        self._f = open(self.path, "wb")
        self._f.write(b"\0" * _HEADER)

    def append(self, values: np.ndarray) -> None:
        a = np.ascontiguousarray(values, dtype=self.dtype)
        self._f.write(a.tobytes())
        self.n += len(a)

    def close(self) -> Path:
        """Write the header for the final length; the file is then a valid ``.npy``."""
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                     "shape": (self.n,)})
        body = text.encode("latin1")
        pad = _HEADER - 10 - len(body) - 1
        if pad < 0:
            raise ValueError(f"{self.path}: .npy header too long")
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + (_HEADER - 10).to_bytes(2, "little") + body + b" " * pad + b"\n")
        self._f.close()
        return self.path


def write_npy(path: str | Path, values: np.ndarray) -> Path:
    """A whole (small) array as ``.npy``."""
    with open(path, "wb") as f:
        np.save(f, values)
    return Path(path)


class Column:
    """A 1-d ``.npy`` column read by windows (module docstring); indexable like an array with an int
    array or a slice, ``len()``, ``sum()`` and ``np.asarray`` (which reads it whole)."""

    def __init__(self, path: str | Path, window: int | None = None):
        self.path, self.window = Path(path), window or WINDOW
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if len(shape) != 1 or fortran:
            raise ValueError(f"{self.path}: not a 1-d column")
        self.n, self.dtype = int(shape[0]), np.dtype(dtype)
        self._cache: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:  # what resume.digest hashes: the file, not this object's address
        return f"Column({str(self.path)!r}, n={self.n}, dtype={self.dtype.str})"

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int]:
        return (self.n,)

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Elements ``lo..hi-1`` (one read)."""
        lo, hi = max(lo, 0), min(hi, self.n)
        if hi <= lo:
            return np.zeros(0, self.dtype)
        return np.fromfile(self.path, self.dtype, count=hi - lo, offset=self.offset + lo * self.dtype.itemsize)

    def _window(self, k: int) -> np.ndarray:
        if k not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = self.read(k * self.window, (k + 1) * self.window)
        return self._cache[k]

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            lo, hi, step = idx.indices(self.n)
            return self.read(lo, hi)[::step]
        idx = np.asarray(idx)
        if idx.ndim == 0:
            return self[idx.reshape(1)][0]
        out = np.empty(idx.shape, self.dtype)
        if idx.size == 0:
            return out
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"{self.path}: index out of range 0..{self.n - 1}")
        win = idx // self.window
        for k in np.unique(win):
            sel = win == k
            out[sel] = self._window(int(k))[idx[sel] - k * self.window]
        return out

    def __array__(self, dtype=None, copy=None):
        a = self.read(0, self.n)
        return a if dtype is None else a.astype(dtype)

    def sum(self) -> float:
        return float(sum(self.read(lo, lo + self.window * 16).sum(dtype=np.float64)
                         for lo in range(0, self.n, self.window * 16)))


class Rows:
    """``rows[idx] = x[row_N[idx]]`` as float32, for a 2-d ``.npy`` matrix ``x`` too large to hold (the
    feature vectors of every user of a log): each read maps the file, gathers the rows and unmaps it, so
    the pages read stay in the OS page cache (shared, reclaimable) and not in this process's memory
    (a mapping kept open would count every page it ever touched, and random rows touch them all)."""

    def __init__(self, path: str | Path, row_N: np.ndarray):
        self.path, self.row_N = Path(path), np.asarray(row_N, np.int64)
        x = np.load(self.path, mmap_mode="r", allow_pickle=False)
        if x.ndim != 2:
            raise ValueError(f"{self.path}: not a 2-d matrix")
        if len(self.row_N) and (self.row_N.min() < 0 or self.row_N.max() >= x.shape[0]):
            raise IndexError(f"{self.path}: row map out of range 0..{x.shape[0] - 1}")
        self.shape, self.dtype = (len(self.row_N), int(x.shape[1])), np.dtype(np.float32)
        st = self.path.stat()
        self._id = f"{str(self.path)!r}, size={st.st_size}, mtime_ns={st.st_mtime_ns}, rows={_sha(self.row_N)}"

    def __repr__(self) -> str:  # what resume.digest hashes
        return f"Rows({self._id})"

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        x = np.load(self.path, mmap_mode="r", allow_pickle=False)
        rows = self.row_N[idx]
        flat = rows.reshape(-1)
        order = np.argsort(flat, kind="stable")  # in file order: each page is read once, front to back
        out = np.empty((len(flat), self.shape[1]), np.float32)
        out[order] = x[flat[order]]
        return out.reshape(*np.shape(rows), self.shape[1])

    def __array__(self, dtype=None, copy=None):
        a = self[np.arange(len(self))]
        return a if dtype is None else a.astype(dtype)


class Chain:
    """Parts (columns or arrays) read as one 1-d array, without copying them."""

    def __init__(self, parts: Sequence):
        self.parts = [p for p in parts if len(p)]
        self.starts = np.r_[0, np.cumsum([len(p) for p in self.parts])].astype(np.int64)
        self.dtype = np.result_type(*[p.dtype for p in self.parts]) if self.parts else np.dtype(np.float32)

    def __repr__(self) -> str:  # what resume.digest hashes
        return f"Chain([{', '.join(repr(p) if not isinstance(p, np.ndarray) else _sha(p) for p in self.parts)}])"

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(len(self)))
        idx = np.asarray(idx)
        out = np.empty(idx.shape, self.dtype)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        for p in np.unique(part):
            sel = part == p
            out[sel] = self.parts[p][idx[sel] - self.starts[p]]
        return out

    def __array__(self, dtype=None, copy=None):
        a = np.concatenate([np.asarray(p) for p in self.parts]) if self.parts else np.zeros(0, self.dtype)
        return a if dtype is None else a.astype(dtype)

    def sum(self) -> float:
        return float(sum(float(p.sum()) for p in self.parts))


def block_order(n: int, batch_size: int, rng: np.random.Generator | None,
                window: int | None = None) -> Iterator[np.ndarray]:
    """Index batches over ``0..n-1``: windows of ``window`` (default ``WINDOW``) elements in a random
    order, each shuffled (consecutive order when ``rng`` is None); every index once, batches of
    ``batch_size`` (the last one shorter), never more than one window's order in memory. Below one
    window it is the full permutation ``rng.permutation(n)``."""
    window = window or WINDOW
    n_win = -(-n // window)
    wins = np.arange(n_win) if rng is None else rng.permutation(n_win)
    carry = np.zeros(0, np.int64)
    for k in wins:
        lo, hi = int(k) * window, min((int(k) + 1) * window, n)
        part = np.arange(lo, hi) if rng is None else lo + rng.permutation(hi - lo)
        carry = np.concatenate([carry, part])
        while len(carry) >= batch_size:
            yield carry[:batch_size]
            carry = carry[batch_size:]
    if len(carry):
        yield carry


def remove_tree(path: Path) -> None:
    """Remove a folder of plain files (what these writers make)."""
    if path.is_dir():
        for p in sorted(path.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        path.rmdir()


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` onto ``dest`` (an older ``dest`` is removed first)."""
    if dest.exists():
        old = dest.with_name(dest.name + f".old{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        remove_tree(old)
    else:
        os.replace(tmp, dest)


__all__ = ["Rows", "WINDOW", "NpyWriter", "Column", "Chain", "block_order", "write_npy", "remove_tree", "replace_dir"]
