import chex
import jax
import jax.numpy as jnp
import numpy as np

from tall_jax import gate


def numpy_masked_loss(o, x, v):
    """Spec §5.2.1 literally: D = sum_{j not in T} e^{o_j} + |T| e^0; L = sum_{i in V} (log D - o_i)."""
    out = np.zeros(o.shape[:-1])
    for idx in np.ndindex(*o.shape[:-1]):
        u = idx[-1]
        d = np.exp(o[idx][x[u] == 0]).sum() + x[u].sum()
        out[idx] = sum(np.log(d) - o[idx][i] for i in np.flatnonzero(v[u]))
    return out


def random_case(seed, n_experts=5, batch=6, n_items=40):
    rng = np.random.default_rng(seed)
    o = rng.normal(scale=2.0, size=(n_experts, batch, n_items))
    draw = rng.random((batch, n_items))
    x = (draw < 0.3).astype(float)
    v = ((draw >= 0.3) & (draw < 0.4)).astype(float)
    v[0] = 0.0  # a user without validation items
    return o, x, v


def test_masked_validation_loss_equals_spec_numpy():
    for seed in range(3):
        o, x, v = random_case(seed)
        got = gate.masked_validation_loss(*(jnp.asarray(a, jnp.float32) for a in (o, x, v)))
        np.testing.assert_allclose(got, numpy_masked_loss(o, x, v), rtol=2e-5, atol=1e-4)


def test_masked_validation_loss_is_stable_for_large_logits():
    o, x, v = random_case(0)
    big = jnp.asarray(o * 60, jnp.float32)  # exp would overflow float32
    got = gate.masked_validation_loss(big, jnp.asarray(x, jnp.float32), jnp.asarray(v, jnp.float32))
    assert np.isfinite(np.asarray(got)).all()


def test_loss_gate_equals_softmax_of_reciprocal_and_uniform_without_validation():
    o, x, v = random_case(1)
    loss = numpy_masked_loss(o, x, v).T  # [B, E]
    has_valid = v.sum(-1) > 0
    for temperature in (1.0, 0.05):
        g = np.asarray(gate.loss_gate(jnp.asarray(loss, jnp.float32), jnp.asarray(has_valid),
                                      temperature=temperature))
        chex.assert_shape(g, loss.shape)
        for u in range(loss.shape[0]):
            if has_valid[u]:
                z = 1.0 / (loss[u] * temperature)
                expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            else:
                expected = np.full(loss.shape[1], 1.0 / loss.shape[1])
            np.testing.assert_allclose(g[u], expected, rtol=1e-5)


def test_route_gate_is_softmax_of_negative_per_item_loss_and_routes():
    o, x, v = random_case(2)
    loss = numpy_masked_loss(o, x, v).T  # [B, E]
    n_valid = v.sum(-1)
    for temperature in (1.0, 0.05):
        g = np.asarray(gate.validation_gate(jnp.asarray(loss, jnp.float32), jnp.asarray(n_valid),
                                            kind="route", temperature=temperature))
        for u in range(loss.shape[0]):
            if n_valid[u] > 0:
                z = -loss[u] / n_valid[u] / temperature
                expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            else:
                expected = np.full(loss.shape[1], 1.0 / loss.shape[1])
            np.testing.assert_allclose(g[u], expected, rtol=1e-5, atol=1e-7)
    # a small temperature routes: the gate's entropy is far below log E, unlike the loss gate's
    sharp = gate.validation_gate(jnp.asarray(loss, jnp.float32), jnp.asarray(n_valid), kind="route",
                                 temperature=0.05)
    flat = gate.validation_gate(jnp.asarray(loss, jnp.float32), jnp.asarray(n_valid), kind="loss")
    has = n_valid > 0
    assert np.mean(np.asarray(gate.gate_diagnostics(sharp)[0])[has]) < 0.5 * np.log(loss.shape[1])
    assert np.mean(np.asarray(gate.gate_diagnostics(flat)[0])[has]) > 0.99 * np.log(loss.shape[1])


def test_gate_gradient_is_finite_for_users_without_validation():
    loss = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    has_valid = jnp.array([True, False])
    grad = jax.grad(lambda l: jnp.sum(gate.loss_gate(l, has_valid)[:, 0] ** 2))(loss)
    assert np.isfinite(np.asarray(grad)).all()
    assert np.all(np.asarray(grad[1]) == 0)


def test_stop_gradient_option_blocks_gradients():
    loss = jnp.array([[3.0, 4.0, 5.0]])
    has_valid = jnp.array([True])
    f = lambda l, sg: jnp.sum(gate.loss_gate(l, has_valid, stop_gradient=sg)[:, 0])
    assert np.any(np.asarray(jax.grad(f)(loss, False)) != 0)
    assert np.all(np.asarray(jax.grad(f)(loss, True)) == 0)


def test_mixture_is_in_logit_space():
    o, _, _ = random_case(2)
    g = np.random.default_rng(0).dirichlet(np.ones(o.shape[0]), size=o.shape[1])
    mix = gate.mix_logits(jnp.asarray(g, jnp.float32), jnp.asarray(o, jnp.float32))
    np.testing.assert_allclose(mix, np.einsum("be,ebm->bm", g, o), rtol=1e-5, atol=1e-5)


def test_mlp_gate_shapes_and_simplex():
    params = gate.init_mlp_gate(jax.random.PRNGKey(0), 30, 16, 4)
    g = gate.mlp_gate(params, jnp.ones((5, 30)))
    chex.assert_shape(g, (5, 4))
    np.testing.assert_allclose(np.asarray(g).sum(-1), 1.0, rtol=1e-6)


def test_gate_diagnostics():
    g = jnp.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.25, 0.125, 0.125]])
    entropy, ratio = gate.gate_diagnostics(g)
    np.testing.assert_allclose(entropy, [np.log(4), -(0.5 * np.log(0.5) + 0.25 * np.log(0.25)
                                                     + 0.25 * np.log(0.125))], rtol=1e-6)
    np.testing.assert_allclose(ratio, [1.0, 4.0], rtol=1e-6)
