"""``--ml1m-days split``: the one-shot ML-1M adaptation on the TALL authors' split (one training
"day", three test "days" that are disjoint user sets; module docstring of :mod:`tall_jax.two_tower.ml1m`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from tall_jax.two_tower.data import (
    Day, PairSet, TwoTowerData, empty_pairs, positives_of, sample_negatives, upsample_active_users,
)
from tall_jax.two_tower.ml1m.common import (
    ZIP_GROUPS, item_movie_ids, territory_groups, title_features, user_territories,
)


def make_ml1m_two_tower(
    dataset,
    data_dir,
    user_emb_NxD: np.ndarray,
    *,
    seed: int = 0,
    embedding_name: str = "given",
    alpha: float = 4.0,
    train_pool_frac: float = 0.6,
    valid_pool_frac: float = 0.1,
    random_frac: float = 0.5,
    upsample_frac: float = 0.5,
    active_quantile: float = 0.75,
    n_test_days: int = 3,
) -> TwoTowerData:
    """Build the ML-1M two-tower data (module docstring) from a loaded ``Dataset`` and a user embedding."""
    n_u, n_i = dataset.n_users, dataset.n_items
    if user_emb_NxD.shape[0] != n_u:
        raise ValueError(f"user embedding has {user_emb_NxD.shape[0]} rows for {n_u} users")
    rng = np.random.default_rng(seed)
    terr_U = user_territories(n_u, data_dir)
    names = list(ZIP_GROUPS)
    territory_group = territory_groups()
    movie_I, map_source = item_movie_ids(n_i, data_dir)
    known_I = movie_I >= 0
    item_x = title_features(movie_I, data_dir)
    emb = np.asarray(user_emb_NxD, np.float32)
    user_x = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    test = (dataset.test @ sp.diags(known_I.astype(np.float32))).tocsr()
    test.eliminate_zeros()
    seen = (dataset.train + dataset.valid + dataset.test).tocsr()
    seen.sort_indices()
    is_seen = lambda u, t: np.asarray(seen[u, t]).ravel() > 0  # noqa: E731
    known = np.nonzero(known_I)[0]
    cands = (known[None, :], np.array([len(known)]), np.zeros(n_u, np.int64))
    n_valid_U = np.diff(dataset.valid.indptr)
    active_U = n_valid_U >= max(np.quantile(n_valid_U, active_quantile), 1)

    def examples(users: np.ndarray) -> PairSet:
        pos = positives_of(users, test)
        return pos.concat(sample_negatives(users, int(round(alpha * pos.n_pos)), cands, is_seen, rng))

    perm = rng.permutation(n_u)
    n_train, n_valid = int(train_pool_frac * n_u), int(valid_pool_frac * n_u)
    pool, valid_users = np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_valid])
    test_users = [np.sort(d) for d in np.array_split(perm[n_train + n_valid:], n_test_days)]
    random_users = rng.choice(pool, size=int(random_frac * len(pool)), replace=False)
    n_eligible = int(active_U[pool].sum() - active_U[random_users].sum())
    _, added = upsample_active_users(random_users, pool, active_U, int(upsample_frac * n_eligible), rng)
    plain = examples(random_users)
    upsampled = plain.concat(examples(added))
    valid = examples(valid_users)
    tests = [examples(u) for u in test_users]
    case = _case_titles(dataset.train, test, terr_U, test_users, known_I, movie_I)
    info: dict[str, Any] = {
        "user_embedding": embedding_name, "user_embedding_dim": int(emb.shape[1]), "item_to_movie": map_source,
        "items_without_movie_id": int((~known_I).sum()), "zip_groups": {k: list(v) for k, v in ZIP_GROUPS.items()},
        "territory_users": np.bincount(terr_U, minlength=10).tolist(), "alpha": alpha, "seed": seed,
        "active_rule": f"validation count >= {active_quantile:.2f}-quantile (>= 1)", "active_users": int(active_U.sum()),
        "n_users_plain": len(random_users), "n_users_added_active": len(added),
        "train_plain": {"n": len(plain), "n_pos": plain.n_pos},
        "train_upsampled": {"n": len(upsampled), "n_pos": upsampled.n_pos},
        "valid": {"n": len(valid), "n_pos": valid.n_pos, "users": len(valid_users)},
        "test_days": [{"n": len(t), "n_pos": t.n_pos} for t in tests],
        "days": "one training day (the test-split positives of the training pool), then three test user sets",
    }
    days = [Day(plain, upsampled, valid, empty_pairs(), np.zeros(0, np.int64), None, "train")]
    days += [Day(empty_pairs(), empty_pairs(), empty_pairs(), t, u, test, f"test {j + 1}")
             for j, (t, u) in enumerate(zip(tests, test_users))]
    return TwoTowerData("ml-1m", user_x, item_x, terr_U, territory_group, [f"Z{d}" for d in range(10)], names,
                        days, n_test_days, (dataset.train + dataset.valid).tocsr(), case, info)


def _case_titles(train, test, terr_U, test_users, known_I, movie_I, min_pos: int = 8) -> list[dict[str, Any]]:
    """Paper §4.4 on ML-1M: in the two largest regions of different groups, the most "local" title
    (highest train-split lift: region share of its interactions over the region's share of all) with at
    least ``min_pos`` test positives among that region's test users, and the title with lift closest to 1
    whose count there is closest to it ("global")."""
    users = np.concatenate(test_users)
    out = []
    per_region = np.stack([np.asarray(train[terr_U == r].sum(0)).ravel() for r in range(10)])
    lift_RxI = (per_region / np.maximum(per_region.sum(0, keepdims=True), 1)) / (
        per_region.sum(1, keepdims=True) / per_region.sum())
    sizes = np.bincount(terr_U, minlength=10)
    picks = [int(np.argmax(sizes))]
    group_of = {r: g for g, rs in enumerate(ZIP_GROUPS.values()) for r in rs}
    others = [r for r in np.argsort(-sizes) if group_of[int(r)] != group_of[picks[0]]]
    picks.append(int(others[0]))
    for r in picks:
        cnt_I = np.asarray(test[users[terr_U[users] == r]].sum(0)).ravel()
        ok = known_I & (cnt_I >= min_pos) & (per_region.sum(0) >= 50)
        if not ok.any():
            continue
        lt = int(np.nonzero(ok)[0][np.argmax(lift_RxI[r, ok])])
        near = known_I & (np.abs(np.log(np.maximum(lift_RxI[r], 1e-6))) < 0.1) & (np.arange(len(cnt_I)) != lt)
        gt = int(np.nonzero(near)[0][np.argmin(np.abs(cnt_I[near] - cnt_I[lt]))])
        for kind, t in (("local", lt), ("global", gt)):
            out.append({"title": t, "territory": r, "kind": kind, "movie_id": int(movie_I[t]),
                        "lift": float(lift_RxI[r, t]), "name": f"{kind} title in Z{r}"})
    return out
