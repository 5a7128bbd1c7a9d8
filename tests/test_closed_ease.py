"""EASE and its weighted form against NumPy float64 closed forms and the optimality conditions of the
constrained problem; the in-place LAPACK inverse and the batched JAX inverse against np.linalg.inv."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tall_jax.closed.ease import binary, dense_ridge, ease, ease_from_gram, gram
from tall_jax.closed.linalg import mirror_lower, resolve_solver, spd_inverse_inplace, spd_inverses


def _data(n=60, m=25, density=0.25, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, m)) < density).astype(np.float64)
    x[0, :3] = 1.0  # a user with a duplicate entry below: the binary matrix counts it once
    coo = sp.coo_matrix(x)
    rows = np.concatenate([coo.row, [0]])
    cols = np.concatenate([coo.col, [0]])
    return sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=x.shape), x


def _reference(x_NxM, lam, w_N=None):
    """B = I − P diag(1/diag P), P = (Xᵀ diag(w) X + λI)⁻¹ in float64 (np.linalg.inv)."""
    w_N = np.ones(len(x_NxM)) if w_N is None else w_N
    p = np.linalg.inv(x_NxM.T @ (w_N[:, None] * x_NxM) + lam * np.eye(x_NxM.shape[1]))
    return np.eye(len(p)) - p / np.diag(p)[None, :]


@pytest.mark.parametrize("lam", [0.5, 10.0, 300.0])
def test_ease_equals_the_float64_closed_form(lam):
    csr, x = _data()
    b = ease(csr, lam, dtype="float64")
    np.testing.assert_allclose(b, _reference(x, lam), rtol=1e-10, atol=1e-12)
    b32 = ease(csr, lam)
    assert b32.dtype == np.float32
    np.testing.assert_allclose(b32, b, rtol=0, atol=2e-5 * np.abs(b).max())


def test_ease_satisfies_the_optimality_conditions():
    """min ||X − XB||² + λ||B||² s.t. diag(B) = 0. Lagrangian with 2 Σ_j μ_j B_jj; stationarity:
    −2Xᵀ(X − XB) + 2λB + 2 diag(μ) = 0, i.e. (G + λI)B − G = −diag(μ): zero off the diagonal,
    anything on it. The problem is convex, so these conditions make B the minimiser; a feasible
    perturbation must not lower the objective."""
    csr, x = _data(seed=3)
    lam = 7.0
    b = ease(csr, lam, dtype="float64")
    g = x.T @ x
    residual = (g + lam * np.eye(len(g))) @ b - g
    off = residual - np.diag(np.diag(residual))
    assert np.abs(np.diag(b)).max() == 0.0
    assert np.abs(off).max() < 1e-9 * np.abs(g).max()
    objective = lambda bb: np.sum((x - x @ bb) ** 2) + lam * np.sum(bb ** 2)  # noqa: E731
    rng = np.random.default_rng(0)
    for _ in range(5):
        e = rng.normal(size=b.shape) * 1e-3
        np.fill_diagonal(e, 0.0)
        assert objective(b + e) > objective(b)


def test_weighted_ease_with_unit_weights_is_ease_and_weight_two_is_a_duplicate_user():
    csr, x = _data(seed=1)
    lam = 5.0
    np.testing.assert_allclose(ease(csr, lam, np.ones(csr.shape[0]), dtype="float64"),
                               ease(csr, lam, dtype="float64"), rtol=1e-12, atol=1e-14)
    w = np.ones(csr.shape[0])
    w[4] = 2.0
    duplicated = sp.vstack([csr, csr[4]]).tocsr()
    np.testing.assert_allclose(ease(csr, lam, w, dtype="float64"), ease(duplicated, lam, dtype="float64"),
                               rtol=1e-10, atol=1e-13)
    w = np.random.default_rng(0).uniform(0.0, 3.0, csr.shape[0])
    np.testing.assert_allclose(ease(csr, lam, w, dtype="float64"), _reference(x, lam, w),
                               rtol=1e-9, atol=1e-12)


def test_gram_is_binary_and_sparse():
    csr, x = _data()
    g = gram(csr, dtype="float64")
    assert sp.issparse(g)
    np.testing.assert_array_equal(g.toarray(), x.T @ x)
    assert binary(csr).max() == 1.0
    np.testing.assert_array_equal(dense_ridge(g, 2.5, "float64"), x.T @ x + 2.5 * np.eye(x.shape[1]))


def test_lapack_inverse_in_place_and_jax_batched_inverse():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 40))
    spd = a @ a.T + 40 * np.eye(40)
    buf = spd.astype(np.float64).copy()
    out = spd_inverse_inplace(buf)
    assert np.shares_memory(out, buf)
    np.testing.assert_allclose(out, np.linalg.inv(spd), rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(out, out.T)
    stack = np.stack([spd, spd + 5 * np.eye(40)]).astype(np.float32)
    ref = np.linalg.inv(stack.astype(np.float64))
    for solver in ("lapack", "jax"):
        got = spd_inverses(stack.copy(), solver)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    with pytest.raises(ValueError, match="positive definite"):
        spd_inverse_inplace(-np.eye(4))
    with pytest.raises(ValueError, match="positive definite"):
        spd_inverses(-np.eye(4, dtype=np.float32)[None], "jax")


def test_mirror_lower_in_blocks():
    a = np.arange(49.0).reshape(7, 7)
    want = np.tril(a) + np.tril(a, -1).T
    np.testing.assert_array_equal(mirror_lower(a.copy(), block=3), want)


def test_jax_solver_ease_matches_lapack_and_solver_resolution():
    csr, _ = _data(seed=2)
    g = gram(csr)
    np.testing.assert_allclose(ease_from_gram(g, 20.0, solver="jax"), ease_from_gram(g, 20.0), atol=1e-5)
    assert resolve_solver("lapack", "float64") == "lapack"
    assert resolve_solver("auto", "float32") in ("lapack", "jax")
    with pytest.raises(ValueError, match="solver"):
        resolve_solver("cuda", "float32")
