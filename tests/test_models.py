"""The model table (tall_jax.models) and what the command line does with run folders: every model
resolves through one table, a run's config is made once, own data files are part of a run's identity,
and a folder that holds a run is never started over or resumed silently."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tall_jax import identity, models
from tall_jax.commands import train as train_command
from tall_jax.configs import MODELS
from tall_jax.baselines import BASELINES
from tall_jax.datasets import register_dataset

TINY = ["--epochs", "1", "--patience", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "usercache"))
    for var in ("TALL_JAX_DATA", "TALL_JAX_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def _main(tmp_path, capsys, *argv):
    try:
        rc = train_command.main([*argv, "--out", str(tmp_path / "runs")])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_table_holds_every_model_and_each_resolves():
    assert set(MODELS) | set(BASELINES) <= set(models.MODEL_TABLE)
    assert {"pop", "itemknn", "rp3beta", "ease", "ease_wl", "ease_ms", "ease_kkt", "loca_ease"} <= set(models.MODEL_TABLE)
    for name, row in models.MODEL_TABLE.items():
        plan = models.resolve_run("synthetic", name, seed=3)
        assert plan.config.model == name and plan.seed == 3 and row.family in models.FAMILIES
        settings = plan.settings("random")
        assert settings["model"] == name and len(settings["identity"]) == 8
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.resolve_run("synthetic", "nope")
    with pytest.raises(ValueError, match="n_local not read by this model"):
        models.resolve_run("synthetic", "lft", overrides={"n_local": 3})
    with pytest.raises(ValueError, match="mesh applies to the mixture family"):
        models.check_options("loca", models.RunOptions(mesh="expert=1"))


def test_a_run_is_resolved_once(tmp_path, capsys, monkeypatch):
    """The command line makes each run's config exactly once and hands that object down."""
    calls = []
    for name, family in list(models.FAMILIES.items()):
        def counting(model, dataset, seed, overrides, _make=family.make_config):
            calls.append((model, seed))
            return _make(model, dataset, seed, overrides)
        monkeypatch.setitem(models.FAMILIES, name, dataclasses.replace(family, make_config=counting))
    trained = []
    monkeypatch.setattr(train_command, "train_run",
                        lambda plan, **kw: trained.append(plan) or (_ for _ in ()).throw(KeyboardInterrupt))
    rc, _, _ = _main(tmp_path, capsys, "--model", "multvae", "lft", "pop", "--seed", "0", "1", *TINY)
    assert rc == 130 and len(trained) == 1  # interrupted in the first run
    assert sorted(calls) == sorted((m, s) for m in ("multvae", "lft", "pop") for s in (0, 1))


def test_repeated_seeds_or_models_are_an_error(tmp_path, capsys):
    for argv, needle in ((["--seed", "0", "0"], "--seed 0 0: 0 given twice"),
                         (["--model", "tall", "tall"], "--model tall tall: tall given twice")):
        rc, _, err = _main(tmp_path, capsys, *argv)
        assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def _own_file(path: Path, shift: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"u{u},i{(u * 7 + k + shift) % 40}" for u in range(60) for k in range(15)]
    path.write_text("user,item\n" + "\n".join(rows) + "\n")
    return path


def test_own_files_of_one_name_are_other_data(tmp_path):
    """Two different files both called ratings.csv get other run folders; a run of the first never
    resumes with the second, and the refusal names both fingerprints."""
    a, b = _own_file(tmp_path / "a" / "ratings.csv", 0), _own_file(tmp_path / "b" / "ratings.csv", 1)
    name = register_dataset(a, kcore=(1, 1))
    saved = models.resolve_run(name, "multvae").settings("random")
    assert saved["data"]["sha256"] == identity.file_identity(a)["sha256"] and saved["data"]["file"] == str(a.resolve())
    folder_a = models.default_out_dir(tmp_path / "runs", saved)
    register_dataset(b, kcore=(1, 1))
    other = models.resolve_run(name, "multvae").settings("random")
    assert models.default_out_dir(tmp_path / "runs", other) != folder_a
    folder_a.mkdir(parents=True)
    identity.write_settings(folder_a, saved)
    with pytest.raises(ValueError, match=r"data\.sha256: '[0-9a-f]{64}' in settings.json vs '[0-9a-f]{64}' now"):
        identity.check_settings(folder_a, other)
    # the same path, edited in place, is other data too
    _own_file(a, 2)
    edited = models.resolve_run(register_dataset(a, kcore=(1, 1)), "multvae").settings("random")
    assert edited["identity"] != saved["identity"]


def test_resume_and_overwrite_say_what_they_do(tmp_path, capsys):
    """--resume with nothing to resume is an error naming the folder and the runs whose settings
    differ; a plain rerun over a run is an error; --resume of a finished run has nothing to do;
    --overwrite starts afresh."""
    base = ["--model", "multvae", "--batch-size", "128", *TINY]
    rc, _, err = _main(tmp_path, capsys, *base, "--resume")
    assert rc == 2 and "--resume: nothing to resume in" in err and "no run of this dataset and model" in err
    assert not list((tmp_path / "runs").rglob("settings.json"))
    rc, out, err = _main(tmp_path, capsys, *base)
    assert rc == 0, err
    (folder,) = (tmp_path / "runs" / "synthetic").glob("multvae-*/seed0")
    first = json.loads((folder / "results.json").read_text())
    rc, _, err = _main(tmp_path, capsys, *base)
    assert rc == 2 and f"{folder} already holds a finished run: --resume continues it, --overwrite" in err
    rc, out, err = _main(tmp_path, capsys, *base, "--resume")
    assert rc == 0 and "is finished; nothing to resume" in out
    assert json.loads((folder / "results.json").read_text()) == first
    rc, out, err = _main(tmp_path, capsys, *base, "--resume", "--lr", "0.002")
    assert rc == 2 and "nothing to resume" in err and str(folder) in err and "lr: 0.001 in settings.json vs 0.002 now" in err
    rc, out, err = _main(tmp_path, capsys, *base, "--overwrite")
    assert rc == 0 and "--overwrite: deleting" in out
    again = json.loads((folder / "results.json").read_text())
    assert again["test"] == first["test"] and again["environment"]["date"] >= first["environment"]["date"]
    rc, _, err = _main(tmp_path, capsys, *base, "--overwrite", "--resume")
    assert rc == 2 and "choose one" in err
    # a multi-seed command stopped half-way: --resume keeps the finished seed, starts the other
    rc, out, err = _main(tmp_path, capsys, *base, "--seed", "0", "1", "--resume")
    assert rc == 0 and "is finished; nothing to resume" in out and "nothing to resume in" in out
    assert (folder.parent / "seed1" / "results.json").exists()


def test_a_relative_out_folder_checkpoints_and_resumes(tmp_path, capsys, monkeypatch):
    """--out runs (relative, the default): the orbax checkpoint is written (orbax itself wants an
    absolute path) and a stopped run resumes from it, saying at which epoch."""
    monkeypatch.chdir(tmp_path)
    argv = ["--model", "multvae", "--batch-size", "128", "--patience", "1", "--no-progress", "--out", "runs"]
    assert train_command.main([*argv, "--epochs", "1"]) == 0
    (folder,) = Path("runs/synthetic").glob("multvae-*/seed0")
    (folder / "results.json").unlink()  # as if stopped after its checkpoint
    capsys.readouterr()
    assert train_command.main([*argv, "--epochs", "1", "--resume"]) == 0
    assert f"resuming {folder} at epoch 1 (best 1)" in capsys.readouterr().out


def test_folder_state(tmp_path):
    assert identity.folder_state(tmp_path / "none") == "empty"
    (tmp_path / "settings.json").write_text("{}")
    (tmp_path / ".lock").write_text("1")
    assert identity.folder_state(tmp_path) == "empty"
    (tmp_path / "checkpoint").mkdir()
    assert identity.folder_state(tmp_path) == "started"
    (tmp_path / "results.json").write_text("{}")
    assert identity.folder_state(tmp_path) == "finished"
