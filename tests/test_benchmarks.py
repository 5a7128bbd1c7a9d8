"""The benchmark harness runs end to end (tiny shapes, CPU) so the GPU suite is known to work before a
GPU is lent; the numbers themselves are not checked (wall-clock time is never asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_dry_run_writes_every_row(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHONPATH=str(REPO))
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_suite_dry_run.json").read_text())
    rows = {(r["variant"], r["mode"]) for r in result["runs"] if "wall" in r}
    for mode in ("vmapped", "fit_epoch", "seeds_vmapped"):
        assert ("f32", mode) in rows, (mode, proc.stdout[-2000:])
    assert "loadavg_start" in result and result["versions"]["jax"]
    torch_rows = [r for r in result["runs"] if r["mode"] == "torch"]
    try:
        import torch  # noqa: F401
        assert "wall" in torch_rows[0], torch_rows
    except ImportError:
        pass
    assert any("x_vs_f32" in r for r in result["speedups"])
    two_tower = json.loads((tmp_path / "gpu_suite_two_tower_dry_run.json").read_text())
    rows = {(r["case"], r["impl"]) for r in two_tower["runs"] if "wall" in r}
    assert {("cpu:32:baseline", "jax"), ("cpu:32:mtl", "jax")} <= rows, proc.stdout[-2000:]
    try:
        import torch  # noqa: F401, F811
        assert {("cpu:32:baseline", "torch"), ("cpu:32:mtl", "torch")} <= rows, proc.stdout[-2000:]
        assert all(r["check"]["agrees"] for r in two_tower["runs"] if r["impl"] == "torch")
        assert len(two_tower["speedups"]) == 2
    except ImportError:
        pass
