"""Atomic file writes: a file is either absent, the old one, or complete -- never half written.

Each writer writes to a temporary file in the destination's folder (same file system, so the
rename is atomic), flushes and fsyncs it, then ``os.replace``s it onto the destination. A crash
or a ``KeyboardInterrupt`` mid-write leaves the previous file (or none) and removes the temporary.

This module sits at the far left of the layout: it imports nothing from ``tall_jax``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "atomic_savez"]


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``.

    Creates the parent folders. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are ordinary data files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_savez(path: str | Path, **arrays: Any) -> Path:
    """``np.savez(path, **arrays)`` atomically; ``path`` is used as given (no ``.npz`` appended)."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))
