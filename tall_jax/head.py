"""The mixture head of the MultVAE family without the [E, B, M] logits (the fast path; same maths).

The reference forward (:func:`tall_jax.steps.forward` with ``forward_impl="reference"``) builds every
expert's logits o_uk = z_uk W_k + b_k at once, [E, B, M], and makes several passes over them. Here:

- the loss gate's per-expert validation losses L_uk (:func:`tall_jax.gate.masked_validation_loss`)
  come from a scan over chunks of experts, one chunk's logits in cache at a time; a custom VJP
  recomputes each chunk's logits in the backward pass and forms its gradients there, so the gate's
  gradient through the validation items is exact (the faithful gate has no stop-gradient);
- the mixture is linear in the decoders, so

      o_u = sum_k g_uk (z_uk W_k + b_k) = [g_u1 z_u1, ..., g_uE z_uE] @ [W_1; ...; W_E] + g_u @ b,

  one plain GEMM of the gated latents [B, E d] against the stacked decoder [E d, M]
  (:func:`mixture_logits`; its gradients by autodiff are plain GEMMs too);
- with the loss gate and its gradient (the faithful default), :func:`loss_gated_mixture` puts the
  losses, the gate and the mixture under one custom VJP: its forward accumulates the mixture online
  in the losses' scan (the gate is a softmax over experts of logits of each L_uk alone), and each
  expert's decoder gradient is formed once per chunk from the mixture's and the gate's cotangents
  together.

Peak activation memory is O(B M (chunk + a few)) instead of O(E B M).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tall_jax import precision as prec


# Bytes of one chunk's logits [c, B, M] that the auto chunk size aims for: on a CPU about two ML-1M
# experts (7.6 MB each; 2 ran fastest of 1, 2, 4, 5, 10 on the 2-core benchmark machine), a large slice
# of memory on an accelerator.
CHUNK_BYTES = {"cpu": 16 << 20}
ACCELERATOR_CHUNK_BYTES = 2 << 30


def auto_chunk(n_experts: int, batch: int, n_items: int) -> int:
    """The largest divisor c of E whose [c, B, M] float32 logits fit the backend's chunk budget
    (at least 1)."""
    budget = CHUNK_BYTES.get(jax.default_backend(), ACCELERATOR_CHUNK_BYTES)
    fits = [c for c in range(1, n_experts + 1)
            if n_experts % c == 0 and c * batch * n_items * 4 <= budget]
    return max(fits, default=1)


def _chunks(a: jax.Array, chunk: int) -> jax.Array:
    return a.reshape((a.shape[0] // chunk, chunk) + a.shape[1:])


def _chunk_logits(z_cxBxD, w_cxDxM, b_cxM, precision):
    return prec.einsum("cbd,cdm->cbm", z_cxBxD, w_cxDxM, precision) + b_cxM[:, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def expert_validation_losses(z_ExBxD: jax.Array, dec_w_ExDxM: jax.Array, dec_b_ExM: jax.Array,
                             x_BxM: jax.Array, v_BxM: jax.Array, chunk: int = 1,
                             precision: str = "float32") -> jax.Array:
    """L_uk = |V_u| logsumexp_m(o_ukm (1 - x_um)) - sum_{i in V_u} o_uki with o_uk = z_uk W_k + b_k,
    shape [E, B]: :func:`tall_jax.gate.masked_validation_loss` of every expert, ``chunk`` experts
    at a time (``chunk`` must divide E). Differentiable in z, W and b; x and v are data (0/1 rows)."""
    return _validation_losses_fwd(z_ExBxD, dec_w_ExDxM, dec_b_ExM, x_BxM, v_BxM, chunk,
                                  precision)[0]


def _row_masks(x, v):
    """(|V_u| [1, B], keep = 1 - x and v as booleans [1, B, M]). x and v are 0/1 rows, so o (1 - x)
    and o v are selects: on a CPU XLA reduces a select over [c, B, M] about twice as fast as a
    product with a broadcast row (benchmarks/README.md)."""
    return jnp.sum(v, axis=-1)[None, :], (x == 0)[None], (v != 0)[None]


def _validation_losses_fwd(z, w, b, x, v, chunk, precision):
    loss, lse, _ = _losses_scan(z, w, b, x, v, chunk, precision)
    return loss, (z, w, b, x, v, lse)


def _losses_scan(z, w, b, x, v, chunk, precision, gate_logits_fn=None):
    """(L [E, B], the chunked logsumexps, the gated mixture or None): one scan over chunks of
    experts. With ``gate_logits_fn`` (s_uk from L_uk alone) the scan also accumulates the mixture
    o_u = sum_k softmax_k(s_u)_k o_uk online, as flash attention does its values: a running max
    s*_u of the gate logits seen so far, the running sum of exp(s_uk - s*_u) and of exp(s_uk -
    s*_u) o_uk, both rescaled by exp(s*_old - s*_new) when the max grows. So the mixture costs an
    elementwise pass over each chunk's logits instead of another [B, E d] x [E d, M] GEMM."""
    n_valid_1xB, keep_1xBxM, in_v_1xBxM = _row_masks(x, v)
    n_experts, batch = z.shape[0], z.shape[1]

    def body(carry, zwb):
        logits = _chunk_logits(*zwb, precision)
        lse_cxB = jax.nn.logsumexp(jnp.where(keep_1xBxM, logits, 0.0), axis=-1)
        v_sum_cxB = jnp.sum(jnp.where(in_v_1xBxM, logits, 0.0), axis=-1)
        loss_cxB = n_valid_1xB * lse_cxB - v_sum_cxB
        if gate_logits_fn is None:
            return carry, (loss_cxB, lse_cxB)
        max_B, den_B, acc_BxM = carry
        s_cxB = gate_logits_fn(loss_cxB.T, n_valid_1xB[0]).T
        new_max_B = jnp.maximum(max_B, jnp.max(s_cxB, axis=0))
        rescale_B = jnp.exp(max_B - new_max_B)
        e_cxB = jnp.exp(s_cxB - new_max_B[None, :])
        acc_BxM = rescale_B[:, None] * acc_BxM + jnp.einsum(
            "cb,cbm->bm", e_cxB, logits, precision=jax.lax.Precision.HIGHEST)
        return (new_max_B, rescale_B * den_B + jnp.sum(e_cxB, axis=0), acc_BxM), (loss_cxB, lse_cxB)

    init = None
    if gate_logits_fn is not None:
        dtype = jnp.result_type(z, w, b)
        init = (jnp.full((batch,), -jnp.inf, dtype), jnp.zeros((batch,), dtype),
                jnp.zeros((batch, x.shape[-1]), dtype))
    carry, (loss, lse) = jax.lax.scan(body, init, (_chunks(z, chunk), _chunks(w, chunk),
                                                   _chunks(b, chunk)))
    mix_BxM = None if gate_logits_fn is None else carry[2] / carry[1][:, None]
    return loss.reshape(n_experts, batch), lse, mix_BxM


def _backward_scan(z, w, b, x, v, lse, dloss_ExB, chunk, precision, gate_ExB=None, dmix_BxM=None):
    """Gradients (dz, dW, db) of every expert's logits' cotangent dO_k, recomputed chunk by chunk:

        dO_ukm = dL_uk (|V_u| softmax_m(o_uk (1 - x_u))_m (1 - x_um) - v_um)  [+ g_uk dmix_um]

    (the bracket when the mixture's cotangent is given), then dz_k = dO_k W_k^T, dW_k = z_k^T dO_k,
    db_k = sum_u dO_k. ``lse`` holds the forward's chunked logsumexps."""
    n_valid_1xB, keep_1xBxM, in_v_1xBxM = _row_masks(x, v)
    with_mixture = dmix_BxM is not None

    def body(_, pack):
        z_c, w_c, b_c, lse_cxB, dloss_cxB = pack[:5]
        logits = _chunk_logits(z_c, w_c, b_c, precision)
        p = jnp.exp(jnp.where(keep_1xBxM, logits, 0.0) - lse_cxB[..., None])
        dlogits = (jnp.where(keep_1xBxM, (dloss_cxB * n_valid_1xB)[..., None] * p, 0.0)
                   - jnp.where(in_v_1xBxM, dloss_cxB[..., None], 0.0))
        if with_mixture:
            dlogits = dlogits + pack[5][..., None] * dmix_BxM[None]
        dz = prec.einsum("cbm,cdm->cbd", dlogits, w_c, precision)
        dw = prec.einsum("cbd,cbm->cdm", z_c, dlogits, precision)
        return None, (dz, dw, jnp.sum(dlogits, axis=1))

    packs = tuple(_chunks(a, chunk) for a in (z, w, b)) + (lse, _chunks(dloss_ExB, chunk))
    if with_mixture:
        packs = packs + (_chunks(gate_ExB, chunk),)
    _, (dz, dw, db) = jax.lax.scan(body, None, packs)
    unchunk = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731
    return unchunk(dz), unchunk(dw), unchunk(db)


def _validation_losses_bwd(chunk, precision, residuals, dloss_ExB):
    z, w, b, x, v, lse = residuals
    grads = _backward_scan(z, w, b, x, v, lse, dloss_ExB, chunk, precision)
    return grads + (jnp.zeros_like(x), jnp.zeros_like(v))


expert_validation_losses.defvjp(_validation_losses_fwd, _validation_losses_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def loss_gated_mixture(z_ExBxD: jax.Array, dec_w_ExDxM: jax.Array, dec_b_ExM: jax.Array,
                       x_BxM: jax.Array, v_BxM: jax.Array, gate_logits_fn, chunk: int = 1,
                       precision: str = "float32") -> tuple[jax.Array, jax.Array]:
    """(o_BxM, g_BxE): the loss gate g_u = softmax_k(gate_logits_fn(L^T, n_valid_B)_u) (n_valid_B =
    |V_u|; ``gate_logits_fn`` maps each L_uk to its logit s_uk alone, as
    :func:`tall_jax.gate.validation_gate_logits` does) of the experts' validation losses L
    (:func:`expert_validation_losses`) and the mixture o = :func:`mixture_logits`, with one custom
    VJP for both.

    Forward: one scan over chunks of experts gives L and, online, the mixture (:func:`_losses_scan`).
    Backward: each expert's decoder gradient is formed once, from

        dO_k = g_k dmix + dL_k dL/do_k,   dg_uk = <dmix_u, o_uk> + (cotangent of g)_uk,

    where dL comes from the gate's own VJP (autodiff of softmax . gate_logits_fn) and
    <dmix_u, o_uk> = z_uk . (W_k dmix_u) + b_k . dmix_u is one GEMM. Same value and gradient as
    composing the two functions, with two [E d, M]-sized GEMMs fewer.
    """
    return _gated_fwd(z_ExBxD, dec_w_ExDxM, dec_b_ExM, x_BxM, v_BxM, gate_logits_fn, chunk,
                      precision)[0]


def _gate_of(gate_logits_fn, loss_BxE, n_valid_B):
    return jax.nn.softmax(gate_logits_fn(loss_BxE, n_valid_B), axis=-1)


def _gated_fwd(z, w, b, x, v, gate_logits_fn, chunk, precision):
    loss_ExB, lse, mix_BxM = _losses_scan(z, w, b, x, v, chunk, precision, gate_logits_fn)
    gate_BxE = _gate_of(gate_logits_fn, loss_ExB.T, jnp.sum(v, axis=-1))
    return (mix_BxM, gate_BxE), (z, w, b, x, v, lse, loss_ExB, gate_BxE)


def _gated_bwd(gate_logits_fn, chunk, precision, residuals, cotangents):
    z, w, b, x, v, lse, loss_ExB, gate_BxE = residuals
    dmix_BxM, dgate_BxE = cotangents
    n_experts, batch, latent = z.shape
    w_dmix_BxExD = prec.einsum("bm,km->bk", dmix_BxM, w.reshape(n_experts * latent, -1),
                               precision).reshape(batch, n_experts, latent)
    dgate_BxE = (dgate_BxE + jnp.einsum("bed,ebd->be", w_dmix_BxExD, z)
                 + prec.einsum("bm,em->be", dmix_BxM, b, precision))
    n_valid_B = jnp.sum(v, axis=-1)
    _, gate_vjp = jax.vjp(lambda loss_BxE: _gate_of(gate_logits_fn, loss_BxE, n_valid_B), loss_ExB.T)
    (dloss_BxE,) = gate_vjp(dgate_BxE)
    grads = _backward_scan(z, w, b, x, v, lse, dloss_BxE.T, chunk, precision,
                           gate_ExB=gate_BxE.T, dmix_BxM=dmix_BxM)
    return grads + (jnp.zeros_like(x), jnp.zeros_like(v))


loss_gated_mixture.defvjp(_gated_fwd, _gated_bwd)


def mixture_logits(gate_BxE: jax.Array, z_ExBxD: jax.Array, dec_w_ExDxM: jax.Array,
                   dec_b_ExM: jax.Array, precision: str = "float32") -> jax.Array:
    """o_u = sum_k g_uk (z_uk W_k + b_k) as one GEMM [B, E d] x [E d, M] plus g @ b, [B, M]."""
    n_experts, batch, latent = z_ExBxD.shape
    gated_BxED = (gate_BxE.T[:, :, None] * z_ExBxD).transpose(1, 0, 2).reshape(
        batch, n_experts * latent)
    stacked_EDxM = dec_w_ExDxM.reshape(n_experts * latent, -1)
    return (prec.matmul(gated_BxED, stacked_EDxM, precision)
            + prec.matmul(gate_BxE, dec_b_ExM, precision))


def encode_experts(enc_w_ExMxH: jax.Array, enc_b_ExH: jax.Array, xn_BxM: jax.Array,
                   precision: str = "float32", *, means_only: bool = False):
    """(mu, log sigma^2), each [E, B, d], of every expert's linear encoder on the normalised rows;
    (mu, None) with ``means_only`` (evaluation, z = mu), which multiplies by the mean half of W only.

    On a CPU the E products [B, M] x [M, 2d] are one plain GEMM [B, M] x [M, E 2d] of the experts'
    encoders side by side (a transposed copy of W): XLA's CPU batched matmul is slower than its
    plain one, and one wide GEMM (and its dW) beats E narrow ones (benchmarks/README.md);
    elsewhere one einsum."""
    enc_w_ExMxH, enc_b_ExH = _encoder_columns(enc_w_ExMxH, enc_b_ExH, means_only)
    if jax.default_backend() == "cpu":
        n_experts, n_items, width = enc_w_ExMxH.shape
        w_MxEH = enc_w_ExMxH.transpose(1, 0, 2).reshape(n_items, n_experts * width)
        h_ExBxH = prec.matmul(xn_BxM, w_MxEH, precision).reshape(-1, n_experts, width).transpose(1, 0, 2)
    else:
        h_ExBxH = prec.einsum("bm,emh->ebh", xn_BxM, enc_w_ExMxH, precision)
    return _split_latent(h_ExBxH + enc_b_ExH[:, None, :], means_only)


def _encoder_columns(enc_w_ExMxH, enc_b_ExH, means_only):
    """The encoder's mean columns only (the first d of 2d) when ``means_only``, else all."""
    if not means_only:
        return enc_w_ExMxH, enc_b_ExH
    latent = enc_b_ExH.shape[-1] // 2
    return enc_w_ExMxH[..., :latent], enc_b_ExH[..., :latent]


def _split_latent(h_ExBxH, means_only):
    if means_only:
        return h_ExBxH, None
    latent = h_ExBxH.shape[-1] // 2
    return h_ExBxH[..., :latent], h_ExBxH[..., latent:]


def encode_experts_sparse(enc_w_ExMxH: jax.Array, enc_b_ExH: jax.Array, xn_BxM: jax.Array,
                          nnz_cap: int, *, means_only: bool = False):
    """:func:`encode_experts` from the rows' nonzeros only: h_uk = sum_{i: xn_ui != 0} xn_ui W_k[i]
    + b_k, a gather of the touched encoder rows and a segment sum per expert (float32 throughout).

    Costs O(E nnz 2d) instead of the dense GEMM's O(E B M 2d); ``nnz_cap`` (static) bounds the
    batch's nonzeros (:meth:`tall_jax.batching.UserData.train_nnz_cap`); a batch holding more
    raises no error but loses the excess, so it must be a true bound.
    """
    enc_w_ExMxH, enc_b_ExH = _encoder_columns(enc_w_ExMxH, enc_b_ExH, means_only)
    batch, n_items = xn_BxM.shape
    rows_F, items_F = jnp.nonzero(xn_BxM != 0, size=nnz_cap, fill_value=(batch, n_items))
    values_Fx1 = xn_BxM.at[rows_F, items_F].get(mode="fill", fill_value=0.0)[:, None]

    def one_expert(w_MxH):
        touched_FxH = w_MxH.at[items_F].get(mode="fill", fill_value=0.0)
        return jax.ops.segment_sum(values_Fx1 * touched_FxH, rows_F, num_segments=batch,
                                   indices_are_sorted=True)

    h_ExBxH = jax.lax.map(one_expert, enc_w_ExMxH) + enc_b_ExH[:, None, :]
    return _split_latent(h_ExBxH, means_only)
