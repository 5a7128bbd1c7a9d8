"""What every MultVAE-family objective shares: the RNG streams, input dropout, the multinomial CE.

The TALL family (:mod:`tall_jax.steps`) and the local models of the baselines
(:mod:`tall_jax.baselines.local`) draw their randomness from a base key through these stream ids
(``jax.random.fold_in(key, STREAM)``), so the same stream never feeds two purposes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# stream ids folded into a base key: reparameterisation noise, the epoch shuffle, input dropout
NOISE, SHUFFLE, DROPOUT = 0, 1, 2


def input_dropout(xn_BxM: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout of the normalised input (nn.Dropout): keep w.p. 1 - rate, scale by 1/(1 - rate).

    ``key`` is the step key; the mask comes from its ``DROPOUT`` stream. ``rate`` 0 returns the input.
    """
    if rate <= 0:
        return xn_BxM
    keep = jax.random.bernoulli(jax.random.fold_in(key, DROPOUT), 1 - rate, xn_BxM.shape)
    return jnp.where(keep, xn_BxM / (1 - rate), 0.0)


def multinomial_ce(logits_BxM: jax.Array, x_BxM: jax.Array) -> jax.Array:
    """Per-user multinomial negative log-likelihood -sum_i x_ui log softmax(logits_u)_i, f32 [B]."""
    return -jnp.sum(x_BxM * jax.nn.log_softmax(logits_BxM, axis=-1), axis=-1)
