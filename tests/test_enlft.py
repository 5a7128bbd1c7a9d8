"""EnLFT's greedy anchors and aggregation weights (spec §6.4) against NumPy loops."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tall_jax.baselines import enlft_anchors, enlft_weights


def _ref_anchors(S: np.ndarray, n_anchors: int) -> list[int]:
    work = S.astype(np.float64).copy()
    n = len(S)
    chosen: list[int] = []
    for i in range(n_anchors):
        score = work.sum(1) / (n - i)
        if i > 0:
            score = score - 1.5 * S[:, chosen].sum(1) / i
        a = int(np.argmax(score))
        chosen.append(a)
        work[:, a] = 0
        work[a, :] = -9999
    return chosen


def _random_cosines(n: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).random((n, 12)) ** 3
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return (p @ p.T).astype(np.float32)


@pytest.mark.parametrize("n,n_anchors", [(40, 10), (25, 25)])
def test_enlft_anchors_match_numpy_greedy(n, n_anchors):
    S = _random_cosines(n, n)
    got = np.asarray(enlft_anchors(jnp.asarray(S), n_anchors))
    want = _ref_anchors(S, n_anchors)
    np.testing.assert_array_equal(got, want)
    assert len(set(got.tolist())) == n_anchors  # a chosen user is never chosen again


def test_enlft_anchor_penalty_changes_the_choice():
    # two near-identical central users: without the penalty both would be picked first
    S = _random_cosines(30, 3)
    got = np.asarray(enlft_anchors(jnp.asarray(S), 6))
    no_pen = np.asarray(enlft_anchors(jnp.asarray(S), 6, penalty=0.0))
    np.testing.assert_array_equal(got, _ref_anchors(S, 6))
    assert got[0] == no_pen[0]


def test_enlft_weights_cut_and_fallback():
    S = np.array([[1.0, 0.5, 0.1, 0.3],
                  [0.5, 1.0, 0.15, 0.1],
                  [0.1, 0.15, 1.0, 0.05],
                  [0.3, 0.1, 0.05, 1.0]], np.float32)
    anchors = np.array([0, 1])
    w = enlft_weights(S, anchors, 0.2)
    np.testing.assert_allclose(w, [[1.0, 0.5], [0.5, 1.0], [0.1, 0.15], [0.3, 0.0]])
