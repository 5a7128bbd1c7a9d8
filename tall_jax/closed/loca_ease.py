"""LOCA-EASE (docs/closed_forms.md#loca_ease): LOCA's anchors and kernels (docs/fidelity.md#loca)
with a kernel-weighted EASE as each local model.

Local model a: G_a = Xᵀ diag(κ^train_·a) X + λI, B_a = EASE of G_a. Scores, as LOCA mixes its local
models (:func:`tall_jax.baselines.scoring.loca_scores`):

    s_u = Σ_a κ^test_ua (x_u B_a) / Σ_a κ^test_ua     if Σ_a κ^test_ua > 0,
    s_u = x_u B                                        otherwise (the global EASE, same λ).

The user embedding the kernels are computed on needs no neural model: e_u = x_u V_d, the train row
projected on the d leading right singular vectors of X (PureSVD's user factor U_d Σ_d), the linear
analogue of MultVAE's linear encoder that LOCA uses. LOCA's greedy anchors repeat user 0 once every
user is covered; a repeated anchor has the same local model, so each distinct anchor is solved once
and weighted by its multiplicity (the same mixture, exactly).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from tall_jax.baselines.neighbours import loca_anchors, loca_kernel
from tall_jax.closed.ease import binary, dense_ridge, ease_from_gram, gram, weights_from_inverse
from tall_jax.closed.linalg import spd_inverses


class Kernels(NamedTuple):
    """LOCA's anchors (with repeats) and the kernels of its distinct anchors."""

    anchors_A: np.ndarray  # int32[n_local]: the greedy anchors, repeats included
    distinct_D: np.ndarray  # int32[D]: distinct anchors, ascending
    count_D: np.ndarray  # int[D]: how often each distinct anchor was chosen
    train_NxD: np.ndarray  # float32: K_{train_h}(u, a), the local models' user weights
    test_NxD: np.ndarray  # float32: K_{test_h}(u, a) x count: the scoring weights


def svd_embeddings(train: sp.spmatrix, d: int) -> np.ndarray:
    """e_u = x_u V_d, float32 [N, d]: V_d the d leading right singular vectors of the binary X
    (ARPACK with a fixed start vector, so the result is deterministic; d is capped at min(N, M) − 1)."""
    x = binary(train, np.float64)
    d = int(min(d, min(x.shape) - 1))
    v0 = np.random.default_rng(0).uniform(-1.0, 1.0, size=min(x.shape))
    _, _, vt = sla.svds(x, k=d, v0=v0)
    return np.asarray(x @ vt.T, np.float32)


def loca_kernels(emb_NxD: np.ndarray, n_local: int, stride: int, train_h: float,
                 test_h: float) -> Kernels:
    """LOCA's greedy coverage anchors at the test bandwidth and both kernels (docs/fidelity.md#loca)."""
    anchors = np.asarray(loca_anchors(emb_NxD, test_h, n_local, stride), np.int32)
    distinct, count = np.unique(anchors, return_counts=True)
    k_train = np.asarray(loca_kernel(emb_NxD, distinct, train_h), np.float32)
    k_test = np.array(loca_kernel(emb_NxD, distinct, test_h), np.float32)  # writable
    k_test *= count[None, :].astype(np.float32)
    return Kernels(anchors, distinct.astype(np.int32), count, k_train, k_test)


def mixture_rows(train: sp.spmatrix, k_train_NxA: np.ndarray, k_test_NxA: np.ndarray,
                 lams: Sequence[float], *, dtype: str = "float32", solver: str = "lapack", chunk: int = 1,
                 global_b: Callable[[float], np.ndarray] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """LOCA-EASE scores s_u [N, M] (float32) for each λ in ``lams``, from the local models' user
    weights ``k_train_NxA`` and scoring weights ``k_test_NxA``.

    Local Grams are built once per anchor and solved for every λ; ``chunk`` anchors' G_a + λI are
    inverted in one batched call (:func:`tall_jax.closed.linalg.spd_inverses`). ``global_b(λ)``
    gives the fallback EASE's B for users no anchor covers (default: solved here)."""
    x = binary(train, dtype)
    n, m = x.shape
    n_anchors = k_train_NxA.shape[1]
    num = [np.zeros((n, m), np.float32) for _ in lams]
    den_N = k_test_NxA.sum(axis=1, dtype=np.float64)
    for lo in range(0, n_anchors, chunk):
        anchors = range(lo, min(lo + chunk, n_anchors))
        grams = [gram(x, k_train_NxA[:, a], dtype) for a in anchors]
        stack = np.empty((len(grams), m, m), np.dtype(dtype))
        for j, lam in enumerate(lams):
            for i, g in enumerate(grams):
                dense_ridge(g, lam, dtype, out=stack[i])
            inverses = spd_inverses(stack, solver)
            for i, a in enumerate(anchors):
                users = np.flatnonzero(k_test_NxA[:, a] > 0)
                b_MxM = weights_from_inverse(inverses[i])
                num[j][users] += k_test_NxA[users, a, None] * np.asarray(x[users] @ b_MxM, np.float32)
        if progress is not None:
            progress(len(anchors))
    uncovered = np.flatnonzero(den_N <= 0)
    covered = den_N > 0
    for j, lam in enumerate(lams):
        num[j][covered] /= den_N[covered, None].astype(np.float32)
        if uncovered.size:
            b_MxM = (global_b(lam) if global_b is not None
                     else ease_from_gram(gram(x, None, dtype), lam, dtype=dtype, solver=solver))
            num[j][uncovered] = np.asarray(x[uncovered] @ b_MxM, np.float32)
    return num
