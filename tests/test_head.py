"""The fused mixture head (tall_jax.head, ``forward_impl="fused"``) computes what the all-experts-at-once
reference path computes: loss, every gradient, recorded l_u, gate entropy, a whole epoch and the
evaluation metrics, for every MultVAE-family model, with padded batches and any expert chunk."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.special

from tall_jax import batching, gate, head, steps
from tall_jax import state as state_lib
from tall_jax.configs import make_config

from helpers import tiny_user_data

N, M, E, B, D = 12, 30, 6, 8, 4
RTOL, ATOL = 2e-5, 1e-6  # float32: the fused path sums in another order


def _data(seed=0):
    return tiny_user_data(N, M, seed)


def _assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=rtol, atol=atol)


def _random_head(seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    z = jax.random.normal(ks[0], (E, B, D))
    w = jax.random.normal(ks[1], (E, D, M)) * 0.5
    b = jax.random.normal(ks[2], (E, M)) * 0.1
    x = (jax.random.uniform(ks[3], (B, M)) < 0.3).astype(jnp.float32)
    v = ((jax.random.uniform(ks[4], (B, M)) < 0.2) & (x == 0)).astype(jnp.float32)
    return z, w, b, x, v.at[1].set(0.0)  # user 1 has no validation item


@pytest.mark.parametrize("chunk", [1, 3, 6])
def test_validation_losses_and_vjp_match_autodiff(chunk):
    z, w, b, x, v = _random_head()
    cot = jax.random.normal(jax.random.PRNGKey(9), (E, B))

    def reference(z, w, b):
        logits = jnp.einsum("ebd,edm->ebm", z, w) + b[:, None, :]
        return gate.masked_validation_loss(logits, x, v)

    def fused(z, w, b):
        return head.expert_validation_losses(z, w, b, x, v, chunk)

    l_ref, vjp_ref = jax.vjp(reference, z, w, b)
    l_new, vjp_new = jax.vjp(fused, z, w, b)
    np.testing.assert_allclose(l_new, l_ref, rtol=RTOL, atol=1e-5)
    _assert_trees_close(vjp_ref(cot), vjp_new(cot), atol=1e-5)


def test_validation_loss_vjp_matches_finite_differences():
    with jax.enable_x64(True):
        z, w, b, x, v = jax.tree.map(lambda a: a.astype(jnp.float64), _random_head(1))
        from jax.test_util import check_grads
        check_grads(lambda z, w, b: head.expert_validation_losses(z, w, b, x, v, 2),
                    (z, w, b), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_mixture_is_the_gated_sum_of_expert_logits():
    z, w, b, _, _ = _random_head(2)
    g = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(4), (B, E)), axis=-1)
    logits = jnp.einsum("ebd,edm->ebm", z, w) + b[:, None, :]
    np.testing.assert_allclose(head.mixture_logits(g, z, w, b), gate.mix_logits(g, logits),
                               rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize("chunk,temperature", [(1, 1.0), (3, 0.01), (6, 0.01)])
def test_online_mixture_equals_the_gemm_mixture_of_the_gate(chunk, temperature):
    # a sharp routing gate makes the running max change between chunks, so the rescaling is exercised
    z, w, b, x, v = _random_head(5)
    logits_fn = functools.partial(gate.validation_gate_logits, kind="route", temperature=temperature)
    mix, g = head.loss_gated_mixture(z, w, b, x, v, logits_fn, chunk)
    loss_BxE = head.expert_validation_losses(z, w, b, x, v, chunk).T
    expected_g = gate.validation_gate(loss_BxE, jnp.sum(v, -1), kind="route", temperature=temperature)
    np.testing.assert_allclose(g, expected_g, rtol=RTOL, atol=1e-6)
    if temperature < 1:
        assert float(jnp.max(g)) > 0.99  # it routes: one expert takes almost all of a user
    np.testing.assert_allclose(mix, head.mixture_logits(expected_g, z, w, b), rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize("kind,temperature,chunk", [("loss", 1.0, 1), ("loss", 1.0, 3), ("route", 0.1, 2)])
def test_gated_mixture_vjp_equals_autodiff_of_the_composition(kind, temperature, chunk):
    # Cotangents on both outputs (the gate's own too), against autodiff of losses -> gate -> mixture
    # built from the all-experts-at-once logits: checks the backward's softmax-VJP centre.
    z, w, b, x, v = _random_head(6)
    ks = jax.random.split(jax.random.PRNGKey(11))
    cot = (jax.random.normal(ks[0], (B, M)), jax.random.normal(ks[1], (B, E)))
    logits_fn = functools.partial(gate.validation_gate_logits, kind=kind, temperature=temperature)

    def composed(z, w, b):
        logits = jnp.einsum("ebd,edm->ebm", z, w) + b[:, None, :]
        g = gate.validation_gate(gate.masked_validation_loss(logits, x, v).T, jnp.sum(v, -1),
                                 kind=kind, temperature=temperature)
        return gate.mix_logits(g, logits), g

    out_ref, vjp_ref = jax.vjp(composed, z, w, b)
    out_new, vjp_new = jax.vjp(lambda z, w, b: head.loss_gated_mixture(z, w, b, x, v, logits_fn, chunk),
                               z, w, b)
    _assert_trees_close(out_ref, out_new, atol=1e-5)
    _assert_trees_close(vjp_ref(cot), vjp_new(cot), rtol=1e-4, atol=1e-4)


# lmoe and wl share tall's and multvae's loss_fn (they differ in the weights passed in)
MODELS = ["multvae", "moe", "uniform_moe", "tall"]


def _config(model, **kw):
    n_experts = {} if model in ("multvae", "wl") else dict(n_experts=E)
    return make_config("ml-1m", model, latent=D, batch_size=B, gate_hidden=5, **n_experts, **kw)


@pytest.mark.parametrize("model,chunk,gate", [(m, 0, None) for m in MODELS] + [("tall", 3, None),
                                                                                ("tall", 0, "route"),
                                                                                ("tall", 0, "route_train")])
def test_fused_loss_grads_and_recorded_losses_match_reference(model, chunk, gate):
    data = _data()
    ref = _config(model, forward_impl="reference", **({"gate": gate, "gate_temperature": 0.1} if gate else {}))
    fused = ref.replace(forward_impl="fused", expert_chunk=chunk if ref.n_experts > 1 else 0)
    params = state_lib.init(jax.random.PRNGKey(0), ref, N, M, ms_N=np.linspace(0, 1, N)).params
    batch = batching.make_batch(data, jnp.array([0, 1, 2, 3, 4, 5, 6, N]))  # a padding user
    w_B = jnp.linspace(0.5, 1.5, B)
    grad_fn = jax.jit(jax.value_and_grad(steps.loss_fn, has_aux=True), static_argnames="config")
    (l0, a0), g0 = grad_fn(params, batch, w_B, jnp.float32(0.1), jax.random.PRNGKey(3), ref)
    (l1, a1), g1 = grad_fn(params, batch, w_B, jnp.float32(0.1), jax.random.PRNGKey(3), fused)
    np.testing.assert_allclose(l1, l0, rtol=RTOL)
    for name in ("ce", "kl", "gate_entropy", "recorded_B"):
        np.testing.assert_allclose(a1[name], a0[name], rtol=RTOL, atol=1e-5)
    for leaf in jax.tree.leaves(g0):
        assert float(jnp.max(jnp.abs(leaf))) > 0  # no gradient is trivially zero
    _assert_trees_close(g0, g1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_route_train_gate_is_softmax_of_each_experts_train_nll_per_item(impl):
    # brute force: g_uk = softmax_k(-(1/|X_u|) sum_{i in X_u} -log softmax(o_uk)_i / tau), from the
    # reference path's logits; the validation rows never enter it
    data = _data()
    config = _config("lmoe", forward_impl="reference", gate="route_train", gate_temperature=0.05)
    params = state_lib.init(jax.random.PRNGKey(0), config, N, M).params
    batch = batching.make_batch(data, jnp.arange(B))
    x = np.asarray(batching.dense_rows(batch.train_idx, M))
    v = np.asarray(batching.dense_rows(batch.valid_idx, M))
    out = steps.forward(params, jnp.asarray(x), jnp.asarray(v), jax.random.PRNGKey(1), config, train=False)
    logits = np.asarray(out["logits_ExBxM"], np.float64)
    log_p = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    nll_per_item_BxE = (-(log_p * x[None]).sum(-1) / x.sum(-1)[None]).T
    expected = scipy.special.softmax(-nll_per_item_BxE / 0.05, axis=-1)
    run = lambda vv: np.asarray(steps.forward(  # noqa: E731
        params, jnp.asarray(x), jnp.asarray(vv), jax.random.PRNGKey(1), config.replace(forward_impl=impl),
        train=False)["gate_BxE"])
    np.testing.assert_allclose(run(v), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(run(v), run(np.zeros_like(v)))  # no validation item in the gate
    assert float(np.mean(-(expected * np.log(expected + 1e-30)).sum(-1))) < 0.75 * np.log(E)  # it routes


def test_gate_gradient_through_validation_items_is_kept():
    """The faithful loss gate is differentiated through L_uk: detaching it changes the gradient,
    and the fused path follows the reference in both cases."""
    data = _data()
    ref = _config("lmoe", forward_impl="reference")
    params = state_lib.init(jax.random.PRNGKey(0), ref, N, M).params
    batch = batching.make_batch(data, jnp.arange(B))
    grads = {}
    for impl in ("reference", "fused"):
        for stop in (False, True):
            cfg = ref.replace(forward_impl=impl, gate_stop_gradient=stop)
            grads[impl, stop] = jax.grad(lambda p: steps.loss_fn(
                p, batch, jnp.ones(B), jnp.float32(0.1), jax.random.PRNGKey(1), cfg)[0])(params)
    _assert_trees_close(grads["reference", False], grads["fused", False], rtol=1e-4)
    _assert_trees_close(grads["reference", True], grads["fused", True], rtol=1e-4)
    diff = grads["fused", False]["experts"]["dec_w"] - grads["fused", True]["experts"]["dec_w"]
    assert float(jnp.max(jnp.abs(diff))) > 1e-6


def test_detached_gate_evaluates_as_the_reference():
    # evaluation takes the online mixture with gate_stop_gradient too (it differentiates nothing)
    data = _data()
    ref = _config("lmoe", forward_impl="reference", gate_stop_gradient=True)
    params = state_lib.init(jax.random.PRNGKey(0), ref, N, M).params
    batch = batching.make_batch(data, jnp.arange(B))
    x, v = (batching.dense_rows(idx, M) for idx in (batch.train_idx, batch.valid_idx))
    outs = [steps.forward(params, x, v, jax.random.PRNGKey(1), ref.replace(forward_impl=impl), train=False)
            for impl in ("reference", "fused")]
    for key in ("mix_BxM", "gate_BxE"):
        np.testing.assert_allclose(outs[1][key], outs[0][key], rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize("model", ["tall", "moe", "multvae"])
def test_fused_epoch_and_evaluation_match_reference(model):
    data = _data(1)
    ref = _config(model, forward_impl="reference", gap=0).replace(batch_size=5)
    fused = ref.replace(forward_impl="fused")
    s0 = state_lib.init(jax.random.PRNGKey(1), ref, N, M)
    s1 = state_lib.init(jax.random.PRNGKey(1), fused, N, M)
    for _ in range(2):  # the second epoch uses adaptive weights (gap 0)
        s0, m0 = steps.train_epoch(s0, data, ref)
        s1, m1 = steps.train_epoch(s1, data, fused)
    np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-4)
    np.testing.assert_allclose(m1["gate_entropy"], m0["gate_entropy"], rtol=1e-5)
    _assert_trees_close(s0.params, s1.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s1.loss_N, s0.loss_N, rtol=1e-4)
    np.testing.assert_allclose(s1.weights_N, s0.weights_N, rtol=1e-4)
    e0, e1 = steps.evaluate(s0.params, data, ref), steps.evaluate(s1.params, data, fused)
    assert set(e0) == set(e1)
    for k in e0:
        np.testing.assert_allclose(e1[k], e0[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_bfloat16_precision_runs_close_to_float32():
    data = _data()
    cfg = _config("tall")
    params = state_lib.init(jax.random.PRNGKey(0), cfg, N, M).params
    batch = batching.make_batch(data, jnp.arange(B))
    losses = {}
    for p in ("float32", "bfloat16"):
        c = cfg.replace(matmul_precision=p)
        loss, grads = jax.value_and_grad(lambda q: steps.loss_fn(
            q, batch, jnp.ones(B), jnp.float32(0.1), jax.random.PRNGKey(1), c)[0])(params)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
        losses[p] = float(loss)
    assert losses["bfloat16"] != losses["float32"]  # the option does change the products
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=1e-2)


def test_batch_nnz_caps_bound_every_batch():
    rng = np.random.default_rng(0)
    mat = sp.csr_matrix((rng.uniform(size=(37, 20)) < rng.uniform(size=(37, 1))).astype(np.float32))
    data = batching.UserData.from_dataset(type("D", (), dict(
        train=mat, valid=mat, test=mat, n_users=37, n_items=20))())
    lengths = np.diff(mat.indptr)
    for b in (1, 3, 8, 16, 37, 64):
        brute = int(np.sort(lengths)[::-1][:b].sum())  # the b longest rows
        assert brute <= data.train_nnz_cap(b) <= max(brute, 1) * 2 + 20 * 2


@pytest.mark.parametrize("model", ["tall", "multvae"])
def test_sparse_encoder_matches_dense(model):
    from helpers import tiny_dataset
    ds = tiny_dataset(empty_valid_users=(3,))
    data = batching.UserData.from_dataset(ds)
    dense = make_config("ml-1m", model, latent=D, batch_size=B, encoder="dense", dropout=0.3,
                        **({} if model == "multvae" else dict(n_experts=E)))
    sparse = dense.replace(encoder="sparse")
    params = state_lib.init(jax.random.PRNGKey(0), dense, ds.n_users, ds.n_items).params
    batch = batching.make_batch(data, jnp.array([0, 3, 5, 9, 11, 20, ds.n_users, ds.n_users]))
    assert 0 < batch.nnz_cap < B * ds.n_items
    grad_fn = jax.jit(jax.value_and_grad(steps.loss_fn, has_aux=True), static_argnames="config")
    (l0, a0), g0 = grad_fn(params, batch, jnp.ones(B), jnp.float32(0.1), jax.random.PRNGKey(3), dense)
    (l1, a1), g1 = grad_fn(params, batch, jnp.ones(B), jnp.float32(0.1), jax.random.PRNGKey(3), sparse)
    np.testing.assert_allclose(l1, l0, rtol=RTOL)
    np.testing.assert_allclose(a1["recorded_B"], a0["recorded_B"], rtol=RTOL, atol=1e-5)
    _assert_trees_close(g0, g1, rtol=1e-4, atol=1e-6)
    e0 = steps.evaluate(params, data, dense)
    e1 = steps.evaluate(params, data, sparse)
    for k in ("valid/ndcg@10", "test/recall@20"):
        np.testing.assert_allclose(e1[k], e0[k], rtol=1e-5, atol=1e-6)
    assert steps.use_sparse_encoder(dense.replace(encoder="auto"), 10, 8, 1000)
    assert not steps.use_sparse_encoder(dense.replace(encoder="auto"), 10, 8, 10)
