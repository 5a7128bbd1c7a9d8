"""--tensorboard DIR: each epoch's scalars as TensorBoard event files under
DIR/<dataset>/<model folder>/seed<k>, the same values as the JSON history, which does not change; a
missing tensorboardX is one error line before anything runs."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tall_jax import tensorboard
from tall_jax.commands import train as train_command

TINY = ["--model", "tall", "--experts", "2", "--epochs", "2", "--patience", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "usercache"))
    for var in ("TALL_JAX_DATA", "TALL_JAX_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def _read_events(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in ``folder``'s event files (TFRecord-framed Event protos:
    length u64, its CRC u32, the record, its CRC u32)."""
    from tensorboardX.proto import event_pb2

    values: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                values.setdefault(value.tag, {})[event.step] = value.simple_value
    return values


def test_missing_tensorboardx_is_one_error_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    rc = train_command.main([*TINY, "--out", str(tmp_path / "runs"), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1
    assert "--tensorboard" in lines[0] and "tensorboardX" in lines[0] and "pip install" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tb").exists()


def test_scalars_of_a_record():
    record = {"epoch": 3, "seconds": 1.5, "loss": 2.0, "ce": 1.8, "kl": 0.2, "beta": 0.1, "valid_score": 0.3,
              "valid_ndcg@20": 0.4, "test_ndcg@20": 0.9, "valid_ndcg@20_by_group": {"low": 0.1, "high": 0.7},
              "gate": {"entropy_mean": 0.6, "entropy_min": 0.2, "entropy_uniform": 0.69}}
    assert tensorboard.scalars(record) == {
        "train/loss": 2.0, "train/ce": 1.8, "train/kl": 0.2, "train/kl_weight": 0.1, "valid/score": 0.3,
        "valid/ndcg_at_20": 0.4, "valid/ndcg_at_20/low": 0.1, "valid/ndcg_at_20/high": 0.7,
        "gate/entropy_mean": 0.6,
        "gate/entropy_min": 0.2, "time/epoch_seconds": 1.5}  # no test metric
    assert "gate/entropy_mean" not in tensorboard.scalars({**record, "gate": None})


def test_a_run_writes_its_epochs_as_event_files_and_the_same_history(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    events = tmp_path / "tb"
    assert train_command.main([*TINY, "--out", str(tmp_path / "with"), "--tensorboard", str(events)]) == 0
    assert train_command.main([*TINY, "--out", str(tmp_path / "without")]) == 0
    (folder,) = (tmp_path / "with").glob("synthetic/tall-E2-*/seed0")
    (plain,) = (tmp_path / "without").glob("synthetic/tall-E2-*/seed0")
    history = json.loads((folder / "results.json").read_text())["history"]

    def timeless(h):
        return [{k: v for k, v in record.items() if k != "seconds"} for record in h]
    assert timeless(history) == timeless(json.loads((plain / "results.json").read_text())["history"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in plain.iterdir())

    logdir = events / folder.relative_to(tmp_path / "with")  # DIR/<dataset>/<model folder>/seed<k>
    files = list(logdir.glob("events.out.tfevents.*"))
    assert files and all(f.stat().st_size > 0 for f in files)
    scalars = _read_events(logdir)
    assert len(history) == 2
    for record in history:
        for tag, value in tensorboard.scalars(record).items():
            assert scalars[tag][record["epoch"]] == pytest.approx(value, rel=1e-6, abs=1e-7), tag
    assert {"train/loss", "valid/score", "valid/ndcg_at_20", "gate/entropy_mean",
            "time/epoch_seconds"} <= set(scalars)
