"""LOCA-EASE: one anchor covering everyone with kernel 1 is EASE; the mixture against a float64
loop over local models; repeated anchors; the fallback; the SVD embedding against numpy's SVD."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tall_jax.baselines.neighbours import loca_kernel
from tall_jax.closed import loca_ease
from tall_jax.closed.ease import ease


def _data(n=45, m=16, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, m)) < 0.3).astype(np.float64)
    return sp.csr_matrix(x.astype(np.float32)), x


def test_one_anchor_with_kernel_one_is_ease():
    csr, x = _data()
    ones = np.ones((x.shape[0], 1), np.float32)
    for solver in ("lapack", "jax"):
        rows = loca_ease.mixture_rows(csr, ones, ones, [3.0, 30.0], solver=solver)
        for lam, r in zip([3.0, 30.0], rows):
            np.testing.assert_allclose(r, x @ ease(csr, lam, dtype="float64"), atol=2e-5)


def test_mixture_equals_a_loop_over_local_models_with_fallback():
    csr, x = _data(seed=1)
    n, m = x.shape
    rng = np.random.default_rng(0)
    k_train = rng.uniform(0, 0.75, (n, 3)) * (rng.random((n, 3)) < 0.8)
    k_test = rng.uniform(0, 0.75, (n, 3)) * (rng.random((n, 3)) < 0.5)
    k_test[[2, 9]] = 0.0  # users no anchor covers
    lam = 5.0
    got = loca_ease.mixture_rows(csr, k_train.astype(np.float32), k_test.astype(np.float32), [lam],
                                 dtype="float64", chunk=2)[0]
    local = []
    for a in range(3):  # B_a = EASE of Xᵀ diag(κ_a) X + λI, float64 from scratch
        p = np.linalg.inv(x.T @ (k_train[:, a, None] * x) + lam * np.eye(m))
        local.append(np.eye(m) - p / np.diag(p)[None, :])
    glob = x @ ease(csr, lam, dtype="float64")
    for u in range(n):
        k = k_test[u].astype(np.float32).astype(np.float64)
        want = glob[u] if k.sum() == 0 else sum(k[a] * (x[u] @ local[a]) for a in range(3)) / k.sum()
        np.testing.assert_allclose(got[u], want, rtol=1e-5, atol=1e-6)


def test_a_repeated_anchor_is_its_multiplicity():
    csr, x = _data(seed=2)
    rng = np.random.default_rng(1)
    k_train = rng.uniform(0.1, 0.7, (x.shape[0], 2)).astype(np.float32)
    k_test = rng.uniform(0.1, 0.7, (x.shape[0], 2)).astype(np.float32)
    repeated = loca_ease.mixture_rows(csr, k_train[:, [0, 0, 1]], k_test[:, [0, 0, 1]], [4.0])[0]
    weighted = loca_ease.mixture_rows(csr, k_train, k_test * np.float32([2, 1]), [4.0])[0]
    np.testing.assert_allclose(repeated, weighted, rtol=1e-5, atol=1e-6)


def test_kernels_count_repeated_anchors():
    emb = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32) + 1.0
    kern = loca_ease.loca_kernels(emb, n_local=12, stride=5, train_h=1.0, test_h=0.8)
    assert kern.anchors_A.size == 12 and kern.count_D.sum() == 12
    np.testing.assert_array_equal(kern.distinct_D, np.unique(kern.anchors_A))
    np.testing.assert_allclose(kern.train_NxD, np.asarray(loca_kernel(emb, kern.distinct_D, 1.0)))
    np.testing.assert_allclose(kern.test_NxD,
                               np.asarray(loca_kernel(emb, kern.distinct_D, 0.8)) * kern.count_D, rtol=1e-6)


def test_svd_embedding_spans_the_leading_singular_vectors():
    csr, x = _data(n=30, m=12, seed=3)
    emb = loca_ease.svd_embeddings(csr, 4).astype(np.float64)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:4].T
    np.testing.assert_allclose(emb @ emb.T, proj @ proj.T, rtol=1e-4, atol=1e-4)  # signs cancel
    np.testing.assert_array_equal(loca_ease.svd_embeddings(csr, 4), loca_ease.svd_embeddings(csr, 4))
