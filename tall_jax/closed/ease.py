"""EASE (Steck 2019, docs/closed_forms.md#ease): the closed-form item-item ridge regression

    B = argmin_B ||X − X B||²_F + λ ||B||²_F   s.t.  diag(B) = 0,

solved by P = (XᵀX + λI)⁻¹ and B = I − P diag(1/diag(P)) (so B_ij = −P_ij / P_jj, B_jj = 0), and
its user-weighted form with G = Xᵀ diag(w) X in place of XᵀX (the minimiser of
Σ_u w_u ||x_u − x_u B||² + λ||B||²). A user's item scores are x_u B.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tall_jax.closed.linalg import spd_inverse_inplace, spd_inverses


def binary(train: sp.spmatrix, dtype: str | np.dtype = "float32") -> sp.csr_matrix:
    """The train matrix as a binary CSR of ``dtype`` (duplicates summed, then every nonzero 1)."""
    x = sp.csr_matrix(train, dtype=np.dtype(dtype), copy=True)
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def gram(train: sp.spmatrix, w_N: np.ndarray | None = None, dtype: str = "float32") -> sp.csr_matrix:
    """G = Xᵀ diag(w) X (w = 1 when None) as a sparse [M, M] matrix of ``dtype``.

    The product is sparse (Σ_u |T_u|² multiply-adds); no dense [N, M] copy is made."""
    x = binary(train, dtype)
    xw = x if w_N is None else sp.diags(np.asarray(w_N, dtype=x.dtype)) @ x
    return sp.csr_matrix(x.T @ xw)


def dense_ridge(gram_MxM: sp.spmatrix | np.ndarray, lam: float, dtype: str = "float32",
                out: np.ndarray | None = None) -> np.ndarray:
    """G + λI as a dense C-ordered [M, M] array of ``dtype`` (written into ``out`` when given)."""
    m = gram_MxM.shape[0]
    if out is None:
        out = np.empty((m, m), dtype=np.dtype(dtype))
    if sp.issparse(gram_MxM):
        out[...] = 0  # csr_todense adds into its output
        sp.csr_matrix(gram_MxM, dtype=out.dtype).toarray(out=out)
    else:
        out[...] = gram_MxM
    out[np.diag_indices(m)] += lam
    return out


def weights_from_inverse(p_MxM: np.ndarray) -> np.ndarray:
    """B = I − P diag(1/diag(P)), written over P (returned): B_ij = −P_ij / P_jj, B_jj = 0."""
    d_M = np.diag(p_MxM).copy()
    p_MxM /= -d_M[None, :]
    np.fill_diagonal(p_MxM, 0.0)
    return p_MxM


def ease_from_gram(gram_MxM: sp.spmatrix | np.ndarray, lam: float, *, dtype: str = "float32",
                   solver: str = "lapack") -> np.ndarray:
    """EASE's B [M, M] (``dtype``) from the Gram G: P = (G + λI)⁻¹, B = I − P diag(1/diag(P)).

    With ``lapack`` one dense [M, M] buffer holds G + λI, then P, then B (in place)."""
    a_MxM = dense_ridge(gram_MxM, lam, dtype)
    if solver == "lapack":
        return weights_from_inverse(spd_inverse_inplace(a_MxM))
    return weights_from_inverse(spd_inverses(a_MxM[None], solver)[0])


def ease(train: sp.spmatrix, lam: float, w_N: np.ndarray | None = None, *, dtype: str = "float32",
         solver: str = "lapack") -> np.ndarray:
    """EASE's B of the train matrix X (user weights ``w_N`` as given; None = unweighted)."""
    return ease_from_gram(gram(train, w_N, dtype), lam, dtype=dtype, solver=solver)
