"""How the local-learning baselines score users, as scorers of the one evaluator
(:mod:`tall_jax.evaluation`: ``score_fn(params, batch) -> (logits_BxM, extras)``).

LOCA mixes its local models with the users' kernel weights and falls back to the global MultVAE for a
user no model covers; EnLFT mixes its anchors' fine-tuned copies with similarity weights; LFT scores
each user with the copy fine-tuned for that user. Every model scores in eval mode (z = mu).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tall_jax import evaluation, vae
from tall_jax.batching import Batch, UserData, dense_rows
from tall_jax.vae import Params


def eval_logits(params: Params, x_BxM: jax.Array) -> jax.Array:
    """One MultVAE's eval-mode item logits [B, M] of the raw rows ``x_BxM``."""
    return vae.expert_forward(params, vae.normalise(x_BxM), jax.random.PRNGKey(0), train=False,
                              noise_std=0.0)[0]


@jax.jit
def mixture_logits(params_K: Params, x_BxM: jax.Array, w_BxK: jax.Array) -> jax.Array:
    """sum_k w_bk logits_k(x_b) / sum_k w_bk, eval mode (docs/fidelity.md#loca, #enlft); NaN rows where the
    weights sum to 0 (the caller substitutes its fallback)."""
    def add(acc, pw):
        p, w_B = pw
        return acc + w_B[:, None] * eval_logits(p, x_BxM), None

    acc, _ = jax.lax.scan(add, jnp.zeros(x_BxM.shape, jnp.float32), (params_K, w_BxK.T))
    return acc / jnp.sum(w_BxK, axis=1, keepdims=True)


@jax.jit
def own_user_logits(params_K: Params, x_KxM: jax.Array) -> jax.Array:
    """Each copy k scores its own user's row x_k (LFT, docs/fidelity.md#lft): logits [K, M]."""
    return jax.vmap(lambda p, x: eval_logits(p, x[None])[0])(params_K, x_KxM)


def loca_scores(params: dict, batch: Batch) -> tuple[jax.Array, dict]:
    """LOCA (docs/fidelity.md#loca): the kernel-weighted mixture of ``params["local"]`` [K, ...] with
    weights ``params["kernel_NxK"]``; a user with all weights 0 gets ``params["global"]``'s logits."""
    x_BxM = dense_rows(batch.train_idx, batch.n_items)
    w_BxK = params["kernel_NxK"].at[batch.users].get(mode="fill", fill_value=0.0)
    mix_BxM = mixture_logits(params["local"], x_BxM, w_BxK)
    fallback_BxM = eval_logits(params["global"], x_BxM)
    return jnp.where(jnp.sum(w_BxK, axis=1, keepdims=True) > 0, mix_BxM, fallback_BxM), {}


def enlft_scores(params: dict, batch: Batch) -> tuple[jax.Array, dict]:
    """EnLFT (docs/fidelity.md#enlft): the mixture of ``params["local"]`` with the aggregation
    weights ``params["weights_NxK"]`` (padding users get weight 1)."""
    x_BxM = dense_rows(batch.train_idx, batch.n_items)
    w_BxK = params["weights_NxK"].at[batch.users].get(mode="fill", fill_value=1.0)
    return mixture_logits(params["local"], x_BxM, w_BxK), {}


def own_user_scores(params_K: Params, batch: Batch) -> tuple[jax.Array, dict]:
    """LFT (docs/fidelity.md#lft): row b is scored by copy b, so the batch must hold exactly the
    copies' users in order (batch size = number of copies)."""
    return own_user_logits(params_K, dense_rows(batch.train_idx, batch.n_items)), {}


def evaluate_users(score_fn, params, data: UserData, users: np.ndarray,
                   batch_size: int) -> dict[str, np.ndarray]:
    """Per-user valid/test metrics @{1,5,10,20} of ``users`` on the host (:func:`tall_jax.evaluation.evaluate`)."""
    return jax.device_get(evaluation.evaluate(score_fn, params, data, batch_size=batch_size,
                                              users=np.asarray(users)))
