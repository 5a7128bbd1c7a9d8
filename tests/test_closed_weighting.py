"""The user-weight sources of the weighted EASE: WL (the ``wl`` model's own function), the
mainstream-score power, the per-user loss and TALL's KKT rounds, against direct formulas."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tall_jax.closed import weighting
from tall_jax.closed.ease import ease
from tall_jax.state import wl_weights


def _data(n=50, m=20, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, m)) < 0.3).astype(np.float64)
    x[7] = 0.0  # a user without train items
    return sp.csr_matrix(x.astype(np.float32)), x


def test_wl_weights_are_the_wl_models_weights_with_mean_one():
    ms = np.random.default_rng(0).uniform(0.01, 0.2, 30)
    w = weighting.wl_user_weights(ms, 1.2)
    raw = ((ms.max() - ms) / (ms.max() - ms.min())) ** 1.2
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
    np.testing.assert_allclose(w, wl_weights(ms, 1.2), rtol=1e-6)
    assert w[np.argmax(ms)] == 0.0 and abs(w.mean() - 1) < 1e-12


def test_ms_weights_power_with_floor():
    ms = np.array([0.0, 0.05, 0.1, 0.2])
    w = weighting.ms_user_weights(ms, 0.5)
    m = ms.mean()
    raw = np.maximum(ms, 1e-3 * m) / m
    raw = raw ** -0.5
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-12)
    assert np.all(np.isfinite(w)) and w[0] > w[1] > w[2] > w[3]


def test_user_losses_are_the_squared_row_error_per_train_item():
    csr, x = _data()
    b = ease(csr, 3.0, dtype="float64")
    got = weighting.user_losses(csr, b, block=7)
    want = [np.sum((x[u] - x[u] @ b) ** 2) / max(x[u].sum(), 1) for u in range(len(x))]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert got[7] == 0.0


@pytest.mark.parametrize("mode", ["paper", "exact"])
def test_kkt_weights_in_units_of_the_signal_spread(mode):
    s = np.random.default_rng(1).normal(3.0, 0.01, 40)
    w = weighting.kkt_user_weights(s, 0.5, mode)
    z = (s - s.mean()) / s.std()
    if mode == "paper":  # Eq. 3: w = max(1 + z/(2α), 1e-8), then mean 1
        want = np.maximum(1 + z / (2 * 0.5), 1e-8)
        np.testing.assert_allclose(w, want / want.mean(), rtol=1e-5, atol=1e-7)
    else:  # the projection of z/(2α) onto {w >= 0, Σ w = N}: w = max(z/(2α) − θ, 0) with Σ w = N
        assert abs(w.sum() - len(w)) < 1e-4 and np.all(w >= 0)
        on = w > 0
        theta = z[on] / (2 * 0.5) - w[on]
        np.testing.assert_allclose(theta, theta.mean(), atol=1e-5)
    np.testing.assert_array_equal(weighting.kkt_user_weights(np.full(5, 2.0), 0.5), np.ones(5))


@pytest.mark.parametrize("signal", ["raw_loss", "loss_change"])
def test_kkt_rounds_follow_the_documented_recursion(signal):
    csr, x = _data(seed=2)
    lam, alpha = 4.0, 1.0
    solve = lambda w, lmb: ease(csr, lmb, w, dtype="float64")  # noqa: E731

    def sig(w):
        loss = weighting.user_losses(csr, solve(w, lam))
        return loss if signal == "raw_loss" else weighting.user_losses(csr, solve(w, 2 * lam)) - loss

    chain = weighting.kkt_rounds(csr, solve, lam, alpha, signal=signal)
    w_prev = None
    for r in (1, 2, 3):
        got_r, s, w, b = next(chain)
        want_s = sig(w_prev)
        want_w = weighting.kkt_user_weights(want_s, alpha)
        assert got_r == r
        np.testing.assert_allclose(s, want_s, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(w, want_w, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(b, solve(want_w, lam), rtol=1e-8, atol=1e-10)
        w_prev = w
    assert not np.allclose(w_prev, 1.0)
    if signal == "raw_loss":  # the worse-fit users are up-weighted
        loss = weighting.user_losses(csr, solve(None, lam))
        first = weighting.kkt_user_weights(loss, alpha)
        assert np.corrcoef(first, loss)[0, 1] > 0.99
