"""End-to-end smoke tests of the programs (as flax's train_test.py does): every ``--model`` of
examples/train_tall.py, examples/train_two_tower.py, examples/custom_loop.py and
``python -m tall_jax.report`` run on tiny settings and write the files they promise; run folders
carry their settings; a resume with other settings fails naming the field.

Cheap by design: every program runs in this process (JAX is imported once, compilations are
shared), on the synthetic data with 1-2 epochs, E = 2 and a handful of local models / users. The
baselines' global models keep their configs but are capped at 2 epochs (``_tiny_global``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tall_jax import report
from tall_jax.baselines import experiment as baseline_experiment
from tall_jax.configs import MODELS
from tall_jax.metrics import RankingResult
from tall_jax.protocol import GROUP_NAMES

REPO = Path(__file__).resolve().parents[1]
BASELINES = ("loca", "lft", "enlft")
TINY = ["--experts", "2", "--epochs", "2", "--patience", "1", "--no-progress"]  # LOCA reads epochs, patience
TINY_LOCAL = ["--local-models", "2", "--anchors", "2", "--users", "3", "--ft-epochs", "1"]
RESULT_KEYS = {"dataset", "model", "seed", "split", "variant", "test", "valid", "settings", "paper", "lft_repo",
               "dataset_counts", "model_selection", "wall_time_s", "environment"}
ENVIRONMENT_KEYS = {"jax", "backend", "devices", "python", "platform", "date"}


def _example(name: str):
    """examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", REPO / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_global(real):
    """The baselines' global MultVAE / WL config, capped at 2 epochs (patience 1)."""
    return lambda dataset, config: dataclasses.replace(real(dataset, config), max_epochs=2, patience=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every model of train_tall.py, seed 0, tiny; returns (runs root, {model: run folder})."""
    root = tmp_path_factory.mktemp("smoke") / "runs"
    mp = pytest.MonkeyPatch()
    mp.setattr(baseline_experiment, "global_config", _tiny_global(baseline_experiment.global_config))
    try:
        train_tall = _example("train_tall")
        assert train_tall.main(["--model", *MODELS, *BASELINES, *TINY, *TINY_LOCAL, "--out", str(root)]) == 0
    finally:
        mp.undo()
    folders = {}
    for model in MODELS + BASELINES:
        (folder,) = (root / "synthetic").glob(f"{model}-*/seed0")  # one folder per model, named by settings
        folders[model] = folder
    return root, folders


@pytest.mark.parametrize("model", MODELS + BASELINES)
def test_every_model_writes_its_files(runs, model):
    _, folders = runs
    folder = folders[model]
    res = json.loads((folder / "results.json").read_text())
    assert RESULT_KEYS <= set(res) and ENVIRONMENT_KEYS <= set(res["environment"])
    assert res["model"] == model and res["dataset"] == "synthetic" and res["split"] == "random"
    assert set(res["test"]["groups"]) == set(GROUP_NAMES)
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["variant"] == res["variant"] and settings["config"] == res["settings"]
    assert (settings["model"], settings["seed"], settings["split"]) == (model, 0, "random")
    assert folder.parent.name.endswith("-" + settings["identity"])
    per_user = RankingResult.load_per_user(folder / "per_user_test.npz")
    assert np.isfinite(per_user.per_user["ndcg@20"]).all()
    if model in BASELINES:
        assert folder.parent.name == f"{model}-{settings['identity']}"
        assert np.load(folder / "evaluated_users.npy").size == (3 if model == "lft" else res["dataset_counts"]["users"])
    else:
        assert folder.parent.name.startswith(f"{model}-E{settings['config']['n_experts']}-")
        assert res["epochs_run"] <= 2 and res["figures"]
        assert all((folder / f).is_file() for f in res["figures"])


def test_report_reads_new_and_old_run_folders(runs, tmp_path, capsys):
    root, folders = runs
    mixed = tmp_path / "runs"
    shutil.copytree(folders["tall"], mixed / "synthetic" / folders["tall"].parent.name / "seed0")
    shutil.copytree(folders["multvae"], mixed / "synthetic" / "multvae" / "seed0")  # the older layout
    assert report.main([str(mixed), "--no-plot"]) == 0
    table = (mixed / "table2.md").read_text()
    assert "| multvae [patience=1, max_epochs=2] |" in table and "| tall [n_experts=2, patience=1, max_epochs=2] |" in table
    assert report.main([str(root), "--out", str(tmp_path / "all")]) == 0
    for name in ("table2.md", "table2.csv", "table2_fairness.csv", "table2.png"):
        assert (tmp_path / "all" / name).is_file()
    text = (tmp_path / "all" / "table2.md").read_text()
    assert all(f"| {m}" in text for m in MODELS + BASELINES)


def test_two_settings_never_share_a_folder_and_resume_checks_them(runs, capsys):
    from tall_jax.models import default_out_dir, run_experiment, run_settings

    root, folders = runs
    train_tall = _example("train_tall")

    def folder(model, split="random", **kw):
        return default_out_dir(root, run_settings("synthetic", model, split=split, **kw))

    tiny = {"n_experts": 2, "max_epochs": 2, "patience": 1}
    assert folder("tall", overrides=tiny) == folders["tall"]
    other = [folder("tall", overrides={**tiny, "n_experts": 3}), folder("tall", overrides={**tiny, "lr": 0.01}),
             folder("tall", split="authors", overrides=tiny)]
    assert len({f.parent for f in other} | {folders["tall"].parent}) == 4
    assert other[0].parent.name.startswith("tall-E3-")
    # an execution-only option is the same run; another seed is a sibling seed folder
    assert folder("tall", overrides={**tiny, "expert_chunk": 1}) == folders["tall"]
    assert folder("tall", seed=1, overrides=tiny) == folders["tall"].parent / "seed1"
    assert folder("loca", overrides={"n_local": 3}).parent != folder("loca", overrides={"n_local": 2}).parent
    # run_experiment writes exactly into out_dir; resuming it with other settings names the field
    with pytest.raises(ValueError, match=r"n_experts: 2 in settings.json vs 3 now"):
        run_experiment("synthetic", "tall", out_dir=folders["tall"], resume=True, progress=False,
                       overrides={"n_experts": 3, "max_epochs": 2, "patience": 1})
    # the command line: one line, exit status 2, before anything runs
    settings = folders["lmoe"] / "settings.json"
    saved = settings.read_text()
    record = json.loads(saved)
    record["config"]["lr"] = 0.5
    settings.write_text(json.dumps(record))
    capsys.readouterr()
    try:
        rc = train_tall.main(["--model", "lmoe", *TINY, "--out", str(root), "--resume"])
    finally:
        settings.write_text(saved)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err and last.startswith("error: cannot resume")
    assert "lr: 0.5 in settings.json vs 0.001 now" in last


def test_two_tower_example_writes_results_settings_and_figures(tmp_path):
    two_tower = _example("train_two_tower")
    out = tmp_path / "tt"
    # the sizes of test_two_tower_protocol's study test: the compiled steps are shared within a session
    assert two_tower.main(["--dataset", "synthetic", "--seed", "0", "--n-users", "1000", "--width", "8",
                           "--batch-size", "512", "--epochs", "1", "--inc-epochs", "1", "--no-progress",
                           "--out", str(out)]) == 0
    res = json.loads((out / "two_tower_results.json").read_text())
    assert {"dataset", "seeds", "variant", "settings", "environment", "ap", "gain", "models"} <= set(res)
    assert ENVIRONMENT_KEYS <= set(res["environment"]) and "width=8" in res["variant"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["train"] == res["settings"]["train"] and settings["seeds"] == [0]
    assert (out / "title_histograms.png").is_file() and (out / "territory_gains.png").is_file()


@pytest.mark.parametrize("model", ["tall", "local", "two_tower"])
def test_custom_loop_example_runs(model, capsys):
    """The one hand-written loop drives each model (the one state convention), one compilation each."""
    assert _example("custom_loop").main(["--model", model, "--epochs", "2", "--experts", "2"]) == 0
    out = capsys.readouterr().out
    assert "epoch  1" in out and "epoch  2" in out and "train_step compiled 1 time(s)" in out


def test_baselines_reuse_the_global_models_of_the_same_command(runs, tmp_path):
    """In one command, LOCA takes the multvae run as its global model and EnLFT the WL that LFT
    trained (the family runs first, then the baselines in the order given): the same result as a
    LOCA that trains its own global MultVAE."""
    _, folders = runs
    loca = json.loads((folders["loca"] / "results.json").read_text())
    enlft = json.loads((folders["enlft"] / "results.json").read_text())
    assert loca["global_model"]["reused_from"] == str(folders["multvae"])
    assert enlft["global_model"]["reused_from"] == str(folders["lft"] / "global_wl")
    assert "reused_from" not in json.loads((folders["lft"] / "results.json").read_text())["global_model"]
    mp = pytest.MonkeyPatch()
    mp.setattr(baseline_experiment, "global_config", _tiny_global(baseline_experiment.global_config))
    try:
        assert _example("train_tall").main(["--model", "loca", *TINY[2:], "--local-models", "2",
                                                 "--out", str(tmp_path)]) == 0
    finally:
        mp.undo()
    (alone,) = (tmp_path / "synthetic").glob("loca-*/seed0")
    own = json.loads((alone / "results.json").read_text())
    assert "reused_from" not in own["global_model"] and (alone / "global_multvae").is_dir()
    assert own["test"] == loca["test"] and own["valid"] == loca["valid"]


def test_api_page_custom_loop_block_runs():
    """The Python block of docs/api.md, as a newcomer copies it: it runs, one step per batch of its users."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) == 1
    scope: dict = {}
    exec(compile(blocks[0], "docs/api.md", "exec"), scope)
    assert int(scope["state"].step) == 1536 // scope["config"].batch_size and np.isfinite(np.asarray(scope["metrics"]["loss"])).all()


@pytest.mark.parametrize("command, python_form", [
    ("tall-jax-train", [str(REPO / "examples" / "train_tall.py")]),
    ("tall-jax-report", ["-m", "tall_jax.report"]),
    ("tall-jax-study", ["-m", "tall_jax.study"]),
    ("tall-jax-datasets", ["-m", "tall_jax.datasets"]),
])
def test_console_commands_are_the_python_forms(command, python_form):
    """`pip install -e .` installs each command, and it prints the help of its `python ...` form."""
    exe = shutil.which(command) or str(Path(sys.executable).with_name(command))
    assert Path(exe).exists(), f"{command} is not installed (pip install -e .)"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    ours, theirs = (subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, timeout=120)
                    for cmd in ([exe], [sys.executable, *python_form]))
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    body = lambda text: text.split("\n\n", 1)[1]  # noqa: E731  (the usage block names the program)
    assert body(ours.stdout) == body(theirs.stdout)
