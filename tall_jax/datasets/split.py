"""k-core filter, re-indexing and the seeded 70/10/20 split (docs/fidelity.md#filter, #reindexing, #split)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

log = logging.getLogger("tall_jax.datasets")

# (loop threshold, user threshold, item threshold) per dataset, docs/fidelity.md#filter: keep users with
# count > user threshold and items with count > item threshold, while the loop condition holds.
KCORE_THRESHOLDS: dict[str, tuple[int, int, int]] = {
    "ml-1m": (9, 9, 9),
    "yelp": (8, 8, 19),
    "cds": (9, 9, 15),
}


def kcore_filter(
    users_R: np.ndarray,
    items_R: np.ndarray,
    *,
    loop_threshold: int,
    user_threshold: int,
    item_threshold: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The authors' iterative filter (docs/fidelity.md#filter); returns ``(keep_R, stats)``.

    While the smallest count among the remaining users is <= ``loop_threshold``: drop users with
    count <= ``user_threshold``; recompute item counts and drop items with count <= ``item_threshold``;
    recompute user counts. The test is on the loop condition, so when every user already has more
    than ``loop_threshold`` interactions nothing (not even an item) is dropped. Where the authors'
    loop would spin forever (``loop_threshold > user_threshold`` and nothing left to drop) it stops.
    """
    _, u = np.unique(users_R, return_inverse=True)
    _, i = np.unique(items_R, return_inverse=True)
    u, i = u.ravel(), i.ravel()
    keep = np.ones(u.size, dtype=bool)
    n_u, n_i = int(u.max(initial=-1)) + 1, int(i.max(initial=-1)) + 1
    before = {"users": n_u, "items": n_i, "interactions": int(u.size)}
    user_cnt = np.bincount(u, minlength=n_u)
    rounds = 0
    while keep.any() and user_cnt[user_cnt > 0].min() <= loop_threshold:
        n_before = int(keep.sum())
        keep &= user_cnt[u] > user_threshold
        item_cnt = np.bincount(i[keep], minlength=n_i)
        keep &= item_cnt[i] > item_threshold
        user_cnt = np.bincount(u[keep], minlength=n_u)
        rounds += 1
        if int(keep.sum()) == n_before:
            break
    after = {
        "users": int(np.unique(u[keep]).size),
        "items": int(np.unique(i[keep]).size),
        "interactions": int(keep.sum()),
    }
    stats = {
        "rule": "authors_loop",
        "thresholds": [loop_threshold, user_threshold, item_threshold],
        "rounds": rounds,
        "before": before,
        "after": after,
    }
    log.info(
        "k-core filter %s: %d rounds; users %d -> %d, items %d -> %d, interactions %d -> %d",
        stats["thresholds"], rounds, before["users"], after["users"], before["items"],
        after["items"], before["interactions"], after["interactions"],
    )
    return keep, stats


def kcore_rule_text(stats: dict[str, Any]) -> str:
    """How the filter behind ``stats`` (of :func:`kcore_filter` or :func:`kcore_iterative`) ran, in words."""
    t = stats["thresholds"]
    if stats.get("rule") == "iterative":
        return f"iterative (users >= {t[0]} and items >= {t[1]} at the end)"
    return (f"authors' loop (while some user has <= {t[0]} interactions: drop users with <= {t[1]}, "
            f"then items with <= {t[2]}; items are not filtered once every user passes)")


def kcore_iterative(
    users_R: np.ndarray, items_R: np.ndarray, *, min_user: int, min_item: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """A true iterative k-core; returns ``(keep_R, stats)``.

    Users with fewer than ``min_user`` and items with fewer than ``min_item`` interactions are dropped,
    and the counts recomputed, until nothing changes: at the end every user left has at least
    ``min_user`` interactions and every item left at least ``min_item`` (the result may be empty).
    Used for your own files; the built-in datasets keep the authors' rule (:func:`kcore_filter`)."""
    _, u = np.unique(users_R, return_inverse=True)
    _, i = np.unique(items_R, return_inverse=True)
    u, i = u.ravel(), i.ravel()
    n_u, n_i = int(u.max(initial=-1)) + 1, int(i.max(initial=-1)) + 1
    keep = np.ones(u.size, dtype=bool)
    before = {"users": n_u, "items": n_i, "interactions": int(u.size)}
    rounds = 0
    while True:
        n_before = int(keep.sum())
        keep &= np.bincount(u[keep], minlength=n_u)[u] >= min_user
        keep &= np.bincount(i[keep], minlength=n_i)[i] >= min_item
        if int(keep.sum()) == n_before:
            break
        rounds += 1
    after = {
        "users": int(np.unique(u[keep]).size),
        "items": int(np.unique(i[keep]).size),
        "interactions": int(keep.sum()),
    }
    stats = {"rule": "iterative", "thresholds": [int(min_user), int(min_item)], "rounds": rounds,
             "before": before, "after": after}
    log.info(
        "k-core filter (iterative, users >= %d, items >= %d): %d rounds; users %d -> %d, items %d -> %d, "
        "interactions %d -> %d", min_user, min_item, rounds, before["users"], after["users"],
        before["items"], after["items"], before["interactions"], after["interactions"],
    )
    return keep, stats


def reindex_first_appearance(ids_R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous ids 0..K-1 in order of first appearance (docs/fidelity.md#reindexing); returns (new_R, raw_ids_K)."""
    uniq, first, inv = np.unique(ids_R, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # uniq[order] = raw ids by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv.ravel()], uniq[order]


def to_csr(users_R: np.ndarray, items_R: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary float32 CSR [n_users, n_items] with sorted indices (pairs must be distinct)."""
    m = sp.csr_matrix(
        (np.ones(len(users_R), dtype=np.float32), (np.asarray(users_R), np.asarray(items_R))),
        shape=(n_users, n_items),
    )
    m.sum_duplicates()
    m.sort_indices()
    m.data[:] = 1.0
    return m


def random_split(
    users_R: np.ndarray,
    items_R: np.ndarray,
    n_users: int,
    n_items: int,
    *,
    seed: int,
    valid_frac: float = 0.1,
    test_frac: float = 0.2,
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """Global random split over interactions with the per-user repair (docs/fidelity.md#split).

    Interactions are first put in canonical (user, item) order, so the result depends only on the
    set of pairs and ``seed``. ``int(valid_frac*R)`` interactions are drawn as validation, then
    ``int(test_frac*R)`` of the rest as test. Then, visiting users in id order, a user with no
    validation item gets one uniformly random train item moved to validation, and then a user with
    no test item gets one random remaining train item moved to test.
    """
    users_R = np.asarray(users_R, dtype=np.int64)
    items_R = np.asarray(items_R, dtype=np.int64)
    order = np.lexsort((items_R, users_R))
    u, i = users_R[order], items_R[order]
    r = u.size
    rng = np.random.default_rng(seed)
    part = np.zeros(r, dtype=np.int8)  # 0 train, 1 valid, 2 test
    valid_idx = rng.choice(r, int(valid_frac * r), replace=False)
    part[valid_idx] = 1
    rest = np.flatnonzero(part == 0)
    test_idx = rng.choice(rest, int(test_frac * r), replace=False)
    part[test_idx] = 2

    n_valid = np.bincount(u[part == 1], minlength=n_users)
    n_test = np.bincount(u[part == 2], minlength=n_users)
    starts = np.searchsorted(u, np.arange(n_users + 1))  # u is sorted: user rows are contiguous
    short = {"valid": 0, "test": 0}
    for user in np.flatnonzero((n_valid == 0) | (n_test == 0)):
        lo, hi = starts[user], starts[user + 1]
        for kind, code, n_has in (("valid", 1, n_valid), ("test", 2, n_test)):
            if n_has[user]:
                continue
            train_pos = lo + np.flatnonzero(part[lo:hi] == 0)
            if train_pos.size == 0:
                short[kind] += 1
                continue
            part[train_pos[rng.integers(train_pos.size)]] = code
    if short["valid"] or short["test"]:
        log.warning(
            "split repair: %d users left without a validation item and %d without a test item "
            "(no train item left to move)", short["valid"], short["test"],
        )
    return tuple(to_csr(u[part == k], i[part == k], n_users, n_items) for k in (0, 1, 2))  # type: ignore[return-value]
