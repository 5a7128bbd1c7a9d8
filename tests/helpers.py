"""Tiny random datasets for the model tests, and brute-force rankings for the metric tests."""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from tall_jax.datasets.base import Dataset


def tiny_dataset(n_users: int = 37, n_items: int = 23, seed: int = 0, *,
                 empty_valid_users: tuple[int, ...] = ()) -> Dataset:
    """Disjoint random train/valid/test rows; every user has >= 2 train items and >= 1 test item;
    ``empty_valid_users`` get no validation item."""
    rng = np.random.default_rng(seed)
    draw = rng.random((n_users, n_items))
    train = draw < 0.25
    valid = (draw >= 0.25) & (draw < 0.35)
    test = (draw >= 0.35) & (draw < 0.5)
    for u in range(n_users):
        items = rng.permutation(n_items)
        if train[u].sum() < 2:
            train[u, items[:2]] = True
            valid[u, items[:2]] = test[u, items[:2]] = False
        if test[u].sum() < 1:
            free = np.flatnonzero(~train[u] & ~valid[u])
            test[u, free[0]] = True
    valid[list(empty_valid_users)] = False
    part = lambda m: sp.csr_matrix(m.astype(np.float32))
    return Dataset("tiny", "random", seed, part(train), part(valid), part(test))


def tiny_user_data(n_users: int = 12, n_items: int = 30, seed: int = 0):
    """A random UserData of ``n_users`` x ``n_items``; every user has item 0 in train, user 0 has no
    validation item (the uniform-gate branch of the loss gate)."""
    import jax.numpy as jnp

    from tall_jax import batching
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n_users, n_items)) < 0.25
    x[:, 0] = True
    v = (rng.uniform(size=(n_users, n_items)) < 0.2) & ~x
    v[0] = False
    t = (rng.uniform(size=(n_users, n_items)) < 0.2) & ~x & ~v
    csr = lambda a: sp.csr_matrix(a.astype(np.float32))  # noqa: E731
    return batching.UserData(
        train_idx=jnp.asarray(batching.padded_rows(csr(x))),
        valid_idx=jnp.asarray(batching.padded_rows(csr(v))),
        test_idx=jnp.asarray(batching.padded_rows(csr(t))), n_users=n_users, n_items=n_items)


def split_user_data(n_users: int = 40, n_items: int = 24, seed: int = 0):
    """A UserData of random rows, each user with >= 1 interaction, split ~70/15/15 into
    train / valid / test (a user may lack a validation or test item)."""
    import jax.numpy as jnp

    from tall_jax.batching import UserData, padded_rows
    rng = np.random.default_rng(seed)
    full = rng.random((n_users, n_items)) < 0.3
    full[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    part = rng.random((n_users, n_items))
    train, valid, test = full & (part < 0.7), full & (part >= 0.7) & (part < 0.85), full & (part >= 0.85)
    csr = lambda a: sp.csr_matrix(a.astype(np.float32))  # noqa: E731
    return UserData(jnp.asarray(padded_rows(csr(train))), jnp.asarray(padded_rows(csr(valid))),
                    jnp.asarray(padded_rows(csr(test))), n_users, n_items)


def random_case(seed, b=16, m=40, ties=False):
    """Random scores [b, m] (or few distinct values: ties), train items to exclude and targets; user 0
    has no target, user 1 more than 20."""
    rng = np.random.default_rng(seed)
    # Few distinct values => many ties, resolved by index in both implementations.
    scores = rng.integers(0, 4, (b, m)).astype(np.float32) if ties else rng.normal(size=(b, m)).astype(np.float32)
    exclude = rng.random((b, m)) < 0.3
    target = (rng.random((b, m)) < 0.2) & ~exclude
    target[0] = False  # one user with an empty target set
    target[1] = False
    free = np.flatnonzero(~exclude[1])
    target[1, rng.choice(free, min(25, len(free)), replace=False)] = True  # |G| > K = 20 when m allows
    return scores, exclude, target


def brute_force(scores, exclude, target, ks, popularity=None):
    """Independent per-user loop: stable sort on -score (lowest index first among ties), skip excluded."""
    names = ("ndcg", "recall", "precision", "hr", "mrr", "map") + (("popularity",) if popularity is not None else ())
    out = {f"{m}@{k}": [] for k in ks for m in names}
    for s, ex, tg in zip(scores, exclude, target):
        order = [i for i in sorted(range(len(s)), key=lambda i: -float(s[i])) if not ex[i]]
        g = {i for i in range(len(s)) if tg[i]}
        for k in ks:
            if popularity is not None:
                top = order[:k]
                out[f"popularity@{k}"].append(np.mean([popularity[i] for i in top]) if top else math.nan)
            if not g:
                for m in ("ndcg", "recall", "precision", "hr", "mrr", "map"):
                    out[f"{m}@{k}"].append(math.nan)
                continue
            hits = [p for p, i in enumerate(order[:k], start=1) if i in g]
            dcg = sum(1 / math.log2(p + 1) for p in hits)
            idcg = sum(1 / math.log2(p + 1) for p in range(1, min(len(g), k) + 1))
            out[f"ndcg@{k}"].append(dcg / idcg)
            out[f"recall@{k}"].append(len(hits) / len(g))
            out[f"precision@{k}"].append(len(hits) / k)
            out[f"hr@{k}"].append(1.0 if hits else 0.0)
            out[f"mrr@{k}"].append(1 / hits[0] if hits else 0.0)
            out[f"map@{k}"].append(sum((j + 1) / p for j, p in enumerate(hits)) / min(k, len(g)))
    return {k: np.array(v) for k, v in out.items()}


def brute_force_items(scores, exclude, kmax):
    """The ranked candidate items per user, -1 where a user has fewer than kmax candidates."""
    out = np.full((len(scores), kmax), -1)
    for u, (s, ex) in enumerate(zip(scores, exclude)):
        order = [i for i in sorted(range(len(s)), key=lambda i: -float(s[i])) if not ex[i]][:kmax]
        out[u, : len(order)] = order
    return out
