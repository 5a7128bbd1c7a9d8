"""k-core filter, re-indexing and the seeded split (spec §1.2-§1.4)."""
from __future__ import annotations

import numpy as np
import pytest

from tall_jax.datasets.split import kcore_filter, random_split, reindex_first_appearance, to_csr


def _pairs(counts_per_user, n_items, seed=0):
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u, c in enumerate(counts_per_user):
        users += [u] * c
        items += list(rng.choice(n_items, c, replace=False))
    return np.array(users), np.array(items)


def test_kcore_loop_never_runs_when_all_users_above_threshold():
    # Every user has 3 items; item 9 appears once. With loop threshold 2 nothing is dropped,
    # even though item 9 is below the item threshold (the test is on the loop condition).
    users = np.repeat([10, 20, 30], 3)
    items = np.array([1, 2, 3, 1, 2, 3, 1, 2, 9])
    keep, stats = kcore_filter(users, items, loop_threshold=2, user_threshold=2, item_threshold=1)
    assert keep.all() and stats["rounds"] == 0
    assert stats["before"] == stats["after"] == {"users": 3, "items": 4, "interactions": 9}


def test_kcore_hand_worked_two_rounds():
    # thresholds (2,2,1): keep users with > 2 items, items with > 1 user.
    # user a: 1,2,3 ; user b: 1,2,4 ; user c: 1,5 (2 items -> dropped in round 1).
    # After dropping c, item counts: 1:2, 2:2, 3:1, 4:1, 5:0 -> items 3,4 dropped.
    # Users now a:{1,2}, b:{1,2} -> min 2 <= 2, round 2 drops both users -> empty.
    users = np.array(["a"] * 3 + ["b"] * 3 + ["c"] * 2)
    items = np.array([1, 2, 3, 1, 2, 4, 1, 5])
    keep, stats = kcore_filter(users, items, loop_threshold=2, user_threshold=2, item_threshold=1)
    assert not keep.any() and stats["rounds"] == 2
    # With item threshold 0 the first round leaves a and b with 3 items each and the loop stops.
    keep, stats = kcore_filter(users, items, loop_threshold=2, user_threshold=2, item_threshold=0)
    np.testing.assert_array_equal(keep, [1, 1, 1, 1, 1, 1, 0, 0])
    assert stats["rounds"] == 1 and stats["after"] == {"users": 2, "items": 4, "interactions": 6}


def test_kcore_loop_threshold_differs_from_user_threshold():
    # Yelp-like (8,8,19) semantics, scaled: loop 1, user 1, item 1 -> users with 1 item go,
    # items seen by one user go, then recount.
    users = np.array([0, 0, 1, 1, 2])
    items = np.array([0, 1, 0, 1, 2])
    keep, _ = kcore_filter(users, items, loop_threshold=1, user_threshold=1, item_threshold=1)
    np.testing.assert_array_equal(keep, [1, 1, 1, 1, 0])


def test_reindex_first_appearance():
    new, raw = reindex_first_appearance(np.array([50, 7, 50, 3, 7, 9]))
    np.testing.assert_array_equal(new, [0, 1, 0, 2, 1, 3])
    np.testing.assert_array_equal(raw, [50, 7, 3, 9])


def _split(seed, n_users=60, n_items=40):
    counts = np.random.default_rng(123).integers(3, 20, n_users)
    users, items = _pairs(counts, n_items)
    return (users, items), random_split(users, items, n_users, n_items, seed=seed)


def test_split_disjoint_complete_and_proportions():
    (users, items), (train, valid, test) = _split(seed=0)
    r = users.size
    full = to_csr(users, items, 60, 40)
    assert (train + valid + test != full).nnz == 0  # union is everything, no pair twice
    assert train.multiply(valid).nnz == 0 and train.multiply(test).nnz == 0
    assert valid.multiply(test).nnz == 0
    assert train.dtype == np.float32 and set(np.unique(train.data)) == {1.0}
    n_valid_users = np.diff(valid.indptr)
    n_test_users = np.diff(test.indptr)
    assert (n_valid_users >= 1).all() and (n_test_users >= 1).all()
    # Global draw gives int(0.1R)/int(0.2R); the repair adds at most one per user.
    n_repaired_v = valid.nnz - int(0.1 * r)
    n_repaired_t = test.nnz - int(0.2 * r)
    assert 0 <= n_repaired_v <= 60 and 0 <= n_repaired_t <= 60


def test_split_is_deterministic_and_seed_dependent():
    _, a = _split(seed=5)
    _, b = _split(seed=5)
    _, c = _split(seed=6)
    for x, y in zip(a, b):
        assert (x != y).nnz == 0
    assert any((x != y).nnz for x, y in zip(a, c))


def test_split_independent_of_input_order():
    (users, items), a = _split(seed=1)
    perm = np.random.default_rng(0).permutation(users.size)
    b = random_split(users[perm], items[perm], 60, 40, seed=1)
    for x, y in zip(a, b):
        assert (x != y).nnz == 0


def test_split_exact_proportions_without_repair():
    # Dense users (100 items each) never need repair: sizes are exactly int(0.1R), int(0.2R).
    users, items = _pairs([100] * 50, 120)
    train, valid, test = random_split(users, items, 50, 120, seed=0)
    r = users.size
    assert (valid.nnz, test.nnz, train.nnz) == (int(0.1 * r), int(0.2 * r), r - int(0.1 * r) - int(0.2 * r))


def test_split_repair_with_too_few_items_is_logged(caplog):
    users = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    items = np.arange(11)
    with caplog.at_level("WARNING"):
        _, valid, test = random_split(users, items, 2, 11, seed=0)
    assert valid[0].nnz + test[0].nnz <= 1
    assert "left without" in caplog.text


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_repair_moves_from_train(seed):
    # Many users with 5-7 items: lots of repairs, train never loses an unrelated pair.
    counts = np.random.default_rng(seed).integers(5, 8, 200)
    users, items = _pairs(counts, 10, seed=seed)
    train, valid, test = random_split(users, items, 200, 10, seed=seed)
    assert (np.diff(valid.indptr) >= 1).all() and (np.diff(test.indptr) >= 1).all()
    assert train.nnz + valid.nnz + test.nnz == users.size


def test_iterative_kcore_leaves_every_user_and_item_at_their_thresholds():
    from tall_jax.datasets.split import kcore_iterative

    # Every user has 3 items, so the authors' loop (2, 2, 1) never runs and keeps items 4 and 9 (one
    # user each). The 3/2-core drops them, then user 30 (1 item left), then re-checks item 1 (2
    # users): users 10 and 20 with items 1, 2, 3 remain.
    users = np.array([10, 10, 10, 20, 20, 20, 30, 30, 30])
    items = np.array([1, 2, 3, 1, 2, 3, 1, 4, 9])
    keep_loop, _ = kcore_filter(users, items, loop_threshold=2, user_threshold=2, item_threshold=1)
    assert keep_loop.all()  # the authors' rule keeps item 9 (1 interaction)
    keep, stats = kcore_iterative(users, items, min_user=3, min_item=2)
    np.testing.assert_array_equal(keep, [1, 1, 1, 1, 1, 1, 0, 0, 0])
    assert stats["rule"] == "iterative" and stats["thresholds"] == [3, 2]
    assert stats["after"] == {"users": 2, "items": 3, "interactions": 6} and stats["rounds"] >= 2
    rng = np.random.default_rng(1)
    u, i = rng.integers(0, 200, 3000), rng.zipf(1.6, 3000) % 300
    keep, _ = kcore_iterative(u, i, min_user=5, min_item=7)
    assert np.bincount(u[keep]).max(initial=0) >= 5
    for ids, k in ((u, 5), (i, 7)):
        c = np.bincount(ids[keep])
        assert c[c > 0].min(initial=k) >= k
    keep, stats = kcore_iterative(np.array([], np.int64), np.array([], np.int64), min_user=2, min_item=2)
    assert keep.size == 0 and stats["after"]["users"] == 0
