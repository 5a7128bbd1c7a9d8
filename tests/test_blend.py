"""Blends (tall_jax.blend): z-scoring never changes a ranking, so β = 0 ranks as the closed candidate
alone and β = 1 as the neural model alone; the chosen (candidate, β) is the validation argmax; and a
blend run writes results.json like every other family."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from helpers import tiny_dataset
from tall_jax import blend
from tall_jax.batching import UserData
from tall_jax.closed.config import make_closed_config
from tall_jax.closed.grid import search
from tall_jax.fit import fit
from tall_jax.protocol import dataset_groups


def test_standardise_is_a_per_row_z_score():
    s = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 9)).astype(np.float32)
    z = np.asarray(blend.standardise(s))
    ref = (s - s.mean(1, keepdims=True)) / s.std(1, keepdims=True)
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(blend.standardise(np.ones((2, 5), np.float32)))).all()  # a flat row


def test_config_checks():
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        blend.make_blend_config("tall_ease", hp=(("k", 5.0),))
    with pytest.raises(ValueError, match="beta"):
        blend.make_blend_config("tall_ease", beta=1.5)
    cfg = blend.make_blend_config("tall_ease", hp=(("gamma", 2.0), ("lambda", 100.0)))
    assert cfg.hp_for("ease") == (("lambda", 100.0),) and cfg.hp_for("ease_wl") == (("gamma", 2.0), ("lambda", 100.0))
    assert blend.reads("tall_ease", "hp.p") and not blend.reads("tall_ease", "hp.k")
    assert blend.reads("tall_ease", "n_experts") and not blend.reads("multvae_ease", "n_experts")


def test_blend_ends_are_its_parts_and_the_choice_is_the_validation_argmax(tmp_path):
    ds = dataclasses_replace_info(tiny_dataset(n_users=60, n_items=30))
    cfg = blend.make_blend_config("multvae_ease", hp=(("lambda", 50.0), ("gamma", 1.2), ("p", 0.5)))
    settings = {"variant": ""}
    res = blend.run_blend(cfg, ds, dataset="synthetic", out_dir=tmp_path, settings=settings, progress=False)
    data = UserData.from_dataset(ds)
    ms_N, groups_N = dataset_groups(ds)
    # beta = 0: the closed candidate alone (its own, independent search and evaluation)
    for closed in blend.CLOSED_CANDIDATES:
        found = search(make_closed_config(closed, hp=cfg.hp_for(closed)), ds.train, data, ms_N=ms_N)
        ours = [r for r in res["grid"] if r["hp"]["closed"] == closed and r["hp"]["beta"] == 0.0]
        assert ours[0]["valid_score"] == pytest.approx(found.records[found.best]["valid_score"], rel=1e-6)
    # beta = 1: the neural model alone, as its own run ranks (same config and seed)
    trained = fit(ds, cfg.neural_config("synthetic"), groups_N=groups_N, ms_N=ms_N, progress=False)
    neural = [r for r in res["grid"] if r["hp"]["beta"] == 1.0]
    best_score = trained.history[trained.best_epoch - 1]["valid_score"]
    assert {round(r["valid_score"], 5) for r in neural} == {round(best_score, 5)}
    assert res["neural"]["best_epoch"] == trained.best_epoch
    assert res["neural"]["epoch_seconds"] > 0  # the neural part's training time, by its epochs
    # the chosen point is the argmax of the grid (the first on ties)
    scores = [r["valid_score"] for r in res["grid"]]
    assert res["chosen_hp"] == res["grid"][int(np.argmax(scores))]["hp"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert set(written["test"]["groups"]) and written["chosen_hp"] == res["chosen_hp"]
    assert (tmp_path / "per_user_test.npz").exists() and (tmp_path / "neural").is_dir()


def dataclasses_replace_info(ds):
    """A tiny dataset with a split fingerprint, so the closed candidates are memoised as for a real one."""
    return dataclasses.replace(ds, info={"fingerprint": {"digest": "tiny"}})


def test_blend_by_group_scores_each_user_with_its_groups_validation_choice(tmp_path):
    """blend_by="group": each mainstream group gets the (candidate, β) of best validation score on its
    own users, and the per-user metrics equal those of evaluating the composed score rows directly."""
    ds = dataclasses_replace_info(tiny_dataset(n_users=60, n_items=30))
    cfg = blend.make_blend_config("multvae_ease", hp=(("lambda", 50.0), ("gamma", 1.2), ("p", 0.5)),
                                  blend_by="group")
    res = blend.run_blend(cfg, ds, dataset="synthetic", out_dir=tmp_path, settings={"variant": ""},
                          progress=False)
    by_group = res["chosen_hp"]
    assert set(by_group) == set(blend.GROUP_NAMES)
    for g, hp in by_group.items():
        scores = [r["valid_score_by_group"][g] for r in res["grid"]]
        assert hp == res["grid"][int(np.nanargmax(scores))]["hp"]
    # the simple path: compose every user's score row from its group's choice, evaluate it whole
    data = UserData.from_dataset(ds)
    ms_N, groups_N = dataset_groups(ds)
    ncfg = cfg.neural_config("synthetic")
    trained = fit(ds, ncfg, groups_N=groups_N, ms_N=ms_N, progress=False)
    v_NxM = blend.neural_rows(trained.best_params, data, ncfg, 256)
    rows_NxM = np.empty_like(v_NxM)
    for i, g in enumerate(blend.GROUP_NAMES):
        hp = by_group[g]
        _, _, c_NxM = blend.closed_candidate(hp["closed"], cfg.hp_for(hp["closed"]), ds, data, ms_N)
        mask = groups_N == i
        rows_NxM[mask] = ((1.0 - hp["beta"]) * c_NxM + hp["beta"] * v_NxM)[mask]
    direct = blend.evaluate_fitted(blend.Fitted(rows_NxM=rows_NxM), ds.train, data)
    with np.load(tmp_path / "per_user_test.npz") as saved:
        np.testing.assert_allclose(saved["ndcg@20"], direct["test/ndcg@20"], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="blend_by"):
        blend.make_blend_config("tall_ease", blend_by="user")


def test_compose_by_group_picks_each_users_row_from_its_groups_choice():
    evals = [{"m": np.array([0.0, 1.0, 2.0, 3.0])}, {"m": np.array([10.0, 11.0, 12.0, 13.0])}]
    out = blend.compose_by_group(evals, [1, 0], np.array([0, 1, 1, 0]))
    np.testing.assert_array_equal(out["m"], [10.0, 1.0, 2.0, 13.0])


def test_closed_candidates_are_solved_once_per_split(monkeypatch):
    """Every closed candidate of a split is searched once per process, however many seeds ask (the
    three candidates are kept together; a new split replaces them)."""
    ds = dataclasses_replace_info(tiny_dataset(n_users=60, n_items=30))
    data = UserData.from_dataset(ds)
    ms_N, _ = dataset_groups(ds)
    blend._CANDIDATES.clear()
    calls = []
    real = blend.search
    monkeypatch.setattr(blend, "search", lambda cfg, *a, **k: calls.append(cfg.model) or real(cfg, *a, **k))
    hp = {"ease": (("lambda", 50.0),), "ease_wl": (("gamma", 1.2), ("lambda", 50.0)),
          "ease_ms": (("lambda", 50.0), ("p", 0.5))}
    for _seed in range(2):
        for closed in blend.CLOSED_CANDIDATES:
            blend.closed_candidate(closed, hp[closed], ds, data, ms_N)
    assert calls == list(blend.CLOSED_CANDIDATES)
    other = dataclasses.replace(tiny_dataset(n_users=50, n_items=30), info={"fingerprint": {"digest": "other"}})
    blend.closed_candidate("ease", hp["ease"], other, UserData.from_dataset(other), dataset_groups(other)[0])
    assert len(blend._CANDIDATES) == 1
