import chex
import jax
import jax.numpy as jnp
import numpy as np

from tall_jax import vae


def test_init_matches_pytorch_default_bounds():
    params = vae.init_experts(jax.random.PRNGKey(0), 3, 400, 10)
    chex.assert_shape([params["enc_w"], params["enc_b"], params["dec_w"], params["dec_b"]],
                      [(3, 400, 20), (3, 20), (3, 10, 400), (3, 400)])
    for name, fan_in in [("enc_w", 400), ("enc_b", 400), ("dec_w", 10), ("dec_b", 10)]:
        a = np.asarray(params[name])
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(a).max() <= bound
        # U(-b, b) has std b / sqrt(3); a lecun-normal or zero init would fail this
        assert abs(a.std() - bound / np.sqrt(3)) < 0.1 * bound
    assert not np.allclose(params["enc_w"][0], params["enc_w"][1])  # each expert its own key


def test_vmapped_experts_equal_python_loop():
    n_experts, batch, n_items, latent = 4, 5, 30, 6
    params = vae.init_experts(jax.random.PRNGKey(1), n_experts, n_items, latent)
    x = (jax.random.uniform(jax.random.PRNGKey(2), (batch, n_items)) < 0.3).astype(jnp.float32)
    xn = vae.normalise(x)
    key = jax.random.PRNGKey(3)
    for train in (True, False):
        logits, kl = vae.experts_forward(params, xn, key, train=train, noise_std=0.5)
        chex.assert_shape([logits, kl], [(n_experts, batch, n_items), (n_experts, batch)])
        keys = jax.random.split(key, n_experts)
        for k in range(n_experts):
            one = jax.tree.map(lambda a: a[k], params)
            l_k, kl_k = vae.expert_forward(one, xn, keys[k], train=train, noise_std=0.5)
            np.testing.assert_allclose(logits[k], l_k, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(kl[k], kl_k, rtol=1e-5, atol=1e-6)


def test_forward_by_hand():
    rng = np.random.default_rng(0)
    m, d = 7, 3
    p = {"enc_w": rng.normal(size=(m, 2 * d)), "enc_b": rng.normal(size=2 * d),
         "dec_w": rng.normal(size=(d, m)), "dec_b": rng.normal(size=m)}
    x = np.array([[1, 0, 1, 0, 0, 1, 0]], float)
    xn = x / np.linalg.norm(x)
    h = xn @ p["enc_w"] + p["enc_b"]
    mu, logvar = h[:, :d], h[:, d:]
    expected_logits = mu @ p["dec_w"] + p["dec_b"]
    expected_kl = 0.5 * np.sum(-logvar + np.exp(logvar) + mu**2 - 1, axis=-1)
    jp = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    logits, kl = vae.expert_forward(jp, vae.normalise(jnp.asarray(x, jnp.float32)),
                                    jax.random.PRNGKey(0), train=False, noise_std=0.01)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5)
    np.testing.assert_allclose(kl, expected_kl, rtol=1e-5)


def test_training_noise_has_the_configured_scale():
    params = vae.init_expert(jax.random.PRNGKey(0), 50, 8)
    params["enc_b"] = params["enc_b"].at[8:].set(0.0)  # logvar = x W + 0; make it exactly 0
    params["enc_w"] = params["enc_w"].at[:, 8:].set(0.0)
    xn = vae.normalise(jnp.ones((4000, 50)))
    noisy, _ = vae.expert_forward(params, xn, jax.random.PRNGKey(1), train=True, noise_std=0.01)
    clean, _ = vae.expert_forward(params, xn, jax.random.PRNGKey(1), train=False, noise_std=0.01)
    # z differs by eps ~ N(0, 0.01^2); logits by eps @ dec_w
    eps_std = np.std(np.asarray(noisy - clean)) / np.sqrt(np.sum(np.asarray(params["dec_w"]) ** 2, 0)).mean()
    assert 0.007 < eps_std < 0.013


def test_user_embeddings_are_mu():
    import scipy.sparse as sp
    params = vae.init_experts(jax.random.PRNGKey(0), 2, 12, 4)
    train = sp.random(9, 12, density=0.4, format="csr", random_state=0)
    train.data[:] = 1
    emb = vae.user_embeddings(params, train, expert=1, batch_size=4)
    one = jax.tree.map(lambda a: a[1], params)
    mu, _ = vae.encode(one, vae.normalise(jnp.asarray(train.toarray(), jnp.float32)))
    np.testing.assert_allclose(emb, mu, rtol=1e-5, atol=1e-6)
