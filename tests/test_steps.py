import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import tall_jax
from tall_jax import steps
from tall_jax.batching import UserData, make_batch, sequential_order
from tall_jax.configs import make_config
from tall_jax.state import init, load_state, save_state

from helpers import tiny_dataset


@pytest.fixture(scope="module")
def tiny():
    ds = tiny_dataset(empty_valid_users=(3, 8))
    return ds, UserData.from_dataset(ds)


def small_config(model="tall", **kw):
    kw.setdefault("n_experts", None if model in ("multvae", "wl") else 3)
    return make_config("synthetic", model, latent=4, batch_size=8, gate_hidden=6, **kw)


def test_loss_gradients_match_finite_differences(tiny):
    ds, data = tiny
    batch = make_batch(data, jnp.arange(8))
    for model in ("tall", "moe"):
        config = small_config(model, noise_std=0.3)
        with jax.enable_x64(True):
            state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items)
            params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state.params)
            w = jnp.linspace(0.5, 1.5, 8)

            @jax.jit
            def f(p):
                return steps.loss_fn(p, batch, w, jnp.asarray(0.3), jax.random.PRNGKey(5), config)[0]

            assert f(params).dtype == jnp.float64
            check_grads(f, (params,), order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-5)


def test_padding_changes_nothing(tiny):
    ds, data = tiny
    config = small_config("tall", noise_std=0.0)  # padding changes the noise draw's shape only
    state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items)
    state = state.replace(weights_N=jnp.linspace(0.2, 2.0, ds.n_users))
    users = jnp.array([4, 9, 3, 17, 30])  # user 3 has no validation item
    padded = jnp.concatenate([users, jnp.full((3,), ds.n_users)])
    key = jax.random.PRNGKey(2)

    @jax.jit
    def run(u):
        batch = make_batch(data, u)
        w = state.weights_N.at[batch.users].get(mode="fill", fill_value=0.0)
        (loss, aux), grads = jax.value_and_grad(steps.loss_fn, has_aux=True)(
            state.params, batch, w, jnp.asarray(0.2), key, config)
        return loss, aux["recorded_B"], grads
    l1, r1, g1 = run(users)
    l2, r2, g2 = run(padded)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(r1, r2[:5], rtol=1e-5)
    chex.assert_trees_all_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_train_step_compiles_once_per_epoch_including_padded_tail(tiny):
    ds, data = tiny
    config = small_config("tall")
    state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items)
    order = sequential_order(ds.n_users, config.batch_size)
    assert order[-1, -1] == ds.n_users  # 37 users in batches of 8: the last batch is padded
    before = tall_jax.train_step._cache_size()
    for users in order:
        state, metrics = tall_jax.train_step(state, make_batch(data, users), config)
    assert tall_jax.train_step._cache_size() - before == 1
    assert int(state.step) == len(order)
    recorded = np.asarray(state.loss_N)
    assert np.all(recorded[[3, 8]] == 0)  # no validation items: l_u = 0
    assert np.all(recorded[np.diff(ds.valid.indptr) > 0] > 0)


@pytest.mark.parametrize("model", ["multvae", "tall", "moe", "wl"])
def test_loss_decreases_on_a_few_epochs(tiny, model):
    ds, data = tiny
    config = small_config(model)
    state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items,
                 ms_N=np.linspace(0, 1, ds.n_users))
    losses = []
    for _ in range(6):
        state, metrics = steps.train_epoch(state, data, config)
        losses.append(float(np.mean(metrics["ce"])))
    assert losses[-1] < losses[0]
    expected_steps = 6 * 5 * (2 if model == "wl" else 1)  # WL's double step (spec §6.1)
    assert int(state.step) == expected_steps


def test_checkpoint_round_trip_is_bit_exact(tiny, tmp_path):
    ds, data = tiny
    config = small_config("moe")
    state, _ = steps.train_epoch(init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items), data, config)
    save_state(tmp_path / "s.msgpack", state)
    template = init(jax.random.PRNGKey(1), config, ds.n_users, ds.n_items)
    loaded = load_state(tmp_path / "s.msgpack", template)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(loaded)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


def test_multvae_loss_is_ce_plus_beta_mean_kl(tiny):
    ds, data = tiny
    config = small_config("multvae", noise_std=0.0)
    state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items)
    users = jnp.concatenate([jnp.arange(6), jnp.full((2,), ds.n_users)])
    batch = make_batch(data, users)
    loss, aux = steps.loss_fn(state.params, batch, jnp.ones(8), jnp.asarray(0.5),
                              jax.random.PRNGKey(0), config)
    p = jax.tree.map(lambda a: np.asarray(a[0], np.float64), state.params["experts"])
    x = ds.train[:6].toarray().astype(np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    h = xn @ p["enc_w"] + p["enc_b"]
    mu, logvar = h[:, :4], h[:, 4:]
    o = mu @ p["dec_w"] + p["dec_b"]
    logp = o - np.log(np.exp(o).sum(1, keepdims=True))
    ce = -(x * logp).sum(1).mean()
    kl = (0.5 * (-logvar + np.exp(logvar) + mu**2 - 1).sum(1)).mean()
    np.testing.assert_allclose(loss, ce + 0.5 * kl, rtol=1e-5)


def test_loss_change_window_across_epochs(tiny):
    ds, _ = tiny
    config = small_config("tall", gap=2)
    state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items)
    l1, l2, l3 = (np.full(ds.n_users, v, np.float32) + np.arange(ds.n_users) * k
                  for v, k in ((9.0, 0.0), (8.0, 0.01), (6.0, 0.03)))
    state = steps.end_epoch(state.replace(loss_N=jnp.asarray(l1)), config)  # epoch 1: no change yet
    assert int(state.window_count) == 0 and int(state.epoch) == 1
    state = steps.end_epoch(state.replace(loss_N=jnp.asarray(l2)), config)
    state = steps.end_epoch(state.replace(loss_N=jnp.asarray(l3)), config)
    assert int(state.window_count) == 2
    np.testing.assert_allclose(state.window_NxL[:, 0], l1 - l2, rtol=1e-6)
    np.testing.assert_allclose(state.window_NxL[:, 1], l2 - l3, rtol=1e-6)
    n_valid = jnp.asarray(np.diff(ds.valid.indptr), jnp.float32)
    state = steps.begin_epoch(state, config, n_valid)  # epoch 4 > gap 2: Eq. 3 on the window mean
    delta = ((l1 - l2) + (l2 - l3)) / 2
    expected = np.maximum((delta - delta.mean() + 2 * 0.08) / (2 * 0.08), 1e-8)
    np.testing.assert_allclose(state.weights_N, expected, rtol=1e-4)


def test_jax_step_equals_pytorch_reference(tiny):
    torch = pytest.importorskip("torch")
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "torch_reference", Path(__file__).resolve().parents[1] / "benchmarks" / "torch_reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    ds, data = tiny
    config = small_config("tall", noise_std=0.0, reg=3e-3)
    state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items)
    state = state.replace(weights_N=jnp.linspace(0.2, 2.0, ds.n_users))
    p = jax.tree.map(np.asarray, state.params["experts"])
    model = ref.TorchTALL(ds.n_items, 3, latent=4, reg=3e-3, noise=False)
    model.load_params(p["enc_w"], p["enc_b"], p["dec_w"], p["dec_b"])
    users = np.arange(8)
    x = torch.tensor(ds.train[users].toarray())
    v = torch.tensor(ds.valid[users].toarray())
    beta = float(steps.beta_at(jnp.asarray(0), config))
    state = state.replace(step=jnp.asarray(40_000, jnp.int32))  # beta = 0.2: the KL term matters
    torch_loss = model.step(x, v, torch.tensor(np.linspace(0.2, 2.0, ds.n_users)[users], dtype=torch.float32), 0.2)
    del beta
    state, metrics = tall_jax.train_step(state, make_batch(data, jnp.asarray(users)), config)
    np.testing.assert_allclose(metrics["loss"], torch_loss, rtol=1e-5)
    np.testing.assert_allclose(state.loss_N[:8], model.last_user_loss.numpy(), rtol=1e-5)
    got = jax.tree.map(np.asarray, state.params["experts"])
    for name, key in [("enc_w", "enc_w_ExMx2d"), ("dec_w", "dec_w_ExdxM"), ("dec_b", "dec_b_ExM")]:
        np.testing.assert_allclose(got[name], model.params_numpy()[key], rtol=1e-4, atol=1e-6)


def test_evaluate_matches_predict_and_rank_metrics(tiny):
    ds, data = tiny
    config = small_config("tall")
    state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items)
    out = jax.device_get(steps.evaluate(state.params, data, config))
    chex.assert_shape(out["test/ndcg@20"], (ds.n_users,))
    assert np.isnan(out["valid/ndcg@20"][[3, 8]]).all()  # no validation items -> undefined
    mix, _, _, _ = steps.predict(state.params, make_batch(data, jnp.arange(8)), config)
    scores = np.where(ds.train[:8].toarray() > 0, -np.inf, np.asarray(mix))
    for u in range(8):
        top = np.argsort(-scores[u], kind="stable")[:20]
        hits = ds.test[u].toarray()[0][top]
        dcg = np.sum(hits / np.log2(np.arange(2, 22)))
        idcg = np.sum(1 / np.log2(np.arange(2, 2 + min(20, ds.test[u].nnz))))
        np.testing.assert_allclose(out["test/ndcg@20"][u], dcg / idcg, rtol=1e-5)


def test_hand_written_loop_with_epoch_hooks_runs(tiny):
    """begin_epoch / end_epoch outside jit must leave no aliased buffers for train_step to donate."""
    ds, data = tiny
    config = small_config("tall", gap=1)
    state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items)
    n_valid = jnp.asarray(np.diff(ds.valid.indptr), jnp.float32)
    for _ in range(3):
        state = tall_jax.begin_epoch(state, config, n_valid)
        for users in sequential_order(ds.n_users, config.batch_size):
            state, _ = tall_jax.train_step(state, make_batch(data, users), config)
        state = tall_jax.end_epoch(state, config)
    assert int(state.epoch) == 3 and int(state.window_count) == 2
    assert float(jnp.std(state.weights_N)) > 0  # epoch 3 > gap 1: adaptive weights are active
