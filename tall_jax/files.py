"""Atomic file writes (a file is either absent, the old one, or complete -- never half written) and
the run-folder lock.

Each writer writes to a temporary file in the destination's folder (same file system, so the
rename is atomic), flushes and fsyncs it, then ``os.replace``s it onto the destination. A crash
or a ``KeyboardInterrupt`` mid-write leaves the previous file (or none) and removes the temporary.

:func:`lock_run_dir` holds an OS lock (``flock``) on ``<folder>/.lock`` while a run writes the folder:
a second run into the same folder fails at once (:class:`RunLockedError`, naming the folder and the
holder's pid) instead of interleaving its checkpoints with the first one's.

This module sits at the far left of the layout: it imports nothing from ``tall_jax``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "atomic_savez", "lock_run_dir",
           "RunLockedError", "LOCK_FILE"]


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


LOCK_FILE = ".lock"


class RunLockedError(OSError):
    """The run folder is locked by another process (:func:`lock_run_dir`); the message names the
    folder and the holder's pid. ``folder`` and ``holder`` (the pid, or None if unknown) are kept."""

    def __init__(self, folder: Path, holder: int | None, host: str | None = None):
        who = f"pid {holder}" if holder is not None else "a process whose pid is not known yet"
        if host and host != socket.gethostname():
            who += f" on {host}"
        super().__init__(errno.EWOULDBLOCK, f"{folder} is in use by another run ({who}, lock "
                                            f"{folder / LOCK_FILE}); wait for it to finish or choose "
                                            "another folder")
        self.folder, self.holder = folder, holder


def _holder(fd: int) -> tuple[int | None, str | None]:
    """(pid, host) written in the lock file open at ``fd``."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
        return (int(text[0]) if text and text[0].isdigit() else None), (text[1] if len(text) > 1 else None)
    except OSError:
        return None, None


@contextlib.contextmanager
def lock_run_dir(path: str | Path) -> Iterator[Path]:
    """Hold the run folder ``path`` (created if absent) for the duration of the ``with`` block.

    An exclusive, non-blocking ``flock`` on ``<path>/.lock``, which then holds this process's pid and
    host name. A second locker (another process, or another ``lock_run_dir`` of the same folder in
    this one) fails at once with :class:`RunLockedError` naming the folder and the holder's pid.
    The lock is released on any exit of the block and, since the OS drops a ``flock`` with its
    process, also when the holder is killed (``kill -9``): the ``.lock`` file left behind blocks
    no one. Not re-entrant. Yields the folder.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, host = _holder(fd)
            raise RunLockedError(folder, pid, host) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield folder
        finally:
            os.ftruncate(fd, 0)  # still locked: no one else writes it meanwhile
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
