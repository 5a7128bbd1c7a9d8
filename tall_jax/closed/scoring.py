"""How every closed model is evaluated: its score rows computed on the host in blocks of users, and
one scorer for :func:`tall_jax.evaluation.evaluate` that gathers a block's rows.

A fitted model (:class:`Fitted`) is an item-item matrix W (s_u = x_u W, dense or sparse), a
popularity vector (s_u = pop for every user) or precomputed rows (LOCA-EASE's mixture). Its scores
are made for ``rows`` users at a time (a block of [rows, M] float32 from the memory budget: all of
ML-1M at once, 90 MB), and :func:`gathered_scores` reads them on the device, so no [M, M] matrix,
let alone one per local model, is ever on the device.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from tall_jax import evaluation
from tall_jax.batching import Batch, UserData
from tall_jax.closed.ease import binary
from tall_jax.ranking import DEFAULT_KS


@dataclasses.dataclass(frozen=True, eq=False)
class Fitted:
    """A fitted closed model as its scores; exactly one field is set."""

    item_MxM: Any = None  # W: s_u = x_u W (dense ndarray or scipy sparse)
    pop_M: np.ndarray | None = None  # s_u = pop for every user
    rows_NxM: np.ndarray | None = None  # s_u = rows[u]

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.item_MxM, self.pop_M, self.rows_NxM)) != 1:
            raise ValueError("Fitted needs exactly one of item_MxM, pop_M, rows_NxM")

    def rows(self, x: sp.csr_matrix, lo: int, hi: int) -> np.ndarray:
        """Scores of users lo..hi−1 as float32 [hi − lo, M] (``x``: the binary train CSR)."""
        if self.rows_NxM is not None:
            return np.asarray(self.rows_NxM[lo:hi], np.float32)
        if self.pop_M is not None:
            return np.broadcast_to(np.asarray(self.pop_M, np.float32)[None, :], (hi - lo, x.shape[1]))
        s = x[lo:hi] @ self.item_MxM
        return np.asarray(s.toarray() if sp.issparse(s) else s, np.float32)


def gathered_scores(params: dict[str, jax.Array], batch: Batch) -> tuple[jax.Array, dict]:
    """The scorer: row ``users − first`` of ``params["rows_CxM"]`` for each batch user (a padding
    user or one outside the block gets zeros; the evaluator drops padding users)."""
    local_B = batch.users - params["first"]
    return params["rows_CxM"].at[local_B].get(mode="fill", fill_value=0.0), {}


def block_users(n_users: int, n_items: int, batch_size: int, budget_bytes: float) -> int:
    """Users per block of score rows: a multiple of ``batch_size`` whose [rows, M] float32 (twice:
    host and device) fits ``budget_bytes``, at most the padded user count."""
    fit = int(budget_bytes // (2 * 4 * n_items)) // batch_size * batch_size
    all_users = -(-n_users // batch_size) * batch_size
    return max(batch_size, min(fit, all_users))


def evaluate_fitted(fitted: Fitted, train: sp.spmatrix, data: UserData, *, batch_size: int = 256,
                    ks: Sequence[int] = DEFAULT_KS, budget_bytes: float = 2e9) -> dict[str, np.ndarray]:
    """Per-user valid/test metrics (:func:`tall_jax.evaluation.evaluate`, host arrays) of every user,
    the scores made block by block. Every block is padded to one shape, so one compilation serves."""
    x = binary(train)
    n, m = x.shape
    rows = block_users(n, m, batch_size, budget_bytes)
    parts = []
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        block = np.zeros((rows, m), np.float32)
        block[:hi - lo] = fitted.rows(x, lo, hi)
        params = {"rows_CxM": jnp.asarray(block), "first": jnp.asarray(lo, jnp.int32)}
        parts.append(jax.device_get(evaluation.evaluate(
            gathered_scores, params, data, batch_size=batch_size, users=np.arange(lo, hi), ks=ks)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
