"""Tiny random datasets for the model tests."""
from __future__ import annotations

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
