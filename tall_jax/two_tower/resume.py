"""Day checkpoints of one seed's two-tower protocol, so a killed run resumes at its next fit.

After every fit of :func:`tall_jax.two_tower.experiment.run_seed` (the first fit, then each daily
update) and the scoring of its test days, the model's state and everything computed so far (the
finished models' results, this model's per-day APs, histories, scores) are saved as the next step of
a :class:`tall_jax.checkpoint.Checkpoints` folder: the state as an orbax pytree item (bit-exact), the
rest in the step's JSON metadata in a tagged form that keeps numpy dtypes, integer dict keys and NaN.
A run given the same folder starts after the newest readable step; as training draws its batches and
dropout keys from the seed, the fit index and the state alone, its results equal an uninterrupted
run's bit for bit. A folder written for other settings (config, seed, models) or other data
(:func:`digest`) is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flax import serialization

from tall_jax import checkpoint

ITEMS = ("state",)


def encode(obj: Any) -> Any:
    """``obj`` (dicts, lists, tuples, numpy arrays and scalars, Python scalars, None) as JSON-able
    data that :func:`decode` turns back into an equal object of the same types."""
    if isinstance(obj, np.ndarray):
        return {"__array__": obj.tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {"__scalar__": obj.item(), "dtype": obj.dtype.str}
    if isinstance(obj, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"day checkpoint: cannot store a {type(obj).__name__}")


def decode(data: Any) -> Any:
    """The object :func:`encode` was given."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__array__" in data:
        return np.asarray(data["__array__"], dtype=np.dtype(data["dtype"])).reshape(data["shape"])
    if "__scalar__" in data:
        return np.dtype(data["dtype"]).type(data["__scalar__"])
    if "__tuple__" in data:
        return tuple(decode(v) for v in data["__tuple__"])
    return {decode(k): decode(v) for k, v in data["__dict__"]}


def digest(obj: Any) -> str:
    """A SHA-256 of every array, sparse matrix, number and string reachable from ``obj`` through
    dataclass fields, dicts, lists and tuples (with their structure): the identity of a data set."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            h.update(type(o).__name__.encode())
            for f in dataclasses.fields(o):
                h.update(f.name.encode())
                walk(getattr(o, f.name))
        elif isinstance(o, dict):
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"[{len(o)}".encode())
            for v in o:
                walk(v)
        elif isinstance(o, np.ndarray):
            h.update(f"{o.dtype.str}{o.shape}".encode())
            h.update(np.ascontiguousarray(o).tobytes())
        elif hasattr(o, "tocsr"):  # a scipy sparse matrix
            m = o.tocsr()
            h.update(f"csr{m.shape}".encode())
            for a in (m.data, m.indices, m.indptr):
                walk(np.asarray(a))
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


@dataclasses.dataclass
class Resumed:
    """Where a saved run stood: after fit ``fit`` of model ``model`` (indices), with its ``state`` and
    the host-side ``progress`` the caller saved."""

    model: int
    fit: int
    state: Any
    progress: dict[str, Any]


class DayCheckpoints:
    """The day checkpoints of one seed in ``root`` (nothing is read or written when ``root`` is None).
    ``settings`` (JSON-able) identify the run; a folder saved under other settings is a ValueError."""

    def __init__(self, root: str | Path | None, settings: dict[str, Any]):
        self.root = None if root is None else Path(root).absolute()
        self.settings = settings

    def latest(self, template_of: Callable[[int], Any]) -> Resumed | None:
        """The newest readable step (an unreadable one falls back to the one before), its state read
        into ``template_of(model index)``; None when there is none."""
        if self.root is None:
            return None

        def reader(folder: Path) -> Resumed:
            meta = checkpoint.read_meta(folder, ("settings", "model", "fit", "progress"))
            if meta["settings"] != self.settings:
                raise ValueError(f"{folder}: day checkpoint of other settings ({meta['settings']}); "
                                 f"this run: {self.settings}")
            template = template_of(meta["model"])
            saved = checkpoint.read_tree(folder, "state", serialization.to_state_dict(template))
            return Resumed(meta["model"], meta["fit"], serialization.from_state_dict(template, saved),
                           decode(meta["progress"]))

        root = self.root
        return checkpoint.first_readable(
            lambda: [(root / str(s), lambda s=s: reader(root / str(s))) for s in checkpoint.steps(root)])

    def save(self, model: int, fit: int, state: Any, progress: dict[str, Any]) -> None:
        """Save the state and ``progress`` after fit ``fit`` of model ``model`` as the next step."""
        if self.root is None:
            return
        with checkpoint.Checkpoints(self.root, ITEMS, max_to_keep=2) as ckpt:
            ckpt.save({"state": serialization.to_state_dict(state)},
                      {"settings": self.settings, "model": model, "fit": fit, "progress": encode(progress)})
