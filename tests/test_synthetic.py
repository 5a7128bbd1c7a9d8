"""The synthetic dataset: shape, determinism, community structure, visible mainstream bias."""
from __future__ import annotations

import numpy as np
import pytest

from tall_jax import protocol
from tall_jax.datasets import make_synthetic


@pytest.fixture(scope="module")
def default_ds():
    return make_synthetic(seed=0)


def test_default_size_density_and_min_interactions(default_ds):
    ds = default_ds
    assert (ds.n_users, ds.n_items) == (1500, 1000)
    density = ds.n_interactions / (ds.n_users * ds.n_items)
    assert 0.03 <= density <= 0.05
    full = ds.train + ds.valid + ds.test
    assert np.diff(full.indptr).min() >= 10
    assert full.max() == 1.0  # parts disjoint
    c = ds.counts()
    assert c["users_without_valid"] == 0 and c["users_without_test"] == 0


def test_deterministic_per_seed():
    a, b, c = make_synthetic(200, 100, seed=1), make_synthetic(200, 100, seed=1), make_synthetic(200, 100, seed=2)
    for x, y in zip((a.train, a.valid, a.test), (b.train, b.valid, b.test)):
        assert (x != y).nnz == 0
    assert (a.train != c.train).nnz > 0


def test_community_sizes_skewed(default_ds):
    sizes = np.array(default_ds.info["community_sizes"])
    assert sizes.sum() == 1500
    assert sizes.max() >= 10 * np.median(sizes)  # a few large, many small


def test_item_popularity_skewed(default_ds):
    pop = np.sort(np.asarray((default_ds.train).sum(axis=0)).ravel())[::-1]
    assert pop[:100].sum() >= 0.3 * pop.sum()  # top 10% of items hold >= 30% of interactions


def test_mainstream_bias_visible(default_ds):
    ms = protocol.mainstream_scores(default_ds.train)
    community = np.array(default_ds.info["user_community"])
    sizes = np.bincount(community)
    big = community == np.argmax(sizes)
    small = sizes[community] <= np.median(sizes)
    assert ms[big].mean() > 1.5 * ms[small].mean()
    groups = protocol.user_groups(ms)
    # The high-MS group is dominated by the largest community, the low group is not.
    assert big[groups == 4].mean() > 0.8 and big[groups == 0].mean() < 0.3


def test_rejects_tiny_sizes():
    with pytest.raises(ValueError, match="n_items"):
        make_synthetic(n_users=10, n_items=5)
