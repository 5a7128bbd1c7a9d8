"""Tests for tall_jax.weights: KKT weights vs scipy's QP solver and hand-worked cases, the loss-change
window, the gap rule, and the weight statistics vs scipy.stats.spearmanr."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from tall_jax import weights as W

jax.config.update("jax_numpy_rank_promotion", "raise")


def qp_reference(s: np.ndarray, alpha: float) -> np.ndarray:
    """max Σ w s − α‖w‖² s.t. Σ w = N, w ≥ 0, solved by SLSQP (independent of the sort-based projection)."""
    s = np.asarray(s, np.float64)
    n = len(s)
    res = scipy.optimize.minimize(
        lambda w: -(w @ s) + alpha * (w @ w), np.ones(n), jac=lambda w: -s + 2 * alpha * w,
        method="SLSQP", bounds=[(0.0, None)] * n,
        constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - n, "jac": lambda w: np.ones(n)}],
        options={"ftol": 1e-12, "maxiter": 2000})
    assert res.success, res.message
    return res.x


def paper_reference(s: np.ndarray, alpha: float) -> np.ndarray:
    """Eq. (3) as the spec §5.4 states the authors' code: clamp at 1e-8, no renormalisation."""
    s = np.asarray(s, np.float64)
    return np.maximum((s - s.mean() + 2 * alpha) / (2 * alpha), 1e-8)


# (seed, N, scale of the scores, alpha): the first ones clamp many users, the last ones none.
CASES = [(0, 5, 3.0, 0.05), (1, 17, 5.0, 0.05), (2, 50, 1.0, 0.02), (3, 33, 2.0, 0.3),
         (4, 8, 0.05, 1.0), (5, 50, 0.01, 0.08)]


@pytest.mark.parametrize("seed,n,scale,alpha", CASES)
def test_exact_matches_scipy_qp(seed, n, scale, alpha):
    s = np.random.default_rng(seed).normal(size=n) * scale
    w = np.asarray(W.kkt_weights(jnp.asarray(s, jnp.float32), alpha, mode="exact"))
    ref = qp_reference(s, alpha)
    chex.assert_shape(w, (n,))
    np.testing.assert_allclose(w, ref, atol=2e-4 * max(1.0, ref.max()), rtol=1e-4)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(), n, rtol=1e-5)


@pytest.mark.parametrize("seed,n,scale,alpha", CASES)
def test_exact_satisfies_kkt_conditions(seed, n, scale, alpha):
    s = np.random.default_rng(seed).normal(size=n) * scale
    w = np.asarray(W.kkt_weights(jnp.asarray(s, jnp.float32), alpha, mode="exact"), np.float64)
    pos = w > 1e-6
    lam = s[pos] - 2 * alpha * w[pos]  # stationarity: one common λ over the unclamped users
    np.testing.assert_allclose(lam, lam.mean(), atol=1e-4 * max(1.0, np.abs(s).max()))
    assert np.all(s[~pos] <= lam.mean() + 1e-4 * max(1.0, np.abs(s).max()))  # dual feasibility (μ ≥ 0)


def test_cases_cover_clamped_and_unclamped():
    clamped = [np.any(paper_reference(np.random.default_rng(sd).normal(size=n) * sc, a) <= 1e-8)
               for sd, n, sc, a in CASES]
    assert any(clamped) and not all(clamped)


@pytest.mark.parametrize("seed,n,scale,alpha", CASES)
def test_paper_matches_eq3(seed, n, scale, alpha):
    s = np.random.default_rng(seed).normal(size=n) * scale
    w = np.asarray(W.kkt_weights(jnp.asarray(s, jnp.float32), alpha, mode="paper"))
    np.testing.assert_allclose(w, paper_reference(s, alpha), rtol=1e-5, atol=1e-5)
    assert np.all(w > 0)


def test_hand_worked():
    # No clamp: mean 0.1, w = (s − 0.1 + 0.2)/0.2.
    s = jnp.array([0.0, 0.1, 0.2])
    np.testing.assert_allclose(W.kkt_weights(s, 0.1, mode="paper"), [0.5, 1.0, 1.5], rtol=1e-6)
    np.testing.assert_allclose(W.kkt_weights(s, 0.1, mode="exact"), [0.5, 1.0, 1.5], rtol=1e-6)
    # Clamp binds: mean 1/3; paper gives (−1/3+0.2)/0.2 < 0 → 1e-8 and (2/3+0.2)/0.2 = 13/3, sum ≠ 3;
    # the projection of v = s/0.2 = [0, 0, 5] onto {Σ w = 3} gives [0, 0, 3].
    s = jnp.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(W.kkt_weights(s, 0.1, mode="paper"), [1e-8, 1e-8, 13 / 3], rtol=1e-6)
    np.testing.assert_allclose(W.kkt_weights(s, 0.1, mode="exact"), [0.0, 0.0, 3.0], atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_modes_agree_and_sum_to_n_when_nothing_clamped(seed):
    s = np.random.default_rng(seed).uniform(0.0, 0.1, size=20)  # spread 0.1 < 2α: no clamp
    w_p = np.asarray(W.kkt_weights(jnp.asarray(s), 1.0, mode="paper"))
    w_e = np.asarray(W.kkt_weights(jnp.asarray(s), 1.0, mode="exact"))
    assert w_p.min() > 1e-8
    np.testing.assert_allclose(w_p.sum(), 20, rtol=1e-5)
    np.testing.assert_allclose(w_e.sum(), 20, rtol=1e-5)
    np.testing.assert_allclose(w_p, w_e, rtol=1e-5)


@pytest.mark.parametrize("mode", W.MODES)
def test_mask_excludes_padding(mode):
    rng = np.random.default_rng(7)
    s = rng.normal(size=12) * 2.0
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0], bool)
    s_pad = np.where(mask, s, np.array([1e6, np.nan, -1e6] * 4))  # garbage in padding rows
    w = np.asarray(W.kkt_weights(jnp.asarray(s_pad, jnp.float32), 0.1, mode=mode, mask_N=jnp.asarray(mask)))
    w_real = np.asarray(W.kkt_weights(jnp.asarray(s[mask], jnp.float32), 0.1, mode=mode))
    np.testing.assert_array_equal(w[~mask], 0.0)
    np.testing.assert_allclose(w[mask], w_real, rtol=1e-6, atol=1e-6)
    if mode == "exact":
        np.testing.assert_allclose(w.sum(), mask.sum(), rtol=1e-5)


@pytest.mark.parametrize("mode", W.MODES)
def test_jit_matches_eager(mode):
    s = jnp.asarray(np.random.default_rng(3).normal(size=30) * 3, jnp.float32)
    f = jax.jit(functools.partial(W.kkt_weights, mode=mode))
    np.testing.assert_allclose(f(s, 0.05), W.kkt_weights(s, 0.05, mode=mode), rtol=1e-6, atol=1e-7)
    # alpha traced too
    np.testing.assert_allclose(f(s, jnp.float32(0.5)), W.kkt_weights(s, 0.5, mode=mode), rtol=1e-6, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        W.kkt_weights(jnp.ones(3), 0.1, mode="nope")
    with pytest.raises(ValueError, match="alpha"):
        W.kkt_weights(jnp.ones(3), 0.0)
    with pytest.raises(ValueError, match="mask_N"):
        W.kkt_weights(jnp.ones(3), 0.1, mask_N=jnp.ones(4, bool))
    with pytest.raises(ValueError, match="delta_N"):
        W.push_window(jnp.zeros((3, 2)), 0, jnp.zeros(4))
    with pytest.raises(ValueError, match="signal"):
        W.adaptive_weights(5, 1, 0.1, signal="x")


def test_window_push_and_drop_order():
    win, cnt = W.init_window(2, length=3)
    chex.assert_shape(win, (2, 3))
    np.testing.assert_array_equal(W.window_mean(win, cnt), [0.0, 0.0])
    push = jax.jit(W.push_window)
    for t in (1.0, 2.0):
        win, cnt = push(win, cnt, jnp.array([t, 10 * t]))
    np.testing.assert_array_equal(win, [[1, 2, 0], [10, 20, 0]])
    assert int(cnt) == 2
    np.testing.assert_allclose(W.window_mean(win, cnt), [1.5, 15.0])
    win, cnt = push(win, cnt, jnp.array([3.0, 30.0]))
    np.testing.assert_array_equal(win, [[1, 2, 3], [10, 20, 30]])
    win, cnt = push(win, cnt, jnp.array([4.0, 40.0]))  # full: drop the oldest (1, 10)
    np.testing.assert_array_equal(win, [[2, 3, 4], [20, 30, 40]])
    assert int(cnt) == 3
    win, cnt = push(win, cnt, jnp.array([5.0, 50.0]))
    np.testing.assert_array_equal(win, [[3, 4, 5], [30, 40, 50]])
    np.testing.assert_allclose(W.window_mean(win, cnt), [4.0, 40.0])


def test_window_matches_deque_over_many_epochs():
    rng = np.random.default_rng(0)
    win, cnt = W.init_window(4)
    hist = []
    for _ in range(13):
        d = rng.normal(size=4)
        hist.append(d)
        win, cnt = W.push_window(win, cnt, jnp.asarray(d, jnp.float32))
        np.testing.assert_allclose(W.window_mean(win, cnt), np.mean(hist[-8:], axis=0), rtol=1e-5, atol=1e-6)


def test_adaptive_weights_gap_and_empty_window():
    n = 6
    win, cnt = W.init_window(n)
    aw = jax.jit(W.adaptive_weights, static_argnames=("signal", "mode", "per_item"))
    np.testing.assert_array_equal(aw(1, 0, 0.08, window_NxL=win, count=cnt), np.ones(n))  # T < 2: empty
    d = jnp.asarray(np.random.default_rng(1).normal(size=n) * 0.1, jnp.float32)
    win, cnt = W.push_window(win, cnt, d)
    win, cnt = W.push_window(win, cnt, 2 * d)
    for t in (3, 40):  # t ≤ T = 40
        np.testing.assert_array_equal(aw(t, 40, 0.08, window_NxL=win, count=cnt), np.ones(n))
    for mode in W.MODES:
        w = aw(41, 40, 0.08, window_NxL=win, count=cnt, mode=mode)
        np.testing.assert_allclose(w, W.kkt_weights(1.5 * d, 0.08, mode=mode), rtol=1e-5, atol=1e-6)
        assert not np.allclose(w, 1.0)


def test_adaptive_weights_raw_loss_per_item_and_mask():
    loss = jnp.array([4.0, 9.0, 0.0, 6.0, 3.0])
    n_valid = jnp.array([2.0, 3.0, 0.0, 1.0, 3.0])
    mask = jnp.array([True, True, True, True, False])
    np.testing.assert_array_equal(W.adaptive_weights(1, 0, 0.5, signal="raw_loss", last_loss_N=loss), np.ones(5))
    w = W.adaptive_weights(2, 0, 0.5, signal="raw_loss", last_loss_N=loss)
    np.testing.assert_allclose(w, paper_reference(np.asarray(loss), 0.5), rtol=1e-6)
    # per item: [2, 3, 0 (|V|=0), 6, 1]; the padded user is excluded from the mean and gets 0.
    w = W.adaptive_weights(2, 0, 5.0, signal="raw_loss", last_loss_N=loss, per_item=True,
                           n_valid_N=n_valid, mask_N=mask)
    expected = np.append(paper_reference(np.array([2.0, 3.0, 0.0, 6.0]), 5.0), 0.0)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    w_gap = W.adaptive_weights(2, 5, 5.0, signal="raw_loss", last_loss_N=loss, mask_N=mask)
    np.testing.assert_array_equal(w_gap, [1, 1, 1, 1, 0])


def test_weight_stats_vs_scipy():
    rng = np.random.default_rng(0)
    n_valid = rng.integers(1, 6, size=40)  # many ties
    ms = rng.uniform(size=40)
    w = np.asarray(W.kkt_weights(jnp.asarray(rng.normal(size=40) * 2), 0.2, mode="paper"))
    st = W.weight_stats(w, n_valid, ms)
    np.testing.assert_allclose(st["spearman_n_valid"], scipy.stats.spearmanr(w, n_valid).statistic, rtol=1e-10)
    np.testing.assert_allclose(st["spearman_ms"], scipy.stats.spearmanr(w, ms).statistic, rtol=1e-10)
    np.testing.assert_allclose(W.spearman(n_valid, -n_valid), -1.0)
    assert st["share_clamped"] == np.mean(w <= 1e-8) > 0
    assert st["w_min"] == pytest.approx(w.min()) and st["w_max"] == pytest.approx(w.max())
    assert np.isnan(W.spearman(np.ones(5), np.arange(5)))


def test_cap_weights_bounds_and_keeps_mean_one_brute_force():
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.uniform(0.0, 3.0, 20), [150.0, 210.0]]).astype(np.float32)
    mask = np.ones(23, bool); mask[-1] = False  # a padding user
    w = np.append(w, 7.0).astype(np.float32)
    out = np.asarray(W.cap_weights(jnp.asarray(w), 5.0, jnp.asarray(mask)))
    capped = np.minimum(w[:-1], 5.0)
    np.testing.assert_allclose(out[:-1], capped * 22 / capped.sum(), rtol=1e-6)
    assert out[-1] == 0.0
    np.testing.assert_allclose(out[:-1].mean(), 1.0, rtol=1e-6)
    # inside adaptive_weights: cap 0 is the authors' weights, cap > 0 bounds the late spikes
    window = jnp.asarray(rng.normal(scale=50.0, size=(22, 8)), jnp.float32)
    plain = W.adaptive_weights(50, 40, 0.08, window_NxL=window, count=8)
    capped_w = W.adaptive_weights(50, 40, 0.08, window_NxL=window, count=8, cap=5.0)
    assert float(jnp.max(plain)) > 50.0
    np.testing.assert_allclose(np.asarray(capped_w),
                               np.minimum(plain, 5.0) * 22 / np.minimum(plain, 5.0).sum(), rtol=1e-5)
