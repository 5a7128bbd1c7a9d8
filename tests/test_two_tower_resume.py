"""Day checkpoints of the two-tower protocol (tall_jax.two_tower.resume): a run stopped after any fit
and rerun on the same folder gives the uninterrupted run's results bit for bit."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tall_jax.two_tower import experiment
from tall_jax.two_tower.experiment import TrainConfig, run_seed
from tall_jax.two_tower.resume import decode, encode
from tall_jax.two_tower.synthetic import SyntheticConfig, make_synthetic_two_tower

TINY = dataclasses.replace(SyntheticConfig(), n_users=3000, user_dim=8, item_dim=8, n_global_titles=10,
                           n_local_per_territory=2)
CFG = TrainConfig(width=8, batch_size=512, eval_batch_size=2048, epochs=2, inc_epochs=1, patience=1)
MODELS = ("baseline", "mtl")


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic_two_tower(TINY, 0)


@pytest.fixture(scope="module")
def uninterrupted(tiny):
    return run_seed(tiny, CFG, 0, models=MODELS, progress=False, keep_scores=True)


class Killed(Exception):
    pass


def _counting_fits(monkeypatch, kill_at: int | None) -> list[int]:
    """Count the fits of run_seed; raise Killed as fit number ``kill_at`` (1-based) starts."""
    calls: list[int] = []
    fit = experiment.fit_early_stopping

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at:
            raise Killed
        return fit(*args, **kwargs)

    monkeypatch.setattr(experiment, "fit_early_stopping", counted)
    return calls


@pytest.mark.parametrize("kill_at", [2, 4, 5])  # mid first model; first fit of the second; mid second
def test_a_killed_run_resumes_at_its_next_fit_with_the_same_results(tiny, uninterrupted, tmp_path, monkeypatch,
                                                                    kill_at):
    n_fits = len(experiment.train_schedule(tiny, CFG.protocol))  # per model
    _counting_fits(monkeypatch, kill_at)
    with pytest.raises(Killed):
        run_seed(tiny, CFG, 0, models=MODELS, progress=False, keep_scores=True, checkpoints=tmp_path / "days")
    calls = _counting_fits(monkeypatch, None)
    resumed = run_seed(tiny, CFG, 0, models=MODELS, progress=False, keep_scores=True, checkpoints=tmp_path / "days")
    assert len(calls) == len(MODELS) * n_fits - (kill_at - 1)  # the fits done before the kill are not redone
    np.testing.assert_equal(resumed, uninterrupted)
    assert resumed.keys() == uninterrupted.keys()
    for k in ("ap_territory", "ap_all", "title_hist"):
        for m in MODELS:
            assert resumed[k][m].dtype == uninterrupted[k][m].dtype


def test_day_checkpoints_of_other_settings_are_refused(tiny, tmp_path):
    small = dataclasses.replace(CFG, epochs=1)
    run_seed(tiny, small, 0, models=("baseline",), progress=False, checkpoints=tmp_path / "days")
    with pytest.raises(ValueError, match="other settings"):
        run_seed(tiny, small, 1, models=("baseline",), progress=False, checkpoints=tmp_path / "days")
    other = dataclasses.replace(tiny, item_x=tiny.item_x + 1)  # other data, the same settings
    with pytest.raises(ValueError, match="other settings"):
        run_seed(other, small, 0, models=("baseline",), progress=False, checkpoints=tmp_path / "days")


def test_encode_keeps_types():
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), 3: [1, 2.5, None, float("nan")],
           "t": (np.int64(4), np.float64(0.1), "x"), "h": [{"epoch": 0, "loss": None}]}
    back = decode(encode(obj))
    np.testing.assert_equal(back, obj)
    assert back["a"].dtype == np.float32 and back["a"].shape == (2, 3)
    assert type(back["t"]) is tuple and type(back["t"][0]) is np.int64 and 3 in back


def test_a_killed_study_continues_its_seed_where_it_stopped(tmp_path, monkeypatch):
    import json

    from tall_jax.two_tower import study

    def argv(folder):
        return ["--dataset", "synthetic", "--seed", "1", "--n-users", "2000", "--width", "8", "--batch-size", "512",
                "--epochs", "1", "--inc-epochs", "1", "--no-progress", "--runs", str(folder / "runs"),
                "--doc", str(folder / "page.md")]

    assert study.main(argv(tmp_path / "whole")) == 0
    _counting_fits(monkeypatch, 5)
    with pytest.raises(Killed):
        study.main(argv(tmp_path / "killed"))
    assert (tmp_path / "killed" / "runs" / "seed1.days").is_dir()
    calls = _counting_fits(monkeypatch, None)
    assert study.main(argv(tmp_path / "killed")) == 0
    assert len(calls) == 4 * len(experiment.train_schedule(make_synthetic_two_tower(
        dataclasses.replace(SyntheticConfig(), n_users=2000), 1), "incremental")) - 4
    assert not (tmp_path / "killed" / "runs" / "seed1.days").exists()  # removed once the seed is written
    whole, resumed = (json.loads((tmp_path / k / "runs" / "seed1.json").read_text())["run"] for k in ("whole", "killed"))
    assert resumed == whole
