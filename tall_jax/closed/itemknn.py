"""Item-based kNN with shrunk cosine similarity (docs/closed_forms.md#itemknn).

    sim_ij = x_i · x_j / (||x_i|| ||x_j|| + h)   (x_i: item i's column of the binary X, i != j),
    sim_ii = 0,

then for every target item j only its k most similar items i are kept: W_ij = sim_ij if i is among
the top k of column j (ties: lower item id), else 0. A user's scores are s_u = x_u W, i.e.
s_uj = Σ_{i ∈ T_u ∩ N_k(j)} sim_ij (Dacrema et al.'s ItemKNNCF: similarity columns pruned to top-k).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tall_jax.closed.ease import binary
from tall_jax.closed.prune import block_rows, topk_rows


def itemknn_weights(train: sp.spmatrix, k: int, shrink: float, *, dtype: str = "float32",
                    budget_bytes: float = 2e9) -> sp.csr_matrix:
    """W [M, M] (sparse, ``dtype``): the shrunk cosine pruned to each column's top ``k``.

    sim is symmetric, so column j's neighbours are row j's: rows are pruned in dense blocks of the
    co-occurrence matrix XᵀX and the result is transposed."""
    x = binary(train, dtype)
    co = sp.csr_matrix(x.T @ x)
    norm_M = np.sqrt(co.diagonal()).astype(np.float64)

    def rows(lo: int, hi: int) -> np.ndarray:
        sim = co[lo:hi].toarray().astype(np.float64)
        denom = norm_M[lo:hi, None] * norm_M[None, :] + shrink
        sim = np.divide(sim, denom, out=np.zeros_like(sim), where=denom > 0)  # unseen items: 0, not 0/0
        sim[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        return sim

    m = co.shape[0]
    w_t = topk_rows(rows, m, m, int(k), block_rows(m, 8, budget_bytes), np.dtype(dtype))
    return sp.csr_matrix(w_t.T)
