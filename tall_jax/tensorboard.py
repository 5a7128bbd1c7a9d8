"""Per-epoch metrics as TensorBoard event files (``--tensorboard DIR``), beside the JSON history.

An optional dependency: the writer is tensorboardX (``pip install 'tall_jax[tensorboard]'``), imported
only when event files are asked for. It is fed each epoch's history record
(:func:`tall_jax.fit.epoch_record`) through :func:`tall_jax.fit.fit`'s ``on_epoch``, on the host after
the epoch's ``device_get``: nothing enters the jitted steps, and the history in results.json is the
same with or without it.
"""
from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

INSTALL = "pip install 'tall_jax[tensorboard]' (or pip install tensorboardX)"


def available() -> bool:
    """Whether tensorboardX can be imported."""
    return importlib.util.find_spec("tensorboardX") is not None


def check_available() -> None:
    """ValueError saying how to install tensorboardX when it cannot be imported."""
    if not available():
        raise ValueError(f"TensorBoard event files need the optional package tensorboardX, which is not "
                         f"installed: {INSTALL}")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard tag -> value of one epoch's history record: the training loss, its cross-entropy
    and KL parts and the KL weight; the validation score (mean NDCG@{1,5,10,20}) and NDCG@20,
    overall and per mainstreaminess group; the gate's mean and least entropy (mixtures); the epoch's
    seconds. Test metrics are left out: a curve one watches is a validation one."""
    values = {"train/loss": record["loss"], "train/ce": record.get("ce"), "train/kl": record.get("kl"),
              "train/kl_weight": record.get("beta"), "valid/score": record["valid_score"],
              "valid/ndcg_at_20": record.get("valid_ndcg@20")}
    values.update({f"valid/ndcg_at_20/{group}": value
                   for group, value in (record.get("valid_ndcg@20_by_group") or {}).items()})
    gate = record.get("gate") or {}
    values.update({"gate/entropy_mean": gate.get("entropy_mean"), "gate/entropy_min": gate.get("entropy_min")})
    values["time/epoch_seconds"] = record["seconds"]
    return {tag: float(value) for tag, value in values.items() if value is not None}


@contextlib.contextmanager
def epoch_writer(logdir: str | Path | None) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """An ``on_epoch`` callback writing each record's :func:`scalars` at step = its epoch into event
    files in ``logdir`` (flushed after every epoch, closed on exit), or None when ``logdir`` is None.
    A resumed run appends a new event file to the same folder."""
    if logdir is None:
        yield None
        return
    check_available()
    from tensorboardX import SummaryWriter  # why: an optional dependency, imported only when asked for

    writer = SummaryWriter(logdir=str(logdir))

    def write(record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, global_step=int(record["epoch"]))
        writer.flush()

    try:
        yield write
    finally:
        writer.close()


def write_history(logdir: str | Path, history: Iterable[dict[str, Any]]) -> None:
    """Every record of a finished run's ``history`` into event files in ``logdir`` (runs trained
    together as one program, whose epochs are not seen one by one)."""
    with epoch_writer(logdir) as write:
        for record in history:
            write(record)
