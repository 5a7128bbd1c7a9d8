"""examples/train_tall.py (tall_jax.commands.train) and python -m tall_jax.datasets: every user mistake is one "error:" line on
stderr, exit status 2, no traceback and no run folder; help text and defaults on every flag."""
from __future__ import annotations

import argparse
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tall_jax.baselines.config import SYNTHETIC_LFT, make_baseline_config
from tall_jax.commands import train as train_command
from tall_jax.configs import TALLConfig
from tall_jax.datasets import __main__ as datasets_cli
from tall_jax.datasets import download as dl
from tall_jax.datasets import load

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import train_tall  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No real user cache, data folder, offline or timeout setting from the environment."""
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "usercache"))
    for var in ("TALL_JAX_DATA", "TALL_JAX_OFFLINE", "TALL_JAX_DOWNLOAD_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)


def _run(tmp_path, capsys, *argv: str) -> tuple[int, str]:
    """train_tall.main in this process -> (exit status, stderr); argparse exits count as statuses."""
    try:
        rc = train_tall.main([*argv, "--out", str(tmp_path / "runs"), "--no-progress"])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_data_offline_in_a_fresh_process(tmp_path):
    """The reported bug: --dataset cds with no data and no network. Now: one message, status 2."""
    env = {**os.environ, "TALL_JAX_CACHE": str(tmp_path / "uc"), "JAX_PLATFORMS": "cpu"}
    env.pop("TALL_JAX_DATA", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train_tall.py"), "--dataset", "cds", "--offline",
         "--out", str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    msg = _one_error_line(proc.stderr)
    assert "cds/CDs_and_Vinyl.csv" in msg and str(tmp_path / "uc") in msg  # where it looked
    assert "--data-dir" in msg and "TALL_JAX_DATA" in msg and "offline" in msg
    assert not (tmp_path / "runs").exists()


def test_offline_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TALL_JAX_OFFLINE", "1")
    monkeypatch.setattr(dl, "fetch", lambda *a, **k: pytest.fail("downloaded although offline"))
    rc, err = _run(tmp_path, capsys, "--dataset", "yelp")
    assert rc == 2 and "TALL_JAX_OFFLINE=1" in _one_error_line(err)
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("TALL_JAX_OFFLINE", "maybe")
    rc, err = _run(tmp_path, capsys, "--dataset", "yelp")
    assert rc == 2 and "TALL_JAX_OFFLINE" in _one_error_line(err)


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        time.sleep(1.5)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_yelp(monkeypatch):
    """The yelp source points at a local server that answers after 1.5 s."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    src = dl.Source(rel="yelp/yelp.rating", urls=(f"http://127.0.0.1:{httpd.server_port}/yelp.rating",))
    monkeypatch.setitem(load._RAW, "yelp", (["yelp/yelp.rating"], load.read_yelp, src))
    yield
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_download_timeout(tmp_path, capsys, monkeypatch, slow_yelp, how):
    if how == "env":
        monkeypatch.setenv("TALL_JAX_DOWNLOAD_TIMEOUT", "0.2")
        rc, err = _run(tmp_path, capsys, "--dataset", "yelp")
    else:
        rc, err = _run(tmp_path, capsys, "--dataset", "yelp", "--download-timeout", "0.2")
    msg = _one_error_line(err)
    assert rc == 2 and "timed out" in msg and "0.2 s" in msg and "--download-timeout" in msg
    assert "yelp/yelp.rating" in msg and not (tmp_path / "runs").exists()
    assert not list((tmp_path / "usercache").rglob("*.part"))


@pytest.mark.parametrize("argv, needle", [
    (["--download-timeout", "0"], "download timeout"),
    (["--download-timeout", "soon"], "download timeout"),
    (["--seed", "-1"], "must be >= 0"),
    (["--datas", "ml-1m"], "unrecognized arguments: --datas"),  # no abbreviations
    (["--dataset", "netflix"], "unknown dataset 'netflix'"),
    (["--kcore", "10"], "USERS,ITEMS"),
    (["--columns", "user,thing"], "unknown column name"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, argv, needle):
    rc, err = _run(tmp_path, capsys, *argv)
    assert rc == 2 and needle in _one_error_line(err) and "--help" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--lr", "-1"], "'lr' must be > 0"),
    (["--lr", "nan"], "'lr' must be a finite number"),
    (["--alpha", "inf"], "'alpha' must be a finite number"),
    (["--gate-temperature", "inf"], "'gate_temperature' must be a finite number"),
    (["--reg", "-0.1"], "'reg' must be >= 0"),
    (["--epochs", "0"], "'max_epochs' must be > 0"),
    (["--batch-size", "0"], "'batch_size' must be > 0"),
    (["--dropout", "1.5"], "'dropout' must be in [0, 1)"),
    (["--experts", "0"], "'n_experts' must be > 0"),
    (["--patience", "0"], "'patience' must be > 0"),
    (["--gate-temperature", "-2"], "'gate_temperature' must be > 0"),
    (["--wl-gamma", "-1", "--model", "wl"], "'wl_gamma' must be >= 0"),
    (["--model", "lft", "--users", "-3"], "users and chunk must be >= 0"),
    (["--model", "lft", "--ft-epochs", "0"], "'ft_epochs' must be >= 1"),
    (["--data-dir", "/no/such/folder"], "/no/such/folder"),
    (["--columns", "user,item"], "own data file only"),
    (["--global-from", "/no/such/run"], "--global-from applies to"),
    (["--model", "enlft", "--users", "200"], "--users applies to lft, not to --model enlft"),
    (["--model", "multvae", "--anchors", "3"], "--anchors applies to enlft, not to"),
    (["--model", "lft", "--epochs", "3"], "--epochs applies to the mixture family and loca, not to"),
])
def test_bad_settings_exit_2_before_any_run_folder(tmp_path, capsys, argv, needle):
    rc, err = _run(tmp_path, capsys, *argv)
    assert rc == 2 and needle in _one_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_config_checks_in_post_init():
    for bad in (dict(lr=0.0), dict(lr=-1e-3), dict(lr=float("inf")), dict(reg=-1.0),
                dict(noise_std=-0.1), dict(constant_beta=-0.2), dict(seed=-1), dict(anneal_cap=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TALLConfig(**bad)
    TALLConfig(reg=0.0, noise_std=0.0, constant_beta=0.2)  # boundaries are fine


def test_own_data_errors_name_file_and_line(tmp_path, capsys):
    path = tmp_path / "clicks.csv"
    path.write_text("user,item,rating\na,b,5\nc,d\n")
    rc, err = _run(tmp_path, capsys, "--dataset", str(path))
    msg = _one_error_line(err)
    assert rc == 2 and "clicks.csv, line 3" in msg and "2 fields, not 3" in msg
    rc, err = _run(tmp_path, capsys, "--dataset", str(tmp_path / "missing.csv"))
    assert rc == 2 and "no such file" in _one_error_line(err)
    assert not (tmp_path / "runs").exists()


def _help_lines(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help as --help prints it (with the formatter's "(default: ...)")."""
    formatter = parser._get_formatter()
    lines = {}
    for a in parser._actions:
        if a.option_strings and a.dest != "help":
            text = formatter._get_help_string(a)
            lines[a.option_strings[-1]] = text % {**vars(a), "default": a.default} if "%(" in text else text
    return lines


def test_every_flag_has_help_and_a_default():
    parser = train_tall.build_parser()
    assert parser.allow_abbrev is False
    lines = _help_lines(parser)
    assert {"--offline", "--download-timeout", "--ft-epochs", "--columns", "--min-rating", "--kcore"} <= set(lines)
    for flag, text in lines.items():
        assert text and "default" in text, f"{flag}: {text!r}"
    assert f"synthetic data {SYNTHETIC_LFT['users']}" in lines["--users"]
    stats = datasets_cli._parser()._subparsers._group_actions[0].choices["stats"]
    assert stats.allow_abbrev is False
    for flag, text in _help_lines(stats).items():
        assert text and ("default" in text or flag == "--verbose"), f"{flag}: {text!r}"


def test_lft_on_synthetic_is_reduced_and_says_so():
    cfg = make_baseline_config("lft", dataset="synthetic")
    assert (cfg.users, cfg.ft_epochs) == (SYNTHETIC_LFT["users"], SYNTHETIC_LFT["ft_epochs"])
    assert make_baseline_config("lft", dataset="synthetic", users=0, ft_epochs=30).users == 0
    assert make_baseline_config("lft", dataset="ml-1m").users == 0  # real data: the full run
    from tall_jax.configs import variant
    assert variant(cfg, make_baseline_config("lft")) == "ft_epochs=10, users=50"


def test_a_baseline_flag_reaches_only_the_baselines_that_read_it(tmp_path, capsys, monkeypatch):
    """--model lft enlft --users 200 --anchors 7: LFT gets the user subset, EnLFT the anchors; neither
    is recorded as a variant in a field its code never reads (EnLFT has no user subset)."""
    with pytest.raises(ValueError, match="users: not read by enlft"):
        make_baseline_config("enlft", users=200)
    seen = {}

    def record(root, settings):
        seen[settings["config"]["model"]] = settings
        return tmp_path / "runs" / settings["config"]["model"]

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "default_out_dir", record)
    monkeypatch.setattr(train_command, "train_run", stop)
    rc, _ = _run(tmp_path, capsys, "--model", "lft", "enlft", "--users", "200", "--anchors", "7")
    assert rc == 130
    assert seen["lft"]["variant"] == "ft_epochs=10, users=200" and seen["lft"]["config"]["n_anchors"] == 100
    assert seen["enlft"]["variant"] == "n_anchors=7" and seen["enlft"]["config"]["users"] == 0


def test_datasets_cli_errors(tmp_path, capsys):
    rc = datasets_cli.main(["stats", "--dataset", "yelp", "--offline"])
    err = capsys.readouterr().err
    assert rc == 2 and "offline" in _one_error_line(err)
    rc = datasets_cli.main(["stats", "--dataset", "synthetic", "--data-dir", str(tmp_path / "nope")])
    assert rc == 2 and "no such folder" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as e:
        datasets_cli.main(["stats", "--dataset", "synthetic", "--cache", str(tmp_path)])
    assert e.value.code == 2 and "unrecognized arguments" in _one_error_line(capsys.readouterr().err)
