"""Top-k per row of dense blocks: the pruning step of the neighbourhood models
(docs/closed_forms.md#itemknn, #rp3beta)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def topk_mask(values_BxM: np.ndarray, k: int) -> np.ndarray:
    """bool[B, M]: each row's k largest positive entries; among equal values the lower column wins.

    The k-th largest value t of a row is found by a partition (O(M)); every entry > t is kept, and
    the entries == t fill the remaining places in column order."""
    b, m = values_BxM.shape
    if k >= m:
        return values_BxM > 0
    kth_B = np.partition(values_BxM, m - k, axis=1)[:, m - k]
    above = values_BxM > kth_B[:, None]
    tied = values_BxM == kth_B[:, None]
    room_B = k - above.sum(axis=1)
    keep = above | (tied & (np.cumsum(tied, axis=1) <= room_B[:, None]))
    return keep & (values_BxM > 0)


def topk_rows(row_block, n_rows: int, n_cols: int, k: int, block: int,
              dtype: np.dtype) -> sp.csr_matrix:
    """The sparse [n_rows, n_cols] matrix of each row's top-k positive entries (:func:`topk_mask`),
    built from dense row blocks ``row_block(lo, hi) -> [hi - lo, n_cols]`` of at most ``block`` rows."""
    indptr, indices, data = [np.zeros(1, np.int64)], [], []
    for lo in range(0, n_rows, block):
        hi = min(lo + block, n_rows)
        values = row_block(lo, hi)
        keep = topk_mask(values, k)
        rows, cols = np.nonzero(keep)
        indices.append(cols)
        data.append(values[rows, cols].astype(dtype))
        indptr.append(indptr[-1][-1] + np.cumsum(keep.sum(axis=1)))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)),
                         shape=(n_rows, n_cols))


def block_rows(n_cols: int, itemsize: int, budget_bytes: float) -> int:
    """Rows of a dense [rows, n_cols] block (and its temporaries, ~4 copies) within the budget."""
    return int(max(1, min(4096, budget_bytes // (4 * n_cols * itemsize))))
