"""Anchors, kernels and neighbourhoods of the local-learning baselines (docs/fidelity.md#loca, #lft, #enlft).

LOCA: arccos distance between MultVAE user embeddings, Epanechnikov kernel, greedy coverage anchors
over every ``stride``-th user. LFT: Jaccard-smoothed profiles and cosine neighbourhoods. EnLFT: the
greedy anchor score with the 1.5 redundancy penalty and the 0.2-cut aggregation weights.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp


# ----------------------------------------------------------------------------------------------- LOCA
def loca_distances(emb_NxD: jax.Array, anchors_A: jax.Array) -> jax.Array:
    """d(u, a) = (2/pi) arccos(clip(cos(e_u, e_a), -1, 1)) as float32 [N, A] (docs/fidelity.md#loca).

    The cosine denominator is floored at 1e-10; an anchor whose dot products with all users sum to
    exactly 0 gets distance 999 to everyone (the authors' guard).
    """
    emb = jnp.asarray(emb_NxD, jnp.float32)
    anchor_AxD = emb[jnp.asarray(anchors_A)]
    dots_NxA = emb @ anchor_AxD.T
    norms_N = jnp.linalg.norm(emb, axis=-1)
    denom_NxA = jnp.maximum(norms_N[:, None] * norms_N[jnp.asarray(anchors_A)][None, :], 1e-10)
    dist_NxA = (2.0 / jnp.pi) * jnp.arccos(jnp.clip(dots_NxA / denom_NxA, -1.0, 1.0))
    return jnp.where(jnp.sum(dots_NxA, axis=0, keepdims=True) == 0, 999.0, dist_NxA)


def epanechnikov(dist: jax.Array, h: float) -> jax.Array:
    """K_h = 3/4 * max(1 - (d/h)^2, 0) (docs/fidelity.md#loca)."""
    return 0.75 * jnp.maximum(1.0 - (dist / h) ** 2, 0.0)


def loca_kernel(emb_NxD: jax.Array, anchors_A: jax.Array, h: float) -> jax.Array:
    """K_h(u, a_t) for every user and anchor: float32 [N, A]."""
    return epanechnikov(loca_distances(emb_NxD, anchors_A), h)


def loca_anchors(emb_NxD: jax.Array, h: float, n_anchors: int = 100, stride: int = 10) -> jax.Array:
    """Greedy coverage anchors (docs/fidelity.md#loca): int32[n_anchors] user ids.

    Rows of the 0/1 coverage matrix are the candidate users 0, stride, 2*stride, ...; W[c, j] = 1 iff
    K_h(j, c) > 0. Each step picks the candidate covering most still-uncovered users (first on ties),
    then marks its users covered. Once all are covered every count is 0 and argmax returns candidate
    0 (user 0), so duplicates appear, as in the authors' code.
    """
    emb = jnp.asarray(emb_NxD, jnp.float32)
    cands_C = jnp.arange(0, emb.shape[0], stride)
    cover_CxN = (loca_kernel(emb, cands_C, h) > 0).T

    def body(t, carry):
        covered_N, chosen_A = carry
        counts_C = jnp.sum(cover_CxN & ~covered_N[None, :], axis=1)
        c = jnp.argmax(counts_C)
        return covered_N | cover_CxN[c], chosen_A.at[t].set(cands_C[c])

    init = (jnp.zeros(emb.shape[0], bool), jnp.zeros(n_anchors, jnp.int32))
    return jax.lax.fori_loop(0, n_anchors, body, init)[1].astype(jnp.int32)


# ------------------------------------------------------------------------------------------ LFT, EnLFT
class Neighbourhoods(NamedTuple):
    """LFT's smoothed profiles, their cosine matrix and each user's neighbour list."""

    profiles_NxM: np.ndarray  # float32 p_u = alpha x_u + (1 - alpha) mean_{v in P_u} x_v
    sim_NxN: np.ndarray  # float32 cosine between smoothed profiles (diagonal 1)
    idx_NxL: np.ndarray  # int32 neighbour ids, ascending, padded with N
    len_N: np.ndarray  # int32 number of neighbours


def _select(row: np.ndarray, threshold: float, min_size: int, max_size: int | None) -> np.ndarray:
    chosen = np.flatnonzero(row > threshold)
    if len(chosen) < min_size:
        chosen = np.argsort(-row, kind="stable")[:min_size]
    elif max_size is not None and len(chosen) > max_size:
        chosen = np.argsort(-row, kind="stable")[:max_size]
    return np.sort(chosen)


def jaccard_dense(train: sp.spmatrix) -> np.ndarray:
    """J(u, v) = |T_u ∩ T_v| / |T_u ∪ T_v| (0-denominators -> 1), diagonal 0, float32 [N, N] (docs/fidelity.md#lft).

    The intersections come from the sparse product X X^T; only the result is dense.
    """
    x = sp.csr_matrix(train, dtype=np.float32, copy=True)
    x.data[:] = 1.0
    inter = (x @ x.T).toarray().astype(np.float32)
    size_N = np.diff(x.indptr).astype(np.float32)
    union = size_N[:, None] + size_N[None, :] - inter
    jac = inter / np.where(union == 0, 1.0, union)
    np.fill_diagonal(jac, 0.0)
    return jac


def lft_neighbourhoods(train: sp.spmatrix, sim_threshold: float = 0.1, cos_threshold: float = 0.2,
                       min_size: int = 10, max_size: int | None = 2000,
                       alpha: float = 0.7) -> Neighbourhoods:
    """LFT's neighbourhoods (docs/fidelity.md#lft).

    P_u = {v: J(u,v) > sim_threshold} (top-``min_size`` by J if smaller); p_u = alpha x_u +
    (1 - alpha) mean_{v in P_u} x_v; S = cosine of the p_u (self included); N_u = {v: S(u,v) >
    cos_threshold}, the top ``min_size`` if smaller, the top ``max_size`` if larger (None: no cap, as
    EnLFT). Top-k ties go to the lower user id.
    """
    x = sp.csr_matrix(train, dtype=np.float32, copy=True)
    x.data[:] = 1.0
    n = x.shape[0]
    if n < min_size:
        raise ValueError(f"lft_neighbourhoods: {n} users is fewer than min_size={min_size}")
    jac = jaccard_dense(x)
    rows, cols = [], []
    for u in range(n):
        p = _select(jac[u], sim_threshold, min_size, None)
        rows.append(np.full(len(p), u))
        cols.append(p)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    counts = np.bincount(rows, minlength=n).astype(np.float32)
    mean_op = sp.csr_matrix((1.0 / counts[rows], (rows, cols)), shape=(n, n), dtype=np.float32)
    del jac
    profiles = (alpha * x + (1.0 - alpha) * (mean_op @ x)).toarray().astype(np.float32)
    unit = profiles / np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
    sim = (unit @ unit.T).astype(np.float32)
    lists = [_select(sim[u], cos_threshold, min_size, max_size) for u in range(n)]
    len_N = np.array([len(ell) for ell in lists], np.int32)
    idx = np.full((n, int(len_N.max())), n, np.int32)
    for u, ell in enumerate(lists):
        idx[u, :len(ell)] = ell
    return Neighbourhoods(profiles, sim, idx, len_N)


def enlft_anchors(S_NxN: jax.Array, n_anchors: int = 100, penalty: float = 1.5) -> jax.Array:
    """EnLFT's greedy anchors (docs/fidelity.md#enlft): int32[n_anchors].

    Step i: score_u = rowsum(S')_u / (N - i) - penalty * sum_{a chosen} S[u, a] / i (no penalty at
    i = 0); pick the argmax; zero column a of the working copy S' and set its row a to -9999.
    """
    S = jnp.asarray(S_NxN, jnp.float32)
    n = S.shape[0]

    def body(i, carry):
        work, penalty_N, chosen = carry
        score = jnp.sum(work, axis=1) / (n - i)
        score = score - jnp.where(i > 0, penalty * penalty_N / jnp.maximum(i, 1), 0.0)
        a = jnp.argmax(score)
        work = work.at[:, a].set(0.0).at[a, :].set(-9999.0)
        return work, penalty_N + S[:, a], chosen.at[i].set(a)

    init = (S, jnp.zeros(n, jnp.float32), jnp.zeros(n_anchors, jnp.int32))
    return jax.lax.fori_loop(0, n_anchors, body, init)[2].astype(jnp.int32)


def enlft_weights(S_NxN: np.ndarray, anchors_A: np.ndarray, cut: float = 0.2) -> np.ndarray:
    """Aggregation weights A[u, a] = S[u, a], zeroed where < cut; a user whose whole row became 0
    gets its raw cosines back (docs/fidelity.md#enlft). float32 [N, A]."""
    raw = np.asarray(S_NxN)[:, np.asarray(anchors_A)].astype(np.float32)
    cut_w = np.where(raw < cut, 0.0, raw).astype(np.float32)
    empty = ~np.any(cut_w != 0, axis=1)
    cut_w[empty] = raw[empty]
    return cut_w
