"""The in-memory form of a split dataset, shared by every model in the package."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A user-item implicit-feedback dataset split into train / validation / test.

    All three parts are binary ``scipy.sparse.csr_matrix`` of shape ``[N, M]`` (float32, data all 1);
    they are disjoint. ``train`` is the model input for every purpose (docs/fidelity.md#inputs); ``valid`` drives
    early stopping, TALL's gate and its adaptive weights; ``test`` is only scored.
    """

    name: str  # "ml-1m" | "yelp" | "cds" | "synthetic" | ...
    split: str  # "authors" (the TALL authors' committed ML-1M split) or "random" (seeded 70/10/20)
    seed: int | None  # seed of the random split (None for a committed split)
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # provenance, filter log, counts
    cache_dir: Path | None = None  # where derived arrays (mainstream scores) of this split are cached

    @property
    def n_users(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])

    @property
    def n_interactions(self) -> int:
        return int(self.train.nnz + self.valid.nnz + self.test.nnz)

    def counts(self) -> dict[str, int]:
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "train": int(self.train.nnz),
            "valid": int(self.valid.nnz),
            "test": int(self.test.nnz),
            "users_without_valid": int(np.sum(np.diff(self.valid.indptr) == 0)),
            "users_without_test": int(np.sum(np.diff(self.test.indptr) == 0)),
        }
