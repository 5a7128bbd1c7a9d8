"""Example sets for the two-tower models: pairs, sampled negatives, active-user upsampling
(docs/fidelity.md#two-tower-data). The synthetic multi-territory generator is
:mod:`tall_jax.two_tower.synthetic`, the ML-1M builders :mod:`tall_jax.two_tower.ml1m`.

A ``TwoTowerData`` holds user / title feature matrices, each user's territory, each territory's group, the
training pairs (plain and upsampled) and one pair set per test day (disjoint users), plus per-day positive
matrices for title-level evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp

from tall_jax.two_tower.shards import Chain


@dataclasses.dataclass(frozen=True)
class PairSet:
    """User-title examples: ``user[N]``, ``item[N]`` int32 indices and ``label[N]`` float32 in {0, 1}."""

    user: np.ndarray
    item: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_pos(self) -> int:
        return int(self.label.sum())

    def in_memory(self) -> "PairSet":
        """The same examples as arrays (columns left on disk are read whole)."""
        return PairSet(*(np.asarray(c) for c in (self.user, self.item, self.label)))

    def concat(self, other: "PairSet") -> "PairSet":
        return PairSet(*(np.concatenate([a, b]) for a, b in zip(
            (self.user, self.item, self.label), (other.user, other.item, other.label))))


@dataclasses.dataclass(frozen=True)
class Day:
    """One day of the incremental protocol (docs/fidelity.md#two-tower-data, paper §4.2).

    ``train_plain`` are the examples of that day's random sample of training users, ``train_upsampled``
    those plus the added active users (plain is a prefix); ``valid`` the examples of held-out validation
    users (early stopping); ``test`` the examples of that day's test users (empty on training-only days).
    ``positives`` is the ``[U, I]`` matrix of the day's test-user positives (title-level AP).
    Training, validation and test users are disjoint; the test users of different days are disjoint.
    """

    train_plain: PairSet
    train_upsampled: PairSet
    valid: PairSet
    test: PairSet
    test_users: np.ndarray
    positives: sp.csr_matrix | None = None
    label: str = ""

    @property
    def train_users(self) -> np.ndarray:
        return np.unique(self.train_upsampled.user)


def empty_pairs() -> PairSet:
    z = np.zeros(0, np.int32)
    return PairSet(z, z, np.zeros(0, np.float32))


def concat_pairs(sets: list[PairSet]) -> PairSet:
    """The sets one after the other; sets kept on disk (:mod:`tall_jax.two_tower.shards` columns) are
    chained, not read."""
    sets = [s for s in sets if len(s)]
    if not sets:
        return empty_pairs()
    cols = list(zip(*((s.user, s.item, s.label) for s in sets)))
    if all(isinstance(a, np.ndarray) for c in cols for a in c):
        return PairSet(*(np.concatenate(a) for a in cols))
    return PairSet(*(Chain(a) for a in cols))


@dataclasses.dataclass
class TwoTowerData:
    """Everything an experiment needs (see module docstring). ``U`` users, ``I`` titles, ``T`` territories.

    ``days`` run in time order; the last ``n_test_days`` are the test days. Under the incremental
    protocol the model evaluated on day ``i`` has been trained on the training examples of days
    ``0 .. i-1`` only; under the one-shot protocol on days ``0 .. first_test_day - 1`` only.
    """

    name: str
    user_x: np.ndarray  # [U, F_u] float32 user features (or shards.Rows: read from disk by row)
    item_x: np.ndarray  # [I, F_i] float32 title features
    user_territory: np.ndarray  # [U] int territory id
    territory_group: np.ndarray  # [T] int group id
    territory_names: list[str]
    group_names: list[str]
    days: list[Day]
    n_test_days: int
    exclude: sp.csr_matrix | None  # [U, I] pairs never scored at title level (already seen)
    case_titles: list[dict[str, Any]]  # [{"title", "territory", "kind": "local"|"global", "name"}]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    # > 0: user_x / item_x hold ids (one column) that index a learned embedding table of this many rows
    user_vocab: int = 0
    item_vocab: int = 0

    @property
    def user_group(self) -> np.ndarray:
        return self.territory_group[self.user_territory]

    @property
    def n_groups(self) -> int:
        return int(self.territory_group.max()) + 1

    @property
    def first_test_day(self) -> int:
        return len(self.days) - self.n_test_days

    @property
    def test_days(self) -> list[PairSet]:
        return [d.test for d in self.days[self.first_test_day:]]

    @property
    def test_users(self) -> list[np.ndarray]:
        return [d.test_users for d in self.days[self.first_test_day:]]

    @property
    def day_positives(self) -> list[sp.csr_matrix]:
        return [d.positives for d in self.days[self.first_test_day:]]

    @property
    def train_plain(self) -> PairSet:
        """The plain training examples of every day before the first test day, pooled."""
        return concat_pairs([d.train_plain for d in self.days[: self.first_test_day]])

    @property
    def train_upsampled(self) -> PairSet:
        return concat_pairs([d.train_upsampled for d in self.days[: self.first_test_day]])

    def gather(self, pairs: PairSet):
        """``idx -> (user_x, item_x, label, group)`` for ``train_two_tower`` / ``predict_two_tower``."""
        group_U = self.user_group

        def _gather(idx: np.ndarray):
            u, t = pairs.user[idx], pairs.item[idx]
            return self.user_x[u], self.item_x[t], pairs.label[idx], group_U[u]

        return _gather

    def title_pairs(self, title: int, territory: int) -> PairSet:
        """All test-day users of ``territory`` paired with ``title`` (labels: that day's positive),
        minus already-seen pairs: the population of the title-level AP and histograms (docs/fidelity.md#two-tower-evaluation)."""
        users, labels = [], []
        for day_users, pos in zip(self.test_users, self.day_positives):
            u = day_users[self.user_territory[day_users] == territory]
            if self.exclude is not None:
                u = u[np.asarray(self.exclude[u, title].todense()).ravel() == 0]
            users.append(u)
            labels.append(np.asarray(pos[u, title].todense()).ravel())
        u = np.concatenate(users).astype(np.int32)
        return PairSet(u, np.full(len(u), title, np.int32), np.concatenate(labels).astype(np.float32))


def sample_negatives(
    users_S: np.ndarray,
    n_neg: int,
    candidates_of_user,
    is_positive,
    rng: np.random.Generator,
) -> PairSet:
    """``n_neg`` negatives: users uniform over ``users_S``, titles uniform over ``candidates_of_user(u)``
    (``(items_KxA, counts_K, key_S)``: a padded candidate table and each user's row), drawn pairs that are
    positives (``is_positive(u, t) -> bool[N]``) are dropped, so slightly fewer than ``n_neg`` may remain."""
    if n_neg <= 0 or len(users_S) == 0:
        z = np.zeros(0, np.int32)
        return PairSet(z, z, np.zeros(0, np.float32))
    items_KxA, counts_K, key_S = candidates_of_user
    pick = rng.integers(0, len(users_S), n_neg)
    u, key = users_S[pick], key_S[pick]
    t = items_KxA[key, (rng.random(n_neg) * counts_K[key]).astype(np.int64)]
    keep = ~is_positive(u, t)
    return PairSet(u[keep].astype(np.int32), t[keep].astype(np.int32), np.zeros(int(keep.sum()), np.float32))


def upsample_active_users(
    random_users: np.ndarray, pool: np.ndarray, is_active_U: np.ndarray, n_active: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """docs/fidelity.md#two-tower-data / paper §3.2: add a disjoint, independently drawn sample of ``n_active`` active users
    (from ``pool``, not already in ``random_users``) to the random sample, which is kept intact.

    Returns ``(users, added)`` with ``users = concat(random_users, added)``; ``n_active`` is capped at
    the number of eligible active users.
    """
    eligible = np.setdiff1d(pool[is_active_U[pool]], random_users)
    added = rng.choice(eligible, size=min(n_active, len(eligible)), replace=False)
    return np.concatenate([random_users, added]), np.sort(added)


def positives_of(users_S: np.ndarray, pos_csr: sp.csr_matrix) -> PairSet:
    """Every positive ``(u, t)`` of the given users in ``pos_csr``."""
    sub = pos_csr[users_S].tocoo()
    return PairSet(users_S[sub.row].astype(np.int32), sub.col.astype(np.int32), np.ones(sub.nnz, np.float32))


def csr_lookup(mat: sp.csr_matrix):
    mat = mat.tocsr()
    mat.sort_indices()

    def is_in(u: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.asarray(mat[u, t]).ravel() > 0

    return is_in
