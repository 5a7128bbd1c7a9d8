"""The ``expert_chunk`` memory option of the reference path (``forward_impl="reference"``) computes the
same loss, gradients, recorded losses and predictions as its all-experts-at-once step, to float
tolerance."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tall_jax import batching, steps
from tall_jax import state as state_lib
from tall_jax.configs import make_config

from helpers import tiny_user_data

N, M, E, B = 12, 30, 6, 8


def _data(seed=0):
    return tiny_user_data(N, M, seed)


@pytest.mark.parametrize("model", ["tall", "moe", "uniform_moe"])
def test_chunked_loss_and_grads_match_default(model):
    data = _data()
    cfg = make_config("ml-1m", model, n_experts=E, latent=4, batch_size=B, gate_hidden=5,
                      forward_impl="reference")
    chunked = cfg.replace(expert_chunk=2)
    params = state_lib.init(jax.random.PRNGKey(0), cfg, N, M).params
    batch = batching.make_batch(data, jnp.array([0, 1, 2, 3, 4, 5, 6, N]))  # with a padding user
    w_B = jnp.linspace(0.5, 1.5, B)
    key = jax.random.PRNGKey(3)
    grad_fn = jax.jit(jax.value_and_grad(steps.loss_fn, has_aux=True), static_argnames="config")
    (l0, a0), g0 = grad_fn(params, batch, w_B, jnp.float32(0.1), key, config=cfg)
    (l1, a1), g1 = grad_fn(params, batch, w_B, jnp.float32(0.1), key, config=chunked)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    np.testing.assert_allclose(a1["recorded_B"], a0["recorded_B"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a1["kl"], a0["kl"], rtol=1e-5)
    flat0, flat1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
    assert len(flat0) == len(flat1) == (8 if model == "moe" else 4)
    for a, b in zip(flat0, flat1):
        assert float(jnp.max(jnp.abs(a))) > 0  # the gradient is not trivially zero
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_chunked_train_epoch_and_evaluate_match_default():
    data = _data(1)
    cfg = make_config("ml-1m", "tall", n_experts=E, latent=4, batch_size=5, gap=0,
                      forward_impl="reference")
    chunked = cfg.replace(expert_chunk=3)
    s0 = state_lib.init(jax.random.PRNGKey(1), cfg, N, M)
    s1 = state_lib.init(jax.random.PRNGKey(1), chunked, N, M)
    for _ in range(2):
        s0, m0 = steps.train_epoch(s0, data, cfg)
        s1, m1 = steps.train_epoch(s1, data, chunked)
    np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s1.loss_N, s0.loss_N, rtol=1e-4)
    e0, e1 = steps.evaluate(s0.params, data, cfg), steps.evaluate(s1.params, data, chunked)
    for k in ("valid/ndcg@10", "test/recall@20", "gate/entropy"):
        np.testing.assert_allclose(e1[k], e0[k], rtol=1e-5, atol=1e-6)


def test_expert_chunk_must_divide_n_experts():
    with pytest.raises(ValueError, match="expert_chunk"):
        make_config("ml-1m", "tall", n_experts=10, expert_chunk=3)
