"""Tests for tall_jax.two_tower.data: upsampling, negatives, the synthetic generator."""
import dataclasses

import numpy as np
import scipy.sparse as sp

from tall_jax.two_tower.data import PairSet, positives_of, sample_negatives, upsample_active_users
from tall_jax.two_tower.synthetic import SyntheticConfig, make_synthetic_two_tower


def test_upsampling_adds_disjoint_active_users_and_keeps_random_sample():
    rng = np.random.default_rng(0)
    n = 1000
    active = rng.random(n) < 0.2
    pool = np.arange(0, n, 2)
    random_users = rng.choice(pool, 100, replace=False)
    users, added = upsample_active_users(random_users, pool, active, 30, rng)
    np.testing.assert_array_equal(users[:100], random_users)  # the random sample is intact, in order
    assert len(added) == 30 and len(users) == 130
    assert np.intersect1d(added, random_users).size == 0 and len(np.unique(added)) == 30
    assert active[added].all() and np.isin(added, pool).all()
    # capped at the eligible count
    eligible = np.setdiff1d(pool[active[pool]], random_users)
    _, all_added = upsample_active_users(random_users, pool, active, 10_000, rng)
    np.testing.assert_array_equal(all_added, eligible)


def test_negatives_avoid_positives_and_respect_candidates():
    rng = np.random.default_rng(1)
    pos = sp.random(50, 20, density=0.2, random_state=1, format="csr")
    pos.data[:] = 1
    users = np.arange(50)
    key = users % 2  # even users may see titles 0..9, odd users 10..19
    items_KxA = np.stack([np.arange(10), np.arange(10, 20)])
    neg = sample_negatives(users, 2000, (items_KxA, np.array([10, 10]), key), lambda u, t: np.asarray(pos[u, t]).ravel() > 0, rng)
    assert 0 < len(neg) <= 2000 and np.all(neg.label == 0)
    assert np.all(np.asarray(pos[neg.user, neg.item]).ravel() == 0)
    assert np.all((neg.item >= 10) == (neg.user % 2 == 1))
    p = positives_of(users, pos)
    assert p.n_pos == pos.nnz and np.all(np.asarray(pos[p.user, p.item]).ravel() == 1)


def test_synthetic_generator_is_seeded_and_has_the_paper_imbalances():
    cfg = dataclasses.replace(SyntheticConfig(), n_users=20_000)
    a, b = make_synthetic_two_tower(cfg, 3), make_synthetic_two_tower(cfg, 3)
    np.testing.assert_array_equal(a.train_plain.user, b.train_plain.user)
    np.testing.assert_array_equal(a.user_x, b.user_x)
    c = make_synthetic_two_tower(cfg, 4)
    assert not np.array_equal(a.user_x, c.user_x)
    # each day, plain examples are a prefix of the upsampled set; upsampling enriches positives
    for day in a.days:
        n = len(day.train_plain)
        np.testing.assert_array_equal(day.train_upsampled.user[:n], day.train_plain.user)
        assert day.train_upsampled.n_pos > day.train_plain.n_pos
    # train and test users are disjoint, as are the test days
    train_u = np.unique(a.train_upsampled.user)
    days = [np.unique(d.user) for d in a.test_days]
    assert all(np.intersect1d(train_u, d).size == 0 for d in days)
    assert np.intersect1d(days[0], days[1]).size == 0
    # territories of very different sizes, negatives at about alpha per positive
    sizes = np.bincount(a.user_territory)
    assert sizes.max() / sizes.min() > 8 and len(sizes) == 16 and a.n_groups == 4
    ratio = (len(a.test_days[0]) - a.test_days[0].n_pos) / a.test_days[0].n_pos
    assert 3.5 < ratio <= cfg.alpha
    assert {c["kind"] for c in a.case_titles} == {"local", "global"}
    assert a.info["active_fraction_observed"] < 0.35
