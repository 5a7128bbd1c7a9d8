"""Inverses of symmetric positive definite matrices, the one costly step of every EASE.

Two solvers (docs/closed_forms.md#execution): ``lapack`` inverts on the host in place (LAPACK
potrf, then potri: Cholesky factor, then the inverse from it; n^3 flops, no second n x n buffer),
the fastest on a CPU; ``jax`` inverts a batch [K, n, n] on the default device in one call
(``jnp.linalg.cholesky`` and ``cho_solve`` against the identity), for an accelerator.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import lapack

_MIRROR_BLOCK = 1024  # rows mirrored at a time: bounds the temporary to 1024 x n


def resolve_solver(solver: str, dtype: str) -> str:
    """``auto`` -> ``jax`` on an accelerator (float32, or float64 with x64 enabled), else ``lapack``;
    ValueError for ``jax`` with float64 while JAX runs without x64."""
    x64 = bool(jax.config.jax_enable_x64)
    if solver == "auto":
        on_device = jax.default_backend() != "cpu"
        return "jax" if on_device and (dtype == "float32" or x64) else "lapack"
    if solver == "jax" and dtype == "float64" and not x64:
        raise ValueError("solver 'jax' with dtype float64 needs JAX_ENABLE_X64=1; use solver 'lapack'")
    if solver not in ("lapack", "jax"):
        raise ValueError(f"solver must be 'auto', 'lapack' or 'jax', got {solver!r}")
    return solver


def mirror_lower(a_NxN: np.ndarray, block: int = _MIRROR_BLOCK) -> np.ndarray:
    """a[i, j] = a[j, i] for every i < j: the upper triangle copied from the lower one, in place."""
    n = a_NxN.shape[0]
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        diag = a_NxN[r0:r1, r0:r1]
        diag[...] = np.tril(diag) + np.tril(diag, -1).T
        a_NxN[r0:r1, r1:] = a_NxN[r1:, r0:r1].T
    return a_NxN


def spd_inverse_inplace(a_NxN: np.ndarray) -> np.ndarray:
    """A⁻¹ of a symmetric positive definite C-ordered float32/float64 matrix, written over ``a_NxN``
    (returned). ValueError if A is not positive definite.

    A is symmetric, so its C-ordered buffer read in Fortran order is A again: LAPACK factors
    Aᵀ = A in place (potrf, upper factor of the Fortran view = lower triangle of the C view), inverts
    from the factor in place (potri), and the other triangle is mirrored. No n x n copy is made.
    """
    if a_NxN.ndim != 2 or a_NxN.shape[0] != a_NxN.shape[1] or not a_NxN.flags.c_contiguous:
        raise ValueError(f"spd_inverse_inplace needs a square C-contiguous matrix, got {a_NxN.shape}")
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a_NxN,))
    fortran_view = a_NxN.T
    factor, info = potrf(fortran_view, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise ValueError(f"G + lambda I is not positive definite (potrf info {info}); raise lambda")
    inverse, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"inverting the Cholesky factor failed (potri info {info})")
    if not np.shares_memory(inverse, a_NxN):  # LAPACK wrapper copied after all: keep the contract
        a_NxN[...] = inverse.T
    return mirror_lower(a_NxN)


@jax.jit
def spd_inverse_batched(a_KxNxN: jax.Array) -> jax.Array:
    """A_k⁻¹ of each symmetric positive definite A_k: L_k = chol(A_k), A_k⁻¹ = L_k⁻ᵀ L_k⁻¹ I via
    ``cho_solve``, symmetrised as (P + Pᵀ)/2 against rounding; NaN where A_k is not positive definite."""
    chol_KxNxN = jnp.linalg.cholesky(a_KxNxN)
    eye_KxNxN = jnp.broadcast_to(jnp.eye(a_KxNxN.shape[-1], dtype=a_KxNxN.dtype), a_KxNxN.shape)
    inv_KxNxN = jax.scipy.linalg.cho_solve((chol_KxNxN, True), eye_KxNxN)
    return 0.5 * (inv_KxNxN + jnp.swapaxes(inv_KxNxN, -1, -2))


def spd_inverses(a_KxNxN: np.ndarray, solver: str) -> np.ndarray:
    """A_k⁻¹ for a stack of SPD matrices: in place one by one (``lapack``) or in one device call
    (``jax``, copied back to the host). ValueError if one is not positive definite."""
    if solver == "lapack":
        for a_NxN in a_KxNxN:
            spd_inverse_inplace(a_NxN)
        return a_KxNxN
    out = np.array(spd_inverse_batched(jnp.asarray(a_KxNxN)))  # writable: B overwrites P
    if not np.all(np.isfinite(out)):
        raise ValueError("G + lambda I is not positive definite (Cholesky gave NaN); raise lambda")
    return out.astype(a_KxNxN.dtype, copy=False)
