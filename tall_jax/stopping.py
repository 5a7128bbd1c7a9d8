"""The one early-stopping rule (docs/fidelity.md#early-stopping), for the epoch loop and the local models.

The score of an epoch is the mean of the validation NDCG@{1,5,10,20}; the first epoch always
improves, a later one only if its score is strictly better than the best so far, and training stops
once ``patience`` epochs have passed without improvement. :func:`improves` and :func:`exhausted` are
the rule itself, written with operators only, so they work on Python / NumPy scalars and on stacked
JAX arrays inside a jitted function alike (the local models keep one bookkeeping per model, [K]).
:class:`EarlyStopping` is the host-side bookkeeping of one run (:mod:`tall_jax.fit`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from tall_jax.ranking import EARLY_STOPPING_KS

VALID_KEYS: tuple[str, ...] = tuple(f"valid/ndcg@{k}" for k in EARLY_STOPPING_KS)


def validation_score(evals: Mapping[str, Any], users_N: Any = None) -> float:
    """mean over K in {1, 5, 10, 20} of the nanmean over users of ``evals["valid/ndcg@K"]`` (over the
    users where the boolean mask ``users_N`` is true, when given)."""
    if users_N is None:
        return float(np.mean([np.nanmean(evals[k]) for k in VALID_KEYS]))
    users_N = np.asarray(users_N, bool)
    if not users_N.any():
        return float("nan")  # never improves on a real score (improves)
    return float(np.mean([np.nanmean(np.asarray(evals[k])[users_N]) for k in VALID_KEYS]))


def improves(score, best_score, best_epoch):
    """Whether ``score`` becomes the new best: always before a first best (``best_epoch == 0``),
    else only if strictly greater than ``best_score`` (a NaN score never improves after epoch 1)."""
    return (best_epoch == 0) | (score > best_score)


def exhausted(epoch, best_epoch, patience):
    """Whether ``patience`` epochs have passed since the best one (epochs count from 1)."""
    return epoch - best_epoch >= patience


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """One run's best score and epoch (0 = none yet) under the rule above."""

    patience: int
    best_score: float = -np.inf
    best_epoch: int = 0

    def update(self, epoch: int, score: float) -> tuple["EarlyStopping", bool]:
        """The bookkeeping after ``epoch`` scored ``score``, and whether it improved."""
        if improves(score, self.best_score, self.best_epoch):
            return dataclasses.replace(self, best_score=float(score), best_epoch=int(epoch)), True
        return self, False

    def since_best(self, epoch: int) -> int:
        return int(epoch) - self.best_epoch

    def should_stop(self, epoch: int) -> bool:
        """True once ``patience`` epochs after the best have run (never before a first epoch)."""
        return bool(exhausted(int(epoch), self.best_epoch, self.patience))
