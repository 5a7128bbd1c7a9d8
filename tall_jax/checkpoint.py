"""Checked pytree serialisation and checkpoints written as one atomic unit.

A checkpoint is a folder written whole: its files go into ``<name>.tmp/``, which then replaces
``<name>/`` (the previous one is first renamed ``<name>.old/`` and removed after the swap; POSIX
cannot rename a folder onto a non-empty one). ``<name>/`` therefore only ever exists complete; a
crash between the two renames leaves ``<name>.old/``, the previous complete checkpoint, which
:func:`complete_folder` falls back to; a leftover ``<name>.tmp/`` is never read.

Reading a pytree checks it against a template: a leaf whose shape or dtype differs, or a missing or
extra leaf, is a ValueError naming every such leaf path with both shapes (flax's ``from_bytes``
alone would load a [2, 30] leaf into a [3, 30] template without a word).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
from flax import serialization, traverse_util

T = TypeVar("T")


def _describe(a: Any) -> str:
    return f"{np.dtype(a.dtype) if hasattr(a, 'dtype') else type(a).__name__}{list(np.shape(a))}"


def mismatches(template: Any, tree: Any) -> list[str]:
    """One line per leaf path where the state dicts of ``tree`` and ``template`` differ in presence,
    shape or dtype (empty when they match)."""
    want = traverse_util.flatten_dict(serialization.to_state_dict(template), sep="/")
    got = traverse_util.flatten_dict(serialization.to_state_dict(tree), sep="/")
    out = [f"{k}: missing (expected {_describe(want[k])})" for k in want if k not in got]
    out += [f"{k}: not in the template (saved {_describe(got[k])})" for k in got if k not in want]
    for k in want.keys() & got.keys():
        a, b = got[k], want[k]
        same_dtype = (not hasattr(b, "dtype")) or np.dtype(getattr(a, "dtype", type(a))) == np.dtype(b.dtype)
        if np.shape(a) != np.shape(b) or not same_dtype:
            out.append(f"{k}: saved {_describe(a)}, expected {_describe(b)}")
    return sorted(out)


def check_like(template: Any, tree: Any, what: str = "checkpoint") -> None:
    """ValueError naming every leaf path where ``tree`` differs from ``template`` (see :func:`mismatches`)."""
    bad = mismatches(template, tree)
    if bad:
        raise ValueError(f"{what} does not match the model it is loaded into "
                         f"({len(bad)} leaves differ):\n  " + "\n  ".join(bad))


def restore(template: T, state_dict: Mapping[str, Any], what: str = "checkpoint") -> T:
    """``template``'s structure filled from ``state_dict`` (e.g. ``msgpack_restore`` output), after
    checking every leaf's shape and dtype against it (:func:`check_like`)."""
    check_like(serialization.to_state_dict(template), state_dict, what)
    return serialization.from_state_dict(template, state_dict)


def to_bytes(tree: Any) -> bytes:
    """msgpack bytes of a pytree (bit-exact; read back with :func:`from_bytes`)."""
    return serialization.to_bytes(jax.device_get(tree))


def from_bytes(template: T, data: bytes, what: str = "checkpoint") -> T:
    """:func:`to_bytes` output read into ``template``'s structure, checked leaf by leaf."""
    return restore(template, serialization.msgpack_restore(data), what)


def _sync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_folder(folder: str | Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` ({name: bytes}) as the folder ``folder``, atomically (see the module)."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)  # a swap that never happened
    tmp.mkdir(parents=True)
    for name, data in files.items():
        _sync_write(tmp / name, data)
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    # (without ``folder``, an existing ``old`` is the last complete checkpoint: keep it until the swap)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def complete_folder(folder: str | Path) -> Path | None:
    """The complete checkpoint folder to read: ``folder``, else ``folder.old`` (a swap interrupted
    between its renames), else None."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if candidate.is_dir():
            return candidate
    return None
