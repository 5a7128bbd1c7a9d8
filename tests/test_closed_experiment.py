"""The closed models' evaluation and grid search: the block-wise scorer against brute-force
metrics, the chosen point is the argmax of an independent float64 recomputation of the validation
score, and run_closed writes results.json with per-group results and the grid."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import brute_force, tiny_dataset
from tall_jax.batching import UserData
from tall_jax.closed import grid
from tall_jax.closed.config import make_closed_config
from tall_jax.closed.experiment import run_closed
from tall_jax.closed.scoring import Fitted, evaluate_fitted
from tall_jax.ranking import DEFAULT_KS


def _dense(m):
    return m.toarray() > 0


def test_blockwise_evaluation_equals_brute_force_metrics():
    ds = tiny_dataset(n_users=37, n_items=23)
    data = UserData.from_dataset(ds)
    scores = np.random.default_rng(0).normal(size=(37, 23)).astype(np.float32)
    one = evaluate_fitted(Fitted(rows_NxM=scores), ds.train, data, batch_size=8)
    blocks = evaluate_fitted(Fitted(rows_NxM=scores), ds.train, data, batch_size=8,
                             budget_bytes=2 * 4 * 23 * 16)  # blocks of 16 users
    ref = brute_force(scores, _dense(ds.train), _dense(ds.valid), DEFAULT_KS)
    for k in DEFAULT_KS:
        np.testing.assert_allclose(one[f"valid/ndcg@{k}"], ref[f"ndcg@{k}"], rtol=1e-5)
    for key in one:
        np.testing.assert_array_equal(one[key], blocks[key])
    w = np.random.default_rng(1).normal(size=(23, 23))
    item = evaluate_fitted(Fitted(item_MxM=w), ds.train, data, batch_size=8)
    ref = brute_force((ds.train.toarray() @ w).astype(np.float32), _dense(ds.train), _dense(ds.test),
                      DEFAULT_KS)
    np.testing.assert_allclose(item["test/ndcg@20"], ref["ndcg@20"], rtol=1e-5)


def _valid_score(scores, ds):
    ref = brute_force(scores.astype(np.float32), _dense(ds.train), _dense(ds.valid), DEFAULT_KS)
    return float(np.mean([np.nanmean(ref[f"ndcg@{k}"]) for k in DEFAULT_KS]))


def test_grid_chooses_the_argmax_of_an_independent_validation_score():
    ds = tiny_dataset(n_users=50, n_items=20, seed=4)
    data = UserData.from_dataset(ds)
    config = make_closed_config("ease", dtype="float64")
    found = grid.search(config, ds.train, data)
    x = ds.train.toarray().astype(np.float64)
    want = []
    for rec in found.records:
        p = np.linalg.inv(x.T @ x + rec["hp"]["lambda"] * np.eye(20))
        want.append(_valid_score(x @ (np.eye(20) - p / np.diag(p)[None, :]), ds))
    np.testing.assert_allclose([r["valid_score"] for r in found.records], want, atol=1e-9)
    assert found.best == int(np.argmax(want))
    assert len(set(np.round(want, 9))) > 1  # the case discriminates


def test_grid_takes_the_oracle_point_and_the_first_of_ties(monkeypatch):
    ds = tiny_dataset(n_users=30, n_items=15, seed=5)
    data = UserData.from_dataset(ds)
    rng = np.random.default_rng(0)
    oracle = ds.valid.toarray() + 0.01 * rng.random((30, 15))
    rows = [rng.random((30, 15)), oracle, rng.random((30, 15)), oracle.copy(), -oracle]
    config = make_closed_config("itemknn", hp={"shrink": 0})  # 5 points: k in its grid
    monkeypatch.setattr(grid, "fit_points", lambda cfg, train, ms_N=None, progress=None: iter(
        [({"k": float(i)}, Fitted(rows_NxM=r), {}) for i, r in enumerate(rows)]))
    found = grid.search(config, ds.train, data)
    scores = [r["valid_score"] for r in found.records]
    assert scores[1] == scores[3] == pytest.approx(1.0) and found.best == 1
    assert max(scores[0], scores[2], scores[4]) < 1.0
    ndcg = found.best_evals["valid/ndcg@20"]
    assert np.all((ndcg == 1.0) | np.isnan(ndcg))


@pytest.mark.parametrize("model,hp", [("ease", "lambda=20,"), ("pop", None),
                                      ("ease_kkt", "lambda=20,alpha=1"), ("loca_ease", None),
                                      ("rp3beta", "beta=0.2,k=50")])
def test_run_closed_writes_results_with_groups_and_grid(tmp_path, model, hp):
    ds = tiny_dataset(n_users=40, n_items=25, seed=6)
    overrides = {"hp": hp} if hp else {}
    if model == "loca_ease":
        overrides.update(n_local=5, anchor_stride=2, latent=4, hp="lambda=20")
    config = make_closed_config(model, **overrides)
    out = tmp_path / model
    res = run_closed(config, ds, dataset="tiny", out_dir=out, settings={"variant": "v"}, progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert (out / "per_user_test.npz").exists()
    assert saved["model"] == model and saved["variant"] == "v" and saved["split"] == "random"
    assert set(saved["test"]["groups"]) == {"low", "med-low", "medium", "med-high", "high"}
    assert "coverage@20" in saved["test"]["overall"] and "popularity@20" in saved["test"]["overall"]
    n_points = 3 if model == "ease_kkt" else 1
    assert len(saved["grid"]) == n_points and set(saved["grid"][0]) >= {"hp", "valid_score", "seconds"}
    assert saved["chosen_hp"] == max(saved["grid"], key=lambda r: r["valid_score"])["hp"]
    assert saved["settings"]["model"] == model and "deterministic" in saved["seed_note"]
    assert res["test"] == saved["test"]
    if model == "loca_ease":
        assert saved["diagnostics"]["users_covered"] + saved["diagnostics"]["users_fallback"] == 40
