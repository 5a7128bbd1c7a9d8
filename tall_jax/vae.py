"""The MultVAE expert as pure functions over a parameter pytree (docs/fidelity.md#multvae).

One expert is ``{"enc_w": [M, 2d], "enc_b": [2d], "dec_w": [d, M], "dec_b": [M]}``: a single linear
encoder to (mu, log sigma^2), no hidden layer and no tanh, and a single linear decoder to item logits.
E experts are the same pytree with a leading axis E; :func:`experts_forward` is :func:`expert_forward`
``jax.vmap``-ped over it, so all experts run in one compiled call.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from tall_jax import precision as prec

Params = dict[str, jax.Array]


def init_expert(key: jax.Array, n_items: int, latent: int) -> Params:
    """PyTorch's default ``nn.Linear`` init: W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (docs/fidelity.md#implementation)."""
    k_ew, k_eb, k_dw, k_db = jax.random.split(key, 4)
    enc_bound = 1.0 / np.sqrt(n_items)
    dec_bound = 1.0 / np.sqrt(latent)
    u = jax.random.uniform
    return {
        "enc_w": u(k_ew, (n_items, 2 * latent), jnp.float32, -enc_bound, enc_bound),
        "enc_b": u(k_eb, (2 * latent,), jnp.float32, -enc_bound, enc_bound),
        "dec_w": u(k_dw, (latent, n_items), jnp.float32, -dec_bound, dec_bound),
        "dec_b": u(k_db, (n_items,), jnp.float32, -dec_bound, dec_bound),
    }


def init_experts(key: jax.Array, n_experts: int, n_items: int, latent: int) -> Params:
    """E independently initialised experts stacked on a leading axis (each with its own key)."""
    keys = jax.random.split(key, n_experts)
    return jax.vmap(init_expert, in_axes=(0, None, None))(keys, n_items, latent)


def normalise(x_BxM: jax.Array) -> jax.Array:
    """x / max(||x||_2, 1e-12), row-wise (F.normalize)."""
    norm = jnp.sqrt(jnp.sum(x_BxM * x_BxM, axis=-1, keepdims=True))
    return x_BxM / jnp.maximum(norm, 1e-12)


def encode(params: Params, xn_BxM: jax.Array,
           precision: str = "float32") -> tuple[jax.Array, jax.Array]:
    """(mu, log sigma^2), each [B, d], from the normalised input."""
    h = prec.matmul(xn_BxM, params["enc_w"], precision) + params["enc_b"][None, :]
    latent = h.shape[-1] // 2
    return h[..., :latent], h[..., latent:]


def decode(params: Params, z_BxD: jax.Array, precision: str = "float32") -> jax.Array:
    """Item logits [B, M]."""
    return prec.matmul(z_BxD, params["dec_w"], precision) + params["dec_b"][None, :]


def kl_per_user(mu_BxD: jax.Array, logvar_BxD: jax.Array) -> jax.Array:
    """KL(q(z|x) || N(0, I)) per user: 1/2 sum_j (-log s2_j + s2_j + mu_j^2 - 1) (docs/fidelity.md#multvae)."""
    return 0.5 * jnp.sum(-logvar_BxD + jnp.exp(logvar_BxD) + mu_BxD**2 - 1.0, axis=-1)


def expert_forward(
    params: Params, xn_BxM: jax.Array, key: jax.Array, *, train: bool, noise_std: float,
    precision: str = "float32") -> tuple[jax.Array, jax.Array]:
    """One expert: (logits [B, M], per-user KL [B]).

    z = mu + 1[train] * eps * exp(logvar / 2) with eps ~ N(0, noise_std^2); noise_std is 0.01 in the
    authors' code (docs/fidelity.md#multvae), so the model is nearly deterministic even in training.
    """
    mu, logvar = encode(params, xn_BxM, precision)
    if train:
        eps = noise_std * jax.random.normal(key, mu.shape, mu.dtype)
        z = mu + eps * jnp.exp(0.5 * logvar)
    else:
        z = mu
    return decode(params, z, precision), kl_per_user(mu, logvar)


def experts_forward(
    params_E: Params, xn_BxM: jax.Array, key: jax.Array, *, train: bool, noise_std: float,
    precision: str = "float32") -> tuple[jax.Array, jax.Array]:
    """All E experts at once: (logits [E, B, M], KL [E, B]); expert k draws noise from split(key)[k]."""
    n_experts = params_E["dec_b"].shape[0]
    keys = jax.random.split(key, n_experts)
    forward = jax.vmap(
        lambda p, k: expert_forward(p, xn_BxM, k, train=train, noise_std=noise_std,
                                    precision=precision))
    return forward(params_E, keys)


def user_embeddings(params: Params, train: sp.csr_matrix, *, expert: int = 0,
                    batch_size: int = 1024) -> np.ndarray:
    """mu(x_u) of one expert for every user, eval mode: the MultVAE user embedding LOCA uses (docs/fidelity.md#loca).

    ``params`` is a TrainState's ``params`` ({"experts": ...}) or a (stacked) expert tree.
    """
    params = params.get("experts", params)  # a TrainState's params or the expert tree itself
    one = jax.tree.map(lambda a: a[expert], params) if params["dec_b"].ndim == 2 else params
    mu_fn = jax.jit(lambda p, x: encode(p, normalise(x))[0])
    out = []
    for start in range(0, train.shape[0], batch_size):
        rows = train[start:start + batch_size].toarray().astype(np.float32)
        out.append(np.asarray(mu_fn(one, rows)))
    return np.concatenate(out, axis=0)
