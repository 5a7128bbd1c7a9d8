"""Checkpoints: orbax-checkpoint folders, read back into a template and checked leaf by leaf.

A checkpoint is a folder of items: pytrees of arrays (orbax's PyTree format, OCDBT + zarr: a
sharded ``jax.Array`` is written shard by shard from the devices that hold it, never gathered to
one host) and one JSON item of metadata (``progress/progress.json``). A run's checkpoints
(:class:`Checkpoints`) are the steps of an ``orbax.checkpoint.CheckpointManager`` over one folder:
``<root>/<n>/`` for the n-th save, the last ``max_to_keep`` kept. Orbax writes a step as
``<root>/<n>.orbax-checkpoint-tmp/`` and renames it into place when every item is written, so
``<root>/<n>/`` only ever exists complete; a leftover temporary (a killed writer) is never read
and is removed by the next writer. A write that fails (disk full) removes its temporary and raises
:class:`CheckpointWriteError` naming the folder. One stand-alone folder (:func:`save_folder`) is
written the same way and replaces its previous version by two renames (as :func:`write_folder`).

Reading a pytree checks it against a template first, from the saved metadata: a leaf whose shape
or dtype differs, or a missing or extra leaf, is a ValueError naming every such leaf path with
both shapes (:func:`mismatches`). The arrays are then restored with the template's shardings (or as
host numpy arrays). A file that cannot be read (truncated, garbage, missing, a JSON without a
field) is a :class:`CorruptCheckpointError` naming the file and what is wrong;
:func:`first_readable` falls back from it to an older complete checkpoint, saying so.

Checkpoints written before orbax (msgpack bytes: :func:`to_bytes`; folders written by
:func:`write_folder`, which :func:`complete_folder` finds) are still read.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization, traverse_util

T = TypeVar("T")
log = logging.getLogger("tall_jax.checkpoint")

META = "progress"  # the JSON item of every checkpoint folder
META_FILE = "progress.json"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's temporary folders (a step or an item being written)
COPY_SUFFIX = ".copy-tmp"  # a step being copied in (:meth:`Checkpoints.add_copy`)


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and what is wrong."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (e.g. the disk is full); the message names the folder.
    Nothing of it is left behind: the previous checkpoint, if any, is untouched."""


def _describe(a: Any) -> str:
    return f"{np.dtype(a.dtype) if hasattr(a, 'dtype') else type(a).__name__}{list(np.shape(a))}"


def mismatches(template: Any, tree: Any) -> list[str]:
    """One line per leaf path where the state dicts of ``tree`` and ``template`` differ in presence,
    shape or dtype (empty when they match). ``tree``'s leaves may be arrays or anything with
    ``shape`` and ``dtype`` (orbax's array metadata)."""
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


# --- the msgpack format of earlier versions (still read) -------------------------------------------


def to_bytes(tree: Any) -> bytes:
    """msgpack bytes of a pytree (bit-exact; read back with :func:`from_bytes`). Gathers every
    array to the host: the format of checkpoints written before orbax, kept for reading them."""
    return serialization.to_bytes(jax.device_get(tree))


def read_msgpack(path: str | Path) -> dict[str, Any]:
    """The state dict in the msgpack file ``path``; CorruptCheckpointError naming the file when it
    is missing, truncated or not msgpack."""
    path = Path(path)
    try:
        out = serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{path}: missing") from None
    except Exception as e:  # msgpack's ExtraData, FormatError, ValueError("incomplete input")...
        raise CorruptCheckpointError(f"{path}: not a complete msgpack checkpoint ({_one_line(e)})") from e
    if not isinstance(out, dict):
        raise CorruptCheckpointError(f"{path}: not a complete msgpack checkpoint "
                                     f"(holds a {type(out).__name__}, not a state dict)")
    return out


def from_bytes(template: T, data: bytes, what: str = "checkpoint") -> T:
    """:func:`to_bytes` output read into ``template``'s structure, checked leaf by leaf."""
    try:
        state_dict = serialization.msgpack_restore(data)
    except Exception as e:
        raise CorruptCheckpointError(f"{what}: not a complete msgpack checkpoint ({_one_line(e)})") from e
    return restore(template, state_dict, what)


def read_json(path: str | Path, keys: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON object in ``path``; CorruptCheckpointError naming the file when it is missing,
    not JSON, not an object, or lacks one of ``keys``."""
    path = Path(path)
    try:
        out = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(out, dict):
        raise CorruptCheckpointError(f"{path}: expected a JSON object, found {type(out).__name__}")
    missing = [k for k in keys if k not in out]
    if missing:
        raise CorruptCheckpointError(f"{path}: no {', '.join(map(repr, missing))} "
                                     f"(it has {', '.join(map(repr, out)) or 'no keys'})")
    return out


def _sync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _swap_in(tmp: Path, folder: Path) -> Path:
    """Rename the complete folder ``tmp`` to ``folder``: the previous ``folder`` is first renamed
    ``<folder>.old`` (POSIX cannot rename onto a non-empty folder) and removed after the swap, so a
    crash between the renames leaves ``<folder>.old``, which :func:`complete_folder` reads."""
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    # (without ``folder``, an existing ``old`` is the last complete version: keep it until the swap)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def write_folder(folder: str | Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` ({name: bytes}) as the folder ``folder``, atomically: into ``<folder>.tmp/``,
    then :func:`_swap_in` (the layout of run checkpoints before orbax)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # a swap that never happened
    tmp.mkdir(parents=True)
    try:
        for name, data in files.items():
            _sync_write(tmp / name, data)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _write_error(folder, e) from e
        raise
    return _swap_in(tmp, folder)


def complete_folder(folder: str | Path) -> Path | None:
    """The complete folder to read: ``folder``, else ``folder.old`` (a swap interrupted between its
    renames), else None."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if candidate.is_dir():
            return candidate
    return None


# --- orbax folders ---------------------------------------------------------------------------------


def _handlers(trees: Iterable[str]) -> dict[str, ocp.CheckpointHandler]:
    out: dict[str, ocp.CheckpointHandler] = {name: ocp.PyTreeCheckpointHandler() for name in trees}
    out[META] = ocp.JsonCheckpointHandler(filename=META_FILE)
    return out


def _save_args(trees: Mapping[str, Any], meta: Mapping[str, Any]) -> ocp.args.Composite:
    if META in trees:
        raise ValueError(f"{META!r} is the metadata item; name the pytree otherwise")
    items: dict[str, Any] = {name: ocp.args.PyTreeSave(tree) for name, tree in trees.items()}
    items[META] = ocp.args.JsonSave(dict(meta))
    return ocp.args.Composite(**items)


def _os_errno(e: BaseException) -> int:
    if isinstance(e, OSError) and e.errno:
        return e.errno
    found = re.search(r"os_error_code='?(\d+)", str(e))  # tensorstore: "... [os_error_code='28']"
    if found:
        return int(found.group(1))
    return errno.ENOSPC if "No space left" in str(e) else errno.EIO


def _write_error(folder: Path, e: BaseException) -> CheckpointWriteError:
    code = _os_errno(e)
    detail = " ".join(str(e).split())
    detail = detail if len(detail) <= 400 else detail[:400] + "..."
    return CheckpointWriteError(code, f"{folder}: could not write the checkpoint "
                                      f"({os.strerror(code)}); nothing of it was kept. {detail}")


def _remove_temporaries(parent: Path, name: str, settle_s: float = 0.0) -> None:
    """Remove orbax's temporaries of ``name`` in ``parent``. After a failed write, ``settle_s``: the
    writes of the other items may still be finishing in orbax's threads (and recreate folders):
    remove again until nothing reappears for a moment."""
    deadline = time.monotonic() + settle_s
    while parent.is_dir():
        found = list(parent.glob(f"{name}{TMP_SUFFIX}*"))
        for p in found:
            shutil.rmtree(p, ignore_errors=True)
        if time.monotonic() >= deadline and not found:
            return
        time.sleep(0.05)


def save_folder(folder: str | Path, trees: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """Write the pytrees ``trees`` ({item name: pytree}) and the JSON object ``meta`` as the orbax
    folder ``folder``, replacing a previous one atomically (a reader finds the old folder or the
    new one, never a part). Sharded arrays are written shard by shard (no gather)."""
    folder = Path(folder).absolute()  # orbax refuses relative paths (a run's --out usually is one)
    folder.parent.mkdir(parents=True, exist_ok=True)
    new = folder.with_name(folder.name + ".new")
    for leftover in (new, folder.with_name(folder.name + ".old") if folder.exists() else None):
        if leftover is not None and leftover.exists():
            shutil.rmtree(leftover)  # a writer killed before its swap
    _remove_temporaries(folder.parent, new.name)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(**_handlers(trees)))
    try:
        checkpointer.save(new, args=_save_args(trees, meta))
    except BaseException as e:
        try:
            checkpointer.close()  # waits for the items still being written
        except Exception:
            pass
        _remove_temporaries(folder.parent, new.name, settle_s=0.2)
        shutil.rmtree(new, ignore_errors=True)
        if isinstance(e, Exception):
            raise _write_error(folder, e) from e
        raise
    finally:
        checkpointer.close()
    return _swap_in(new, folder)


def is_orbax_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a checkpoint folder written by :func:`save_folder` or a step of
    :class:`Checkpoints` (it has the metadata item)."""
    return (Path(folder) / META).is_dir()


def complete_orbax_folder(folder: str | Path) -> Path | None:
    """The complete orbax folder to read for ``folder`` (itself, else the ``.old`` a swap left), or None."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if is_orbax_folder(candidate):
            return candidate
    return None


def read_meta(folder: str | Path, keys: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON metadata of the orbax checkpoint folder ``folder`` (:func:`read_json`: checked to
    hold ``keys``)."""
    return read_json(Path(folder) / META / META_FILE, keys)


def _restore_args(template: Any, host: bool) -> Any:
    def one(leaf):
        if not host and isinstance(leaf, jax.Array):
            return ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape, dtype=leaf.dtype)
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=getattr(leaf, "dtype", None))
    return jax.tree.map(one, template)


def read_tree(folder: str | Path, name: str, template: Any = None, *, host: bool = False) -> Any:
    """The pytree item ``name`` of the orbax folder ``folder``, as a state dict.

    With ``template`` (a pytree of arrays, e.g. a TrainState) the saved leaves are first checked
    against it (ValueError naming every leaf that differs, :func:`mismatches`), then restored with
    its leaves' shardings: each device reads its own shard, nothing is gathered. ``host=True``, or a
    template leaf that is no ``jax.Array``, restores a numpy array. Without a template every leaf
    is restored as saved, as numpy. CorruptCheckpointError naming the item's folder when it cannot
    be read."""
    item = Path(folder).absolute() / name
    handler = ocp.PyTreeCheckpointHandler()
    try:
        if not (item / "_METADATA").is_file():
            raise CorruptCheckpointError(f"{item}: missing ({'no _METADATA' if item.is_dir() else 'no such folder'})")
        try:
            saved = handler.metadata(item)
            saved = getattr(saved, "tree", saved)
        except Exception as e:
            raise CorruptCheckpointError(f"{item}: unreadable metadata ({_one_line(e)})") from e
        if template is None:
            target = None
            restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), saved)
        else:
            target = serialization.to_state_dict(template)
            check_like(target, saved, str(item))
            restore_args = _restore_args(target, host)
        try:
            return handler.restore(item, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
        except Exception as e:
            raise CorruptCheckpointError(f"{item}: unreadable arrays ({_one_line(e)})") from e
    finally:
        handler.close()


def _one_line(e: BaseException, limit: int = 500) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[:limit] + "..."


class Checkpoints:
    """The checkpoints of one run: an ``orbax.checkpoint.CheckpointManager`` over ``root`` whose
    steps are the successive saves (``<root>/1/``, ``<root>/2/``, ...; the last ``max_to_keep``
    kept), each a folder of pytree items and the JSON item ``progress``. Synchronous: on return
    from :meth:`save` the step is complete on disk. Use as a context manager (or :meth:`close`).

    Only a run's writer should open it: opening removes the temporaries a killed writer left.
    Readers list :func:`steps` and read a step with :func:`read_meta` / :func:`read_tree`."""

    def __init__(self, root: str | Path, items: Iterable[str], *, max_to_keep: int | None = 1):
        self.root = Path(root).absolute()  # orbax refuses relative paths
        self.items = tuple(items)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True, create=True)
        self._manager = ocp.CheckpointManager(self.root, options=options,
                                              item_handlers=_handlers(self.items))

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._manager.close()

    def steps(self) -> list[int]:
        """The complete steps, newest first."""
        return steps(self.root)

    def _next_step(self) -> int:
        return max([*self.steps(), *self._manager.all_steps()], default=0) + 1

    def save(self, trees: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
        """Write ``trees`` ({item: pytree}, the items given at construction) and ``meta`` as the next
        step; older steps beyond ``max_to_keep`` are then removed. Returns the step's folder.
        CheckpointWriteError naming the folder when it cannot be written (nothing of it is left)."""
        if set(trees) != set(self.items):
            raise ValueError(f"Checkpoints.save: items {sorted(trees)}, expected {sorted(self.items)}")
        step = self._next_step()
        try:
            saved = self._manager.save(step, args=_save_args(trees, meta), force=True)
            self._manager.wait_until_finished()
        except BaseException as e:
            try:
                self._manager.close()  # waits for the items still being written
            except Exception:
                pass
            _remove_temporaries(self.root, str(step), settle_s=0.2)
            if isinstance(e, Exception):
                raise _write_error(self.root / str(step), e) from e
            raise
        if not saved or not (self.root / str(step)).is_dir():
            raise CheckpointWriteError(errno.EIO, f"{self.root / str(step)}: orbax did not write the checkpoint")
        return self.root / str(step)

    def add_copy(self, folder: str | Path) -> Path:
        """Copy the complete checkpoint folder ``folder`` (a step of another run) in as the next step,
        atomically (copied under a temporary name, then renamed)."""
        step = self._next_step()
        # not orbax's temporary name: the manager removes those in the background when it opens
        tmp = self.root / f"{step}{COPY_SUFFIX}"
        for stale in self.root.glob(f"*{COPY_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True)  # a copy that was killed
        try:
            shutil.copytree(folder, tmp)
            os.replace(tmp, self.root / str(step))
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise _write_error(self.root / str(step), e) from e
            raise
        self._manager.reload()
        return self.root / str(step)


def steps(root: str | Path) -> list[int]:
    """The complete steps of the :class:`Checkpoints` folder ``root``, newest first (orbax names a
    finished step by its number; a step being written carries a temporary suffix). Reads nothing
    else and writes nothing: safe while a writer works."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((int(p.name) for p in root.iterdir() if p.name.isdigit() and is_orbax_folder(p)),
                  reverse=True)


def first_readable(list_candidates: Callable[[], Iterable[tuple[Path, Callable[[], T]]]]) -> T | None:
    """The result of the first reader of ``list_candidates()`` ([(path, reader)], newest checkpoint
    first) that does not raise CorruptCheckpointError; each one that does is logged as a warning
    naming its file, and the next (older) one is tried. None without candidates;
    CorruptCheckpointError naming every file when none is readable. Any other error (e.g. a
    checkpoint of another model: ValueError naming the leaves) is raised. A candidate that vanished
    while being read (a writer replaced it meanwhile) makes it list the candidates again."""
    for _ in range(3):
        errors: list[str] = []
        vanished = False
        for path, reader in list_candidates():
            try:
                out = reader()
            except CorruptCheckpointError as e:
                if not path.exists():
                    vanished = True
                    break
                errors.append(str(e))
                log.warning("checkpoint %s is unreadable: %s; trying the previous complete checkpoint", path, e)
                continue
            if errors:
                log.warning("using the previous complete checkpoint %s (a newer one is unreadable: %s)",
                            path, errors[0])
            return out
        if vanished:
            continue
        if errors:
            raise CorruptCheckpointError(
                "no readable checkpoint: " + "; ".join(errors)
                + ("" if len(errors) > 1 else " (and no previous complete checkpoint to fall back to)"))
        return None
    raise CorruptCheckpointError("the checkpoints changed while being read three times over: "
                                 "is another process writing them?")
