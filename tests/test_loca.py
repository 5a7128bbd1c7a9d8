"""LOCA anchors and kernel (spec §6.2) against plain NumPy loops, and LOCA's mixture with fallback."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tall_jax.baselines import loca_anchors, loca_distances, loca_kernel
from tall_jax.baselines.loca import loca_sets


def _ref_distance_row(emb: np.ndarray, c: int) -> np.ndarray:
    norms = np.linalg.norm(emb, axis=1)
    dots = emb @ emb[c]
    d = 2 / np.pi * np.arccos(np.clip(dots / np.maximum(norms * norms[c], 1e-10), -1, 1))
    if dots.sum() == 0:
        d[:] = 999.0
    return d


def _ref_anchors(emb: np.ndarray, h: float, n_anchors: int, stride: int) -> list[int]:
    cands = list(range(0, len(emb), stride))
    W = np.zeros((len(cands), len(emb)))
    for i, c in enumerate(cands):
        kern = 0.75 * np.maximum(1 - (_ref_distance_row(emb, c) / h) ** 2, 0)
        W[i] = kern > 0
    anchors = []
    for _ in range(n_anchors):
        a = int(np.argmax(W.sum(1)))
        anchors.append(cands[a])
        W[:, W[a] > 0] = 0
    return anchors


@pytest.mark.parametrize("h,n_anchors,stride", [(0.4, 12, 3), (0.6, 8, 10), (1.5, 6, 4)])
def test_loca_anchors_match_numpy_greedy(h, n_anchors, stride):
    emb = np.random.default_rng(1).normal(size=(120, 6)).astype(np.float64)
    emb32 = emb.astype(np.float32)
    got = np.asarray(loca_anchors(jnp.asarray(emb32), h, n_anchors, stride))
    want = _ref_anchors(emb32.astype(np.float64), h, n_anchors, stride)
    assert got.dtype == np.int32 and got.shape == (n_anchors,)
    np.testing.assert_array_equal(got, want)


def test_loca_anchors_duplicates_once_everything_is_covered():
    # h = 2.5 > max distance 2: every candidate covers everyone, then argmax of all-zero rows is user 0
    emb = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    got = np.asarray(loca_anchors(jnp.asarray(emb), 2.5, 5, 10))
    want = _ref_anchors(emb.astype(np.float64), 2.5, 5, 10)
    np.testing.assert_array_equal(got, want)
    assert (got == 0).all()
    # a partial-coverage case that completes part way: the tail repeats user 0
    got2 = np.asarray(loca_anchors(jnp.asarray(emb), 0.9, 6, 10))
    np.testing.assert_array_equal(got2, _ref_anchors(emb.astype(np.float64), 0.9, 6, 10))
    assert len(set(got2.tolist())) < 6


def test_loca_kernel_and_zero_anchor_guard():
    emb = np.random.default_rng(3).normal(size=(30, 5)).astype(np.float32)
    emb[7] = 0.0  # an anchor with all dot products 0 -> distance 999 to everyone
    anchors = np.array([0, 7, 12])
    d = np.asarray(loca_distances(jnp.asarray(emb), jnp.asarray(anchors)))
    for j, a in enumerate(anchors):
        np.testing.assert_allclose(d[:, j], _ref_distance_row(emb.astype(np.float64), a), atol=1e-3)
    k = np.asarray(loca_kernel(jnp.asarray(emb), jnp.asarray(anchors), 0.8))
    np.testing.assert_allclose(k, 0.75 * np.maximum(1 - (d / 0.8) ** 2, 0), atol=1e-6)
    np.testing.assert_allclose(d[:, 1], 999.0)
    assert (k[:, 1] == 0).all()
    lists, weights = loca_sets(k)
    np.testing.assert_array_equal(lists[0], np.flatnonzero(k[:, 0] > 0))
    np.testing.assert_allclose(weights[2], k[lists[2], 2])


def test_a_saved_global_run_matches_across_execution_fields_and_newer_defaults():
    from tall_jax.baselines.experiment import same_model
    from tall_jax.configs import make_config
    gcfg = make_config("ml-1m", "multvae")
    saved = gcfg.to_dict()
    assert same_model(saved, gcfg)
    older = {k: v for k, v in saved.items() if k != "expert_chunk"}  # written before the field existed
    assert same_model(older, gcfg)
    assert same_model({**saved, "eval_batch_size": 64}, gcfg)  # execution only
    assert not same_model({**saved, "lr": 0.01}, gcfg)
    assert not same_model({**older, "latent": 200}, gcfg)
