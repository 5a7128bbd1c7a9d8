"""examples/train_two_tower.py (tall_jax.two_tower.cli): a user mistake is one ``error: ...`` line and
exit status 2, before any output folder is made."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_two_tower.py"


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("examples_train_two_tower_cli", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output folder, runs/two_tower/..., lands here
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TALL_JAX_DATA", raising=False)


def _fails(ex, argv, capsys):
    from tall_jax.two_tower.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(lambda: ex.main(argv), "train_two_tower.py")
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "usage:" not in err, err
    return lines[0]


@pytest.mark.parametrize("flag, value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--alpha", "nan"), ("--alpha", "inf"),
    ("--weight-decay", "nan"), ("--weight-decay", "inf"), ("--head-dropout", "nan"),
])
def test_non_finite_or_out_of_range_numbers(ex, tmp_path, capsys, flag, value):
    out = tmp_path / "o"
    line = _fails(ex, ["--dataset", "synthetic", flag, value, "--out", str(out), "--no-progress"], capsys)
    assert flag in line and value in line, line
    assert not out.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [
    ["--dataset", "synthetic", "--width", "x"],
    ["--dataset", "nope"],
    ["--dataset", "synthetic", "--bogus"],
    ["--dataset", "synthetic", "--width", "0"],
])
def test_flag_errors_are_one_line(ex, tmp_path, capsys, argv):
    _fails(ex, argv, capsys)
    assert not (tmp_path / "runs").exists()


def test_missing_data_fails_before_the_output_folder(ex, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o"
    line = _fails(ex, ["--dataset", "ml-1m", "--data-dir", str(tmp_path / "empty"), "--out", str(out),
                       "--no-progress"], capsys)
    assert "ratings.dat" in line and not out.exists()
    line = _fails(ex, ["--dataset", "ml-1m", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)],
                  capsys)
    assert "nowhere" in line and "--data-dir" in line and not out.exists()


def test_a_diverged_run_is_one_line(capsys):
    from tall_jax.two_tower.cli import run_main

    def diverge():
        raise FloatingPointError("non-finite training loss at epoch 3")

    with pytest.raises(SystemExit) as e:
        run_main(diverge, "train_two_tower.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: non-finite"), err
    assert "smaller --lr" in err
