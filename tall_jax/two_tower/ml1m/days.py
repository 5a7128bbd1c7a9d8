"""``--ml1m-days timestamps`` (the default): ML-1M days from the rating timestamps, each user's earliest
ratings as the history behind the user features (module docstring of :mod:`tall_jax.two_tower.ml1m`)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from tall_jax.two_tower.data import Day, PairSet, TwoTowerData, empty_pairs, positives_of, sample_negatives, \
    upsample_active_users
from tall_jax.two_tower.ml1m.common import (
    ZIP_GROUPS, read_timed_ratings, svd_user_embedding, territory_groups, title_features, user_territories,
)


def history_embedding(history: sp.csr_matrix, kind: str = "svd", *, dim: int = 64) -> tuple[np.ndarray, str]:
    """User features from the history matrix only: ``svd`` (``U_k sqrt(S_k)`` of rank ``dim``). A
    trained embedding (MultVAE) is computed by the caller and handed to :func:`make_ml1m_days`."""
    if kind != "svd":
        raise ValueError(f"the data builder computes the 'svd' user embedding only, got {kind!r}; pass "
                         "user_embedding=tall_jax.two_tower.embedding.multvae_history_embedding for MultVAE")
    return svd_user_embedding(history, dim), f"svd{dim} of the history"


def make_ml1m_days(
    data_dir,
    *,
    seed: int = 0,
    user_embedding: str | tuple[np.ndarray, str] | Callable[[sp.csr_matrix], tuple[np.ndarray, str]] = "svd",
    alpha: float = 4.0,
    history_frac: float = 0.5,
    n_train_days: int = 5,
    n_test_days: int = 3,
    test_frac: float = 0.5,
    valid_pool_frac: float = 0.1,
    random_frac: float = 0.5,
    upsample_frac: float = 0.5,
    active_quantile: float = 0.75,
) -> TwoTowerData:
    """The timestamp-day ML-1M data (module docstring of :mod:`tall_jax.two_tower.ml1m`).

    ``user_embedding``: ``"svd"``, a precomputed ``(emb[U, F], name)`` (the history does not depend on
    ``seed``: compute it once), or ``embed(history[U, I]) -> (emb, name)``, called on the history
    matrix -- the way a caller hands in a trained embedding such as
    :func:`tall_jax.two_tower.embedding.multvae_history_embedding` (this data builder trains nothing)."""
    arr, path = read_timed_ratings(data_dir)
    uid, mid, ts = arr[:, 0], arr[:, 1], arr[:, 3]
    n_u = int(uid.max())
    movies = np.unique(mid)
    u, t = (uid - 1).astype(np.int64), np.searchsorted(movies, mid)
    n_i = len(movies)
    order = np.lexsort((t, ts, u))  # per user, by time
    u, t, ts = u[order], t[order], ts[order]
    n_per_U = np.bincount(u, minlength=n_u)
    rank = np.arange(len(u)) - np.r_[0, np.cumsum(n_per_U)[:-1]][u]
    is_hist = rank < np.ceil(history_frac * n_per_U[u])
    ones = lambda m: sp.csr_matrix((np.ones(int(m.sum()), np.float32), (u[m], t[m])), shape=(n_u, n_i))  # noqa: E731
    history, everything = ones(is_hist), ones(np.ones(len(u), bool))
    n_days = n_train_days + n_test_days
    disc = ~is_hist
    edges = np.quantile(ts[disc], np.linspace(0, 1, n_days + 1)[1:-1])
    day_R = np.searchsorted(edges, ts, side="right")
    if callable(user_embedding):
        emb, emb_name = user_embedding(history)
    elif isinstance(user_embedding, str):
        emb, emb_name = history_embedding(history, user_embedding)
    else:
        emb, emb_name = user_embedding
    emb = np.asarray(emb, np.float32)
    user_x = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    terr_U = user_territories(n_u, data_dir)
    territory_group = territory_groups()
    item_x = title_features(movies, data_dir)
    rng = np.random.default_rng(seed)
    # test users: a random share of the users with discoveries in the test window, each on its first
    # test day; the others are split into training and validation pools
    n_hist_U = np.diff(history.indptr)
    active_U = n_hist_U >= max(np.quantile(n_hist_U, active_quantile), 1)
    late = disc & (day_R >= n_train_days)
    first_test_day_U = np.full(n_u, n_days)
    np.minimum.at(first_test_day_U, u[late], day_R[late])
    candidates = np.nonzero(first_test_day_U < n_days)[0]
    test_pool = rng.choice(candidates, size=int(round(test_frac * len(candidates))), replace=False)
    rest = rng.permutation(np.setdiff1d(np.arange(n_u), test_pool))
    n_valid = int(round(valid_pool_frac * n_u))
    valid_pool, pool = rest[:n_valid], rest[n_valid:]
    in_pool = np.zeros(n_u, np.int64)  # 0 train, 1 valid, 2 test
    in_pool[valid_pool], in_pool[test_pool] = 1, 2
    test_day_U = np.where(in_pool == 2, first_test_day_U, -1)
    seen = everything.copy()
    seen.sort_indices()
    is_seen = lambda a, b: np.asarray(seen[a, b]).ravel() > 0  # noqa: E731
    cands = (np.arange(n_i)[None, :], np.array([n_i]), np.zeros(n_u, np.int64))
    days, day_info, test_pos = [], [], []
    for d in range(n_days):
        m = disc & (day_R == d)
        pos_d = ones(m)
        present = np.unique(u[m])

        def examples(users: np.ndarray) -> PairSet:
            pos = positives_of(users.astype(np.int64), pos_d)
            return pos.concat(sample_negatives(users, int(round(alpha * pos.n_pos)), cands, is_seen, rng))

        day_train = np.sort(present[in_pool[present] == 0])
        random_users = np.sort(rng.choice(day_train, size=int(random_frac * len(day_train)), replace=False))
        n_eligible = int(active_U[day_train].sum() - active_U[random_users].sum())
        _, added = upsample_active_users(random_users, day_train, active_U, int(upsample_frac * n_eligible), rng)
        plain = examples(random_users)
        valid_u = np.sort(present[in_pool[present] == 1])
        test_u = np.sort(present[test_day_U[present] == d]) if d >= n_train_days else np.zeros(0, np.int64)
        day = Day(plain, plain.concat(examples(added)), examples(valid_u),
                  examples(test_u) if len(test_u) else empty_pairs(), test_u,
                  (sp.diags(np.isin(np.arange(n_u), test_u).astype(np.float32)) @ pos_d).tocsr() if len(test_u) else None,
                  label=f"day {d}")
        if len(test_u):
            test_pos.append(day.positives)
        days.append(day)
        lo = int(ts[m].min()) if m.any() else None
        hi = int(ts[m].max()) if m.any() else None
        day_info.append({"day": d, "is_test": d >= n_train_days, "first_ts": lo, "last_ts": hi,
                         "n_users_plain": len(random_users), "n_users_added_active": len(added),
                         "train_plain": {"n": len(plain), "n_pos": plain.n_pos},
                         "train_upsampled": {"n": len(day.train_upsampled), "n_pos": day.train_upsampled.n_pos},
                         "valid": {"n": len(day.valid), "n_pos": day.valid.n_pos},
                         "test": {"n": len(day.test), "n_pos": day.test.n_pos, "users": len(test_u)}})
    exclude = (everything - sum(test_pos[1:], test_pos[0])).tocsr() if test_pos else everything
    exclude.eliminate_zeros()
    # case titles: lift from the training pool's ratings before the first test day (no test labels)
    before = (np.isin(u, pool)) & (is_hist | (day_R < n_train_days))
    train_counts = ones(before)
    test_counts = sum(test_pos[1:], test_pos[0]) if test_pos else sp.csr_matrix((n_u, n_i))
    case = _case_titles_from_counts(train_counts, test_counts, terr_U, movies)
    info: dict[str, Any] = {
        "ratings_file": path.name, "users": n_u, "titles": n_i, "ratings": len(u),
        "history_frac": history_frac, "user_embedding": emb_name, "user_embedding_dim": int(emb.shape[1]),
        "day_rule": f"{n_days} equal-count windows of the discovery timestamps", "day_edges_ts": edges.astype(int).tolist(),
        "zip_groups": {k: list(v) for k, v in ZIP_GROUPS.items()}, "territory_users": np.bincount(terr_U, minlength=10).tolist(),
        "alpha": alpha, "seed": seed, "active_rule": f"history count >= {active_quantile:.2f}-quantile (>= 1)",
        "active_users": int(active_U.sum()),
        "pools": {"train": len(pool), "valid": len(valid_pool), "test": len(test_pool)}, "days": day_info,
    }
    return TwoTowerData("ml-1m", user_x, item_x, terr_U, territory_group, [f"Z{d}" for d in range(10)],
                        list(ZIP_GROUPS), days, n_test_days, exclude, case, info)


def _case_titles_from_counts(train_counts: sp.csr_matrix, test_counts: sp.csr_matrix, terr_U: np.ndarray,
                             movie_I: np.ndarray, min_pos: int = 5) -> list[dict[str, Any]]:
    """Paper §4.4 on ML-1M: in the largest region and the largest region of another group, the most "local"
    title (highest training lift: region share of its interactions over the region's share of all) with
    at least ``min_pos`` test positives in the region, and the title with lift closest to 1 whose
    test-positive count there is closest to it ("global", comparable positive counts)."""
    per_region = np.stack([np.asarray(train_counts[terr_U == r].sum(0)).ravel() for r in range(10)])
    lift_RxI = (per_region / np.maximum(per_region.sum(0, keepdims=True), 1)) / (
        per_region.sum(1, keepdims=True) / max(per_region.sum(), 1))
    sizes = np.bincount(terr_U, minlength=10)
    group_of = {r: g for g, rs in enumerate(ZIP_GROUPS.values()) for r in rs}
    picks = [int(np.argmax(sizes))]
    picks.append(int([r for r in np.argsort(-sizes) if group_of[int(r)] != group_of[picks[0]]][0]))
    out = []
    for r in picks:
        cnt_I = np.asarray(test_counts[terr_U == r].sum(0)).ravel()
        ok = (cnt_I >= min_pos) & (per_region.sum(0) >= 30)
        if not ok.any():
            continue
        lt = int(np.nonzero(ok)[0][np.argmax(lift_RxI[r, ok])])
        near = (np.abs(np.log(np.maximum(lift_RxI[r], 1e-6))) < 0.1) & (np.arange(len(cnt_I)) != lt) & (per_region.sum(0) >= 30)
        if not near.any():
            continue
        gt = int(np.nonzero(near)[0][np.argmin(np.abs(cnt_I[near] - cnt_I[lt]))])
        for kind, t in (("local", lt), ("global", gt)):
            out.append({"title": t, "territory": r, "kind": kind, "movie_id": int(movie_I[t]),
                        "lift": float(lift_RxI[r, t]), "n_test_pos": int(cnt_I[t]), "name": f"{kind} title in Z{r}"})
    return out
