"""Two-tower scorer with optional per-group task heads and the masked per-group BCE (docs/fidelity.md#two-tower-model).

Shapes: B = batch, U / I = user / item (title) feature width, D = tower width, G = number of group heads.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# full float32 products also on GPUs, where the default would be TF32 (tall_jax/precision.py, "float32")
FULL = jax.lax.Precision.HIGHEST


class Tower(nn.Module):
    """Tower encoder of docs/fidelity.md#two-tower-model: ``n_layers`` x (Dense -> BatchNorm -> ReLU), width ``width``.

    ``valid_B`` (bool) marks real rows: in train mode only they enter the batch mean / variance, so padded
    rows neither normalise the real rows nor move the running statistics. In eval mode
    (``train=False``) the running statistics in the ``batch_stats`` collection are used.
    """

    width: int = 512
    n_layers: int = 2
    momentum: float = 0.99
    n_ids: int = 0  # > 0: the input is one column of ids in 0..n_ids-1, looked up in a learned table

    @nn.compact
    def __call__(self, x_BxF: jax.Array, *, train: bool, valid_B: jax.Array | None = None) -> jax.Array:
        mask_Bx1 = None if valid_B is None else valid_B.astype(bool)[:, None]
        h_BxD = x_BxF
        if self.n_ids > 0:
            h_BxD = nn.Embed(self.n_ids, self.width, name="embed")(x_BxF[:, 0].astype(jnp.int32))
        for i in range(self.n_layers):
            h_BxD = nn.Dense(self.width, precision=FULL, name=f"dense_{i}")(h_BxD)
            h_BxD = nn.BatchNorm(
                use_running_average=not train, momentum=self.momentum, name=f"bn_{i}"
            )(h_BxD, mask=mask_Bx1 if train else None)
            h_BxD = nn.relu(h_BxD)
        return h_BxD


class TwoTower(nn.Module):
    """Baseline (``n_groups == 0``) or hard-parameter-sharing MTL two-tower (``n_groups == G >= 1``).

    Returns ``scores_BxG`` (logits; ``G = max(n_groups, 1)``):
    baseline ``score = <user_tower(u), title_tower(t)>`` (one column); MTL
    ``score[:, g] = <relu(W_g user_tower(u) + b_g), title_tower(t)>`` for every g at once: the G task
    blocks are one stacked parameter ``head_kernel[G, D, D]`` applied by a single einsum, so all heads
    are computed for every example and the loss masks them (docs/fidelity.md#two-tower-model, paper Fig. 1).

    Decision (not in the paper): every tower and head ends in a ReLU, so a raw dot product is >= 0 and
    grows like d; the logit is therefore ``scale * <., .> + bias`` with two learned scalars shared by all
    heads (init ``1/sqrt(d)`` and 0). This changes calibration only; a shared affine map never changes
    a ranking, so per-territory AP is unaffected by the choice of init.

    Regularisation options (not in the paper; default off): ``head_rank = r > 0`` makes every task block
    low-rank, ``W_g = A_g B_g`` with ``A_g [D, r]``, ``B_g [r, D]`` (fewer parameters per group);
    ``head_dropout = p > 0`` applies dropout to the task-block output in train mode (needs a ``dropout``
    RNG).

    Id inputs (for logs without feature vectors): ``user_vocab = n > 0`` makes the user input one
    column of ids, looked up in a learned ``[n, D]`` table before the user tower's layers
    (``item_vocab`` likewise for titles).
    """

    n_groups: int = 0
    width: int = 512
    n_layers: int = 2
    momentum: float = 0.99
    head_rank: int = 0
    head_dropout: float = 0.0
    user_vocab: int = 0  # > 0: user inputs are ids of a learned embedding table (Tower.n_ids)
    item_vocab: int = 0

    @property
    def n_heads(self) -> int:
        return max(self.n_groups, 1)

    @nn.compact
    def __call__(
        self, user_x_BxU: jax.Array, item_x_BxI: jax.Array, *, train: bool, valid_B: jax.Array | None = None
    ) -> jax.Array:
        tower = dict(width=self.width, n_layers=self.n_layers, momentum=self.momentum)
        u_BxD = Tower(**tower, n_ids=self.user_vocab, name="user_tower")(user_x_BxU, train=train, valid_B=valid_B)
        t_BxD = Tower(**tower, n_ids=self.item_vocab, name="item_tower")(item_x_BxI, train=train, valid_B=valid_B)
        scale = self.param("logit_scale", nn.initializers.constant(self.width ** -0.5), ())
        bias = self.param("logit_bias", nn.initializers.zeros, ())
        if self.n_groups == 0:
            return scale * jnp.sum(u_BxD * t_BxD, axis=-1, keepdims=True) + bias
        init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        bias_GxD = self.param("head_bias", nn.initializers.zeros, (self.n_groups, self.width))
        if self.head_rank > 0:
            a_GxDxR = self.param("head_a", init, (self.n_groups, self.width, self.head_rank))
            b_GxRxD = self.param("head_b", init, (self.n_groups, self.head_rank, self.width))
            pre_BxGxD = jnp.einsum("bgr,gre->bge", jnp.einsum("bd,gdr->bgr", u_BxD, a_GxDxR, precision=FULL), b_GxRxD,
                                   precision=FULL)
        else:
            kernel_GxDxD = self.param("head_kernel", init, (self.n_groups, self.width, self.width))
            pre_BxGxD = jnp.einsum("bd,gde->bge", u_BxD, kernel_GxDxD, precision=FULL)
        h_BxGxD = nn.relu(pre_BxGxD + bias_GxD[None])
        if self.head_dropout > 0:
            h_BxGxD = nn.Dropout(self.head_dropout, deterministic=not train)(h_BxGxD)
        return scale * jnp.einsum("bge,be->bg", h_BxGxD, t_BxD, precision=FULL) + bias

    def group_mask(self, group_B: jax.Array) -> jax.Array:
        """One-hot mask ``m[b, g] = 1`` iff example b belongs to group g (all ones for the baseline)."""
        if self.n_groups == 0:
            return jnp.ones((group_B.shape[0], 1), jnp.float32)
        return jax.nn.one_hot(group_B, self.n_groups, dtype=jnp.float32)


def masked_bce_loss(
    scores_BxG: jax.Array, label_B: jax.Array, mask_BxG: jax.Array, valid_B: jax.Array
) -> jax.Array:
    """docs/fidelity.md#two-tower-model: ``L = sum_b sum_g m[b,g] valid[b] BCE(y_b, sigmoid(s[b,g])) / sum_b valid[b]``.

    BCE from logits (optax, numerically stable). Masked entries are removed with ``jnp.where`` before the
    sum, so their cotangent is exactly zero: a head receives no gradient from other groups' examples,
    nor from padded rows. The denominator counts real examples (at least 1).
    """
    label_BxG = jnp.broadcast_to(label_B.astype(jnp.float32)[:, None], scores_BxG.shape)
    bce_BxG = optax.sigmoid_binary_cross_entropy(scores_BxG, label_BxG)
    keep_BxG = (mask_BxG > 0) & valid_B.astype(bool)[:, None]
    n_real = jnp.maximum(jnp.sum(valid_B.astype(jnp.float32)), 1.0)
    return jnp.sum(jnp.where(keep_BxG, bce_BxG, 0.0)) / n_real


def own_group_scores(scores_BxG: jax.Array, group_B: jax.Array) -> jax.Array:
    """The logit of each example's own group head (column 0 for the baseline)."""
    if scores_BxG.shape[1] == 1:
        return scores_BxG[:, 0]
    return jnp.take_along_axis(scores_BxG, group_B[:, None].astype(jnp.int32), axis=1)[:, 0]
