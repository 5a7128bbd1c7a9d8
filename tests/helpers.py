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
