"""RP3beta (Paudel et al. 2016, as in Dacrema et al.'s reference RP3betaRecommender;
docs/closed_forms.md#rp3beta).

With the binary X, user degrees deg(u) = |T_u| and item degrees deg(i) = |{u : x_ui = 1}|:

    P_ui = (x_ui / deg(u))^α,   P_iu = (x_ui / deg(i))^α,
    W_ij = (Σ_u P_iu P_uj) · deg(j)^(−β)   (item -> user -> item, the target penalised by popularity),
    W_ii = 0,

then every row i keeps its k largest entries (ties: lower item id) and, with ``normalize``, is
divided by its sum (l1). Items or users of degree 0 contribute nothing. Scores: s_u = x_u W.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tall_jax.closed.ease import binary
from tall_jax.closed.prune import block_rows, topk_rows


def _inverse_power(deg: np.ndarray, power: float) -> np.ndarray:
    out = np.zeros(deg.shape, np.float64)
    out[deg > 0] = deg[deg > 0] ** -power
    return out


def rp3beta_walk(train: sp.spmatrix, alpha: float, dtype: str = "float32") -> sp.csr_matrix:
    """The two-step walk A_ij = Σ_u P_iu P_uj (sparse [M, M], before the β penalty)."""
    x = binary(train, dtype)
    deg_u = np.diff(x.indptr).astype(np.float64)
    deg_i = np.bincount(x.indices, minlength=x.shape[1]).astype(np.float64)
    p_ui = sp.diags(_inverse_power(deg_u, alpha).astype(x.dtype)) @ x
    p_iu = (x @ sp.diags(_inverse_power(deg_i, alpha).astype(x.dtype))).T
    return sp.csr_matrix(p_iu @ p_ui)


def rp3beta_weights(train: sp.spmatrix, alpha: float, beta: float, k: int, normalize: bool = False,
                    *, dtype: str = "float32", budget_bytes: float = 2e9,
                    walk: sp.csr_matrix | None = None) -> sp.csr_matrix:
    """W [M, M] (sparse, ``dtype``) of RP3beta; ``walk`` (from :func:`rp3beta_walk` with the same
    α) skips recomputing the two-step walk."""
    walk = rp3beta_walk(train, alpha, dtype) if walk is None else walk
    deg_i = np.asarray((binary(train, dtype) != 0).sum(axis=0)).ravel().astype(np.float64)
    penalty_M = _inverse_power(deg_i, beta)

    def rows(lo: int, hi: int) -> np.ndarray:
        w = walk[lo:hi].toarray().astype(np.float64) * penalty_M[None, :]
        w[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        return w

    m = walk.shape[0]
    w = topk_rows(rows, m, m, int(k), block_rows(m, 8, budget_bytes), np.dtype(dtype))
    if normalize:
        sums_M = np.asarray(w.sum(axis=1)).ravel()
        w = sp.csr_matrix(sp.diags(np.where(sums_M > 0, 1.0 / np.where(sums_M > 0, sums_M, 1.0), 0.0)
                                   .astype(w.dtype)) @ w)
    return w
