"""Sparse rows on the device, and fixed-shape batches cut from them.

Every user's train / validation / test items live on the device as padded index arrays ``[N, P]``
(pad value M, the number of items), never as a dense N x M matrix. A batch carries its users' index
rows; the step turns them into dense ``[B, M]`` indicator rows on the device, which costs B x M floats.
Batches always have ``batch_size`` rows: the last one of an epoch is padded with the dummy user N,
whose rows are empty and whose mask is 0, so a step compiles once per epoch shape.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from flax import struct


def padded_rows(matrix: sp.csr_matrix, *, pad_to: int | None = None) -> np.ndarray:
    """CSR rows as an int32 array [N + 1, P] of item ids padded with M; row N is the empty dummy user.

    P is the longest row (at least 1) unless ``pad_to`` is given.
    """
    matrix = sp.csr_matrix(matrix)
    n_users, n_items = matrix.shape
    lengths = np.diff(matrix.indptr)
    width = max(int(lengths.max(initial=0)), 1) if pad_to is None else pad_to
    if lengths.max(initial=0) > width:
        raise ValueError(f"pad_to={width} is shorter than the longest row ({lengths.max()})")
    out = np.full((n_users + 1, width), n_items, dtype=np.int32)
    rows = np.repeat(np.arange(n_users), lengths)
    cols = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], lengths)
    out[rows, cols] = matrix.indices
    return out


def batch_nnz_caps(matrix: sp.csr_matrix) -> tuple[tuple[int, int], ...]:
    """((b, cap_b), ...) for b = 1, 2, 4, ... up to the first b >= N: cap_b is the largest number of
    nonzeros any b users' rows hold together (the sum of the b longest rows). Static bounds for
    fixed-size sparse buffers; a batch of B <= b users never holds more than cap_b."""
    lengths = np.sort(np.diff(sp.csr_matrix(matrix).indptr))[::-1]
    cumulative = np.cumsum(lengths)
    caps, b = [], 1
    while True:
        caps.append((b, int(cumulative[min(b, len(lengths)) - 1]) if len(lengths) else 0))
        if b >= len(lengths):
            return tuple(caps)
        b *= 2


@struct.dataclass
class UserData:
    """A split dataset on the device: padded item-index rows (pad = M), one dummy row at index N."""

    train_idx: jax.Array  # int32 [N + 1, P_train]
    valid_idx: jax.Array  # int32 [N + 1, P_valid]
    test_idx: jax.Array  # int32 [N + 1, P_test]
    n_users: int = struct.field(pytree_node=False)
    n_items: int = struct.field(pytree_node=False)
    # batch_nnz_caps(train): bounds the train nonzeros of a batch for the sparse encoder; () = unknown
    train_nnz_caps: tuple[tuple[int, int], ...] = struct.field(pytree_node=False, default=())

    def train_nnz_cap(self, batch_size: int) -> int:
        """An upper bound of the train nonzeros in any ``batch_size`` users (B x P_train if unknown)."""
        for b, cap in self.train_nnz_caps:
            if b >= batch_size:
                return max(cap, 1)
        return batch_size * self.train_idx.shape[1]

    @classmethod
    def from_dataset(cls, dataset) -> "UserData":
        """Build from a :class:`tall_jax.datasets.Dataset` (train / valid / test CSR)."""
        return cls(
            train_idx=jnp.asarray(padded_rows(dataset.train)),
            valid_idx=jnp.asarray(padded_rows(dataset.valid)),
            test_idx=jnp.asarray(padded_rows(dataset.test)),
            n_users=dataset.n_users,
            n_items=dataset.n_items,
            train_nnz_caps=batch_nnz_caps(dataset.train),
        )


@struct.dataclass
class Batch:
    """One step's users. ``users`` holds N for padding rows; ``mask`` is 1 for real users."""

    users: jax.Array  # int32 [B]
    mask: jax.Array  # float32 [B]
    train_idx: jax.Array  # int32 [B, P_train], pad M
    valid_idx: jax.Array  # int32 [B, P_valid], pad M
    n_items: int = struct.field(pytree_node=False)
    nnz_cap: int = struct.field(pytree_node=False, default=0)  # bound of train nonzeros (0: unknown)


def make_batch(data: UserData, users_B: jax.Array) -> Batch:
    """Gather the rows of ``users_B`` (entries equal to N are padding). Jittable."""
    users_B = jnp.asarray(users_B, jnp.int32)
    return Batch(
        users=users_B,
        mask=(users_B < data.n_users).astype(jnp.float32),
        train_idx=data.train_idx[users_B],
        valid_idx=data.valid_idx[users_B],
        n_items=data.n_items,
        nnz_cap=data.train_nnz_cap(users_B.shape[0]),
    )


def epoch_order(key: jax.Array, n_users: int, batch_size: int) -> jax.Array:
    """A fresh permutation of the users cut into [n_batches, B], the tail padded with N (docs/fidelity.md#multvae)."""
    n_batches = -(-n_users // batch_size)
    perm = jax.random.permutation(key, n_users).astype(jnp.int32)
    pad = jnp.full((n_batches * batch_size - n_users,), n_users, jnp.int32)
    return jnp.concatenate([perm, pad]).reshape(n_batches, batch_size)


def sequential_order(n_users: int, batch_size: int) -> np.ndarray:
    """Users 0..N-1 in order, cut into [n_batches, B] with the tail padded with N (for evaluation)."""
    n_batches = -(-n_users // batch_size)
    order = np.full(n_batches * batch_size, n_users, np.int32)
    order[:n_users] = np.arange(n_users, dtype=np.int32)
    return order.reshape(n_batches, batch_size)


def dense_rows(idx_BxP: jax.Array, n_items: int) -> jax.Array:
    """0/1 float32 rows [B, M] from padded item indices (the pad value M is dropped)."""
    batch = idx_BxP.shape[0]
    rows = jnp.arange(batch)[:, None]
    return jnp.zeros((batch, n_items), jnp.float32).at[rows, idx_BxP].set(1.0, mode="drop")
