"""ItemKNN, RP3beta and most-popular against brute-force Python loops on tiny data, and the top-k
pruning rule (ties: the lower column) against a sort."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from tall_jax.closed.itemknn import itemknn_weights
from tall_jax.closed.pop import popularity
from tall_jax.closed.prune import topk_mask
from tall_jax.closed.rp3beta import rp3beta_weights


def _data(n=40, m=18, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, m)) < density
    x[:, 5] = False  # an item nobody has: degree 0
    x[3] = False  # a user without train items
    return sp.csr_matrix(x.astype(np.float32)), x.astype(int)


def _top(values: dict[int, float], k: int) -> list[int]:
    """The k largest positive values' keys; ties to the lower key."""
    order = sorted((i for i, v in values.items() if v > 0), key=lambda i: (-values[i], i))
    return order[:k]


def _itemknn_scores(x, k, shrink):
    n, m = x.shape
    co = [[sum(x[u, i] * x[u, j] for u in range(n)) for j in range(m)] for i in range(m)]
    scores = np.zeros((n, m))
    for j in range(m):  # target item j: its k most similar items
        sims = {i: co[i][j] / (math.sqrt(co[i][i]) * math.sqrt(co[j][j]) + shrink) if co[i][j] else 0.0
                for i in range(m) if i != j}
        for i in _top(sims, k):
            for u in range(n):
                scores[u, j] += x[u, i] * sims[i]
    return scores


@pytest.mark.parametrize("k,shrink", [(3, 0.0), (5, 2.0), (100, 10.0)])
def test_itemknn_equals_brute_force(k, shrink):
    csr, x = _data()
    w = itemknn_weights(csr, k, shrink, dtype="float64", budget_bytes=5_000)  # several row blocks
    assert sp.issparse(w) and np.all(np.asarray((w != 0).sum(axis=0)).ravel() <= k)
    np.testing.assert_allclose((csr @ w).toarray(), _itemknn_scores(x, k, shrink), rtol=1e-12, atol=1e-14)


def _rp3beta_scores(x, alpha, beta, k, normalize):
    n, m = x.shape
    deg_u = x.sum(axis=1)
    deg_i = x.sum(axis=0)
    w = np.zeros((m, m))
    for i in range(m):
        row = {}
        for j in range(m):
            if i == j or deg_i[j] == 0:
                continue
            walk = sum((x[u, i] / deg_i[i]) ** alpha * (x[u, j] / deg_u[u]) ** alpha
                       for u in range(n) if x[u, i] and x[u, j])
            row[j] = walk * deg_i[j] ** -beta
        kept = _top(row, k)
        total = sum(row[j] for j in kept)
        for j in kept:
            w[i, j] = row[j] / total if normalize else row[j]
    return x @ w


@pytest.mark.parametrize("alpha,beta,k,normalize", [(1.0, 0.0, 100, False), (1.0, 0.5, 4, False),
                                                    (0.7, 0.3, 6, True)])
def test_rp3beta_equals_brute_force(alpha, beta, k, normalize):
    csr, x = _data(seed=1)
    w = rp3beta_weights(csr, alpha, beta, k, normalize, dtype="float64", budget_bytes=5_000)
    np.testing.assert_allclose((csr @ w).toarray(), _rp3beta_scores(x, alpha, beta, k, normalize),
                               rtol=1e-9, atol=1e-12)


def test_popularity_is_the_train_share_of_users():
    csr, x = _data()
    np.testing.assert_allclose(popularity(csr), x.sum(axis=0) / x.shape[0], rtol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_topk_mask_against_a_sort(ties):
    rng = np.random.default_rng(0)
    v = rng.integers(-1, 4, (30, 12)).astype(float) if ties else rng.normal(size=(30, 12))
    for k in (1, 3, 12, 20):
        got = topk_mask(v, k)
        for row, keep in zip(v, got):
            want = _top(dict(enumerate(row)), k)
            assert sorted(np.flatnonzero(keep).tolist()) == sorted(want)
