"""Tests for tall_jax.two_tower.model / steps: masked loss, gradient isolation, batch norm, one compile."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tall_jax.two_tower.model import TwoTower, masked_bce_loss
from tall_jax.two_tower.steps import (
    TwoTowerBatch, TwoTowerConfig, init, make_batch, train_two_tower, two_tower_eval_step, two_tower_loss,
    two_tower_train_step,
)

jax.config.update("jax_numpy_rank_promotion", "raise")
B, U, I, G, W = 12, 5, 4, 3, 8


def _batch(rng, n=B, groups=None, pad_to=None):
    group = rng.integers(0, G, n) if groups is None else np.asarray(groups)
    args = (rng.normal(size=(n, U)), rng.normal(size=(n, I)), rng.integers(0, 2, n).astype(np.float32), group)
    return make_batch(*args, pad_to or n)


def test_masked_loss_matches_numpy_hand_computation():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, G)) * 3
    y = np.array([1, 0, 1, 1, 0, 0], np.float32)
    g = np.array([0, 2, 1, 1, 0, 2])
    valid = np.array([1, 1, 1, 1, 1, 0], bool)
    mask = np.eye(G)[g]
    loss = masked_bce_loss(jnp.asarray(s), jnp.asarray(y), jnp.asarray(mask), jnp.asarray(valid))
    expected = 0.0
    for b in range(5):  # row 5 is padding
        z = s[b, g[b]]
        p = 1 / (1 + np.exp(-z))
        expected -= y[b] * np.log(p) + (1 - y[b]) * np.log(1 - p)
    np.testing.assert_allclose(float(loss), expected / 5, rtol=1e-5)


def test_masked_loss_ignores_inf_scores_in_masked_cells():
    s = jnp.array([[1.0, jnp.inf], [-jnp.inf, 2.0]])
    grad = jax.grad(lambda s: masked_bce_loss(s, jnp.array([1.0, 0.0]), jnp.eye(2), jnp.ones(2, bool)))(s)
    assert np.isfinite(np.asarray(grad)).all()
    assert float(grad[0, 1]) == 0.0 and float(grad[1, 0]) == 0.0


@functools.partial(jax.jit, static_argnames="model")
def _grads_jit(params, batch_stats, batch, model):
    return jax.grad(lambda p: two_tower_loss(p, batch_stats, batch, model=model)[0])(params)


def _grads(model, state, batch):
    return _grads_jit(state.params, state.batch_stats, batch, model)


def test_head_gets_exactly_zero_gradient_without_its_group_and_shared_towers_learn_from_every_group():
    model = TwoTower(n_groups=G, width=W)
    state = init(jax.random.PRNGKey(0), TwoTowerConfig(model), U, I)
    rng = np.random.default_rng(1)
    for g in range(G):
        batch = _batch(rng, groups=np.full(B, g))
        grads = _grads(model, state, batch)
        kernel = np.asarray(grads["head_kernel"])
        bias = np.asarray(grads["head_bias"])
        for other in range(G):
            if other != g:
                assert np.all(kernel[other] == 0.0) and np.all(bias[other] == 0.0)
        assert np.abs(kernel[g]).sum() > 0
        for tower in ("user_tower", "item_tower"):
            for leaf in jax.tree.leaves(grads[tower]):
                assert np.abs(np.asarray(leaf)).sum() > 0, (g, tower)


def test_batchnorm_eval_mode_uses_running_statistics():
    model = TwoTower(n_groups=0, width=W)
    state = init(jax.random.PRNGKey(0), TwoTowerConfig(model), U, I)
    x = np.random.default_rng(2).normal(size=(B, U)).astype(np.float32) * 3 + 5
    t = np.random.default_rng(3).normal(size=(B, I)).astype(np.float32)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    # replace the running stats with known values and check eval mode uses exactly them
    stats = jax.tree.map(lambda a: a, state.batch_stats)
    mean = np.random.default_rng(4).normal(size=W).astype(np.float32)
    var = np.random.default_rng(5).random(W).astype(np.float32) + 0.5
    stats["user_tower"]["bn_0"] = {"mean": mean, "var": var}
    out_a = model.apply({"params": state.params, "batch_stats": stats}, x, t, train=False)
    out_b = model.apply(variables, x, t, train=False)
    assert not np.allclose(out_a, out_b)
    # and eval output of one row does not depend on the other rows (no batch statistics)
    single = model.apply(variables, x[:1], t[:1], train=False)
    np.testing.assert_allclose(np.asarray(single)[0], np.asarray(out_b)[0], rtol=1e-5)
    # the first layer by hand, with the running statistics
    p = state.params["user_tower"]
    h = x @ np.asarray(p["dense_0"]["kernel"]) + np.asarray(p["dense_0"]["bias"])
    h = (h - mean) / np.sqrt(var + 1e-5) * np.asarray(p["bn_0"]["scale"]) + np.asarray(p["bn_0"]["bias"])
    from tall_jax.two_tower.model import Tower
    got = Tower(width=W, n_layers=1).apply(
        {"params": {"dense_0": p["dense_0"], "bn_0": p["bn_0"]}, "batch_stats": {"bn_0": {"mean": mean, "var": var}}},
        x, train=False)
    np.testing.assert_allclose(np.asarray(got), np.maximum(h, 0), rtol=1e-4, atol=1e-5)


def test_padded_rows_do_not_move_batch_statistics_or_loss():
    model = TwoTower(n_groups=G, width=W)
    state = init(jax.random.PRNGKey(0), TwoTowerConfig(model), U, I)
    rng = np.random.default_rng(6)
    real = _batch(rng, n=7)
    padded = make_batch(real.user_x, real.item_x, real.label, real.group, 16)
    # give the padding rows wild features: they still must not count
    padded = padded.replace(user_x=np.where(np.arange(16)[:, None] >= 7, 100.0, padded.user_x).astype(np.float32))
    loss_r, stats_r = two_tower_loss(state.params, state.batch_stats, real, model=model)
    loss_p, stats_p = two_tower_loss(state.params, state.batch_stats, padded, model=model)
    np.testing.assert_allclose(float(loss_p), float(loss_r), rtol=1e-5)
    chex.assert_trees_all_close(stats_p, stats_r, rtol=1e-5, atol=1e-6)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), stats_r, state.batch_stats)
    assert max(jax.tree.leaves(moved)) > 0  # the real rows do move them
    g_r = _grads(model, state, real)
    g_p = _grads(model, state, padded)
    chex.assert_trees_all_close(g_p, g_r, rtol=1e-4, atol=1e-6)


def test_train_step_compiles_once_including_padded_last_batch_and_eval_shape():
    model = TwoTower(n_groups=G, width=W)
    state = init(jax.random.PRNGKey(0), TwoTowerConfig(model), U, I)
    rng = np.random.default_rng(7)
    n = 37
    ux, ix = rng.normal(size=(n, U)).astype(np.float32), rng.normal(size=(n, I)).astype(np.float32)
    y, g = rng.integers(0, 2, n).astype(np.float32), rng.integers(0, G, n)
    before = two_tower_train_step._cache_size()
    state, losses = train_two_tower(TwoTowerConfig(model), state, lambda idx: (ux[idx], ix[idx], y[idx], g[idx]), n,
                                    epochs=2, batch_size=16, seed=0, progress=False)
    assert two_tower_train_step._cache_size() - before == 1  # 3 batches x 2 epochs, last one padded
    assert int(state.step) == 6 and len(losses) == 2 and np.isfinite(losses).all()
    probs = two_tower_eval_step(state, make_batch(ux[:16], ix[:16], y[:16], g[:16], 16), model=model)
    chex.assert_shape(probs, (16,))
    assert np.all((np.asarray(probs) >= 0) & (np.asarray(probs) <= 1))


def test_training_reduces_loss_on_a_learnable_problem():
    model = TwoTower(n_groups=2, width=16)
    config = TwoTowerConfig(model, learning_rate=1e-2)
    state = init(jax.random.PRNGKey(0), config, U, I)
    rng = np.random.default_rng(8)
    n = 256
    ux, ix = rng.normal(size=(n, U)).astype(np.float32), rng.normal(size=(n, I)).astype(np.float32)
    g = rng.integers(0, 2, n)
    y = ((ux[:, 0] * ix[:, 0] * np.where(g == 0, 1, -1)) > 0).astype(np.float32)
    state, losses = train_two_tower(config, state, lambda idx: (ux[idx], ix[idx], y[idx], g[idx]), n,
                                    epochs=15, batch_size=64, seed=0, progress=False)
    assert losses[-1] < 0.8 * losses[0]
