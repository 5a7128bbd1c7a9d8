"""Mainstream scores and the five user groups (docs/fidelity.md#groups).

Data flows datasets -> protocol: this module imports only :mod:`tall_jax.datasets.base` (and
:mod:`tall_jax.files`).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from tall_jax.datasets.base import Dataset
from tall_jax.files import atomic_savez

log = logging.getLogger("tall_jax.protocol")

# The five mainstream groups, lowest scores first: the one definition (metrics, paper rows and the
# report take it from here).
GROUP_NAMES: tuple[str, ...] = ("low", "med-low", "medium", "med-high", "high")
JACCARD_EPS = 1e-7  # docs/fidelity.md#groups: added to the union in the Jaccard denominator
_MAX_BLOCK_PAIRS = 1 << 22  # bounds one block's (user, other-user) pairs to ~4M entries
_GROUPS_FILE = "mainstream_groups.npz"


def mainstream_scores(train_csr: sp.spmatrix, *, block_size: int = 2048) -> np.ndarray:
    """MS_u = 1/(N-1) * sum_{v != u} |T_u ∩ T_v| / (|T_u| + |T_v| - |T_u ∩ T_v| + 1e-7), docs/fidelity.md#groups.

    ``T_u`` is user u's set of train items (the nonzeros of row u). Computed blockwise: the
    intersection counts of a block of rows with every later user are the sparse product
    ``X[rows] @ X[lo:].T``; only its nonzeros enter the sum (a zero intersection adds a zero),
    and each pair's J is credited to both users (J is symmetric). A block holds at most ``block_size``
    rows and at most ~4M (row, user) pairs, so memory stays bounded for any N. Returns float64[N].
    """
    x = sp.csr_matrix(train_csr, dtype=np.float32, copy=True)
    x.sum_duplicates()
    x.data[:] = 1.0
    n = x.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.float64)
    size_N = np.diff(x.indptr).astype(np.float64)
    rows = max(1, min(block_size, _MAX_BLOCK_PAIRS // n))
    total_N = np.zeros(n, dtype=np.float64)
    starts = range(0, n, rows)
    for lo in tqdm(starts, desc="mainstream scores", unit="block", disable=n < 20_000 or None):
        hi = min(lo + rows, n)
        # J is symmetric: pair each row only with users v > u and credit both ends.
        inter = (x[lo:hi] @ x[lo:].T).tocsr()
        row_of = np.repeat(np.arange(lo, hi), np.diff(inter.indptr))
        col = inter.indices + lo
        upper = col > row_of
        counts = inter.data[upper].astype(np.float64)
        row_of, col = row_of[upper], col[upper]
        jac = counts / (size_N[row_of] + size_N[col] - counts + JACCARD_EPS)
        total_N += np.bincount(row_of, weights=jac, minlength=n)
        total_N += np.bincount(col, weights=jac, minlength=n)
    return total_N / (n - 1)


def user_groups(ms_N: np.ndarray, n_groups: int = 5) -> np.ndarray:
    """Group of each user, 0 (low MS) .. n_groups-1 (high): equal-size cuts of the stable argsort.

    ``np.array_split(np.argsort(ms, kind="stable"), n_groups)``, docs/fidelity.md#groups; returns int32[N].
    """
    ms_N = np.asarray(ms_N)
    if ms_N.ndim != 1:
        raise ValueError(f"mainstream scores must be 1-D, got shape {ms_N.shape}")
    if not 1 <= n_groups <= max(1, ms_N.size):
        raise ValueError(f"n_groups must be in 1..{ms_N.size} for {ms_N.size} users, got {n_groups}")
    groups_N = np.empty(ms_N.size, dtype=np.int32)
    for g, members in enumerate(np.array_split(np.argsort(ms_N, kind="stable"), n_groups)):
        groups_N[members] = g
    return groups_N


def _train_fingerprint(train: sp.csr_matrix) -> str:
    h = hashlib.sha1()
    h.update(np.asarray(train.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(train.indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(train.indices, dtype=np.int64).tobytes())
    return h.hexdigest()


def dataset_groups(dataset: Dataset, n_groups: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``(ms_N, groups_N)`` of a dataset's train matrix, cached in ``dataset.cache_dir`` if set.

    The cache file records a fingerprint of the train matrix, so a stale file is recomputed.
    """
    train = sp.csr_matrix(dataset.train)
    train.sort_indices()
    fp = _train_fingerprint(train)
    path = Path(dataset.cache_dir) / _GROUPS_FILE if dataset.cache_dir else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) == fp:
                    ms_N = z["ms"]
                    groups_N = z["groups"] if int(z["n_groups"]) == n_groups else user_groups(ms_N, n_groups)
                    return ms_N, groups_N
        except (OSError, KeyError, ValueError) as e:
            log.warning("recomputing mainstream scores: unreadable cache %s (%s)", path, e)
    ms_N = mainstream_scores(train)
    groups_N = user_groups(ms_N, n_groups)
    if path is not None:
        atomic_savez(path, ms=ms_N, groups=groups_N, n_groups=np.asarray(n_groups),
                     fingerprint=np.asarray(fp))
    return ms_N, groups_N
