"""The MovieLens-1M adaptation of the multi-territory protocol (docs/fidelity.md#two-tower-synthetic).

Two builders:

- ``make_ml1m_days`` (the default): days from the rating timestamps of a raw ``ratings.dat`` (the full
  file, or the staged partial file of users 1-2999 when only that exists). Each user's earliest
  ``history_frac`` ratings are the history behind the user embedding; every later rating is a first-time
  "discovery" positive on its day. Days are ``n_train_days + n_test_days`` consecutive time windows with
  equal numbers of discoveries (ML-1M activity is very bursty: most of it falls in late 2000, so calendar
  days would leave most days nearly empty). Users are split into disjoint training, validation and test
  pools: the test users are a random ``test_frac`` of the users with discoveries in the test window, each
  evaluated on one test day only (its first with discoveries); the rest are split into a validation pool
  (``valid_pool_frac`` of all users) and the training pool.
- ``make_ml1m_two_tower`` (``--ml1m-days split``, the earlier one-shot adaptation): the TALL authors'
  random split, one training "day" (test-split positives of the training pool) and three test "days"
  that are disjoint user sets, not time windows.

Common to both:

- Territories: the first digit of the zip code in ``users.dat`` (US ZIP prefixes 0..9, all 6,040 users
  have a numeric zip). Groups (US geography, each mixing a large and small regions):
  Northeast {0: New England/NJ/PR, 1: NY/PA/DE}; South {2: DC/MD/VA/WV/NC/SC, 3: FL/GA/AL/TN/MS,
  7: TX/OK/AR/LA}; Midwest {4: MI/OH/IN/KY, 5: MN/WI/IA/Dakotas/MT, 6: IL/MO/KS/NE};
  West {8: CO/AZ/UT/NM/NV/ID/WY, 9: CA/OR/WA/AK/HI}.
- Title features: 18 genre indicators from ``movies.dat`` + the release year parsed from the title
  ("(1995)"), standardised. TALL item ids are mapped to MovieIDs by first appearance in a raw
  ``ratings.dat`` found in the data dir (full or the staged partial file), else by the derived table
  ``ml-1m/derived/tall_item_to_movie_id.csv``; items without a MovieID are left out of every example.
- User features: a pre-trained user embedding of the train split (default: the MultVAE mu from
  ``tall_jax.fit`` / ``tall_jax.vae.user_embeddings``; fallback: truncated SVD of the train matrix).
- Examples: users are split into a training pool and ``n_test_days`` disjoint test "days"; positives are
  the user's held-out (test-split) interactions, negatives are uniform unseen titles at ratio ``alpha``.
  "Active" users (paper §3.2: recent activity) are those whose validation-split count (the proxy for a
  recent window) is in the top ``1 - active_quantile``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from tall_jax.datasets.cache import find_file
from tall_jax.datasets.readers import read_ml1m_movies, read_ml1m_ratings, read_ml1m_users
from tall_jax.two_tower.data import (
    Day, PairSet, TwoTowerData, empty_pairs, positives_of, sample_negatives, upsample_active_users,
)

ZIP_GROUPS = {"Northeast": (0, 1), "South": (2, 3, 7), "Midwest": (4, 5, 6), "West": (8, 9)}
GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def _need(rel: list[str], data_dir, what: str) -> Path:
    path, looked = find_file(rel, data_dir)
    if path is None:
        raise FileNotFoundError(f"ML-1M two-tower: {what} not found; looked at: {', '.join(map(str, looked))}")
    return path


def item_movie_ids(n_items: int, data_dir) -> tuple[np.ndarray, str]:
    """``movie_id[I]`` (-1 where unknown) for TALL item ids, and which source resolved them."""
    movie_I = np.full(n_items, -1, np.int64)
    raw, _ = find_file(["ml-1m/raw/ratings.dat", "ml-1m/ratings.dat", "ml-1m/raw/ratings_users_1-2999.dat"], data_dir)
    if raw is not None:
        _, movies_R = read_ml1m_ratings(raw)
        _, first = np.unique(movies_R, return_index=True)
        order = movies_R[np.sort(first)][:n_items]
        movie_I[: len(order)] = order
        source = f"first appearance in {raw.name}"
    derived, _ = find_file(["ml-1m/derived/tall_item_to_movie_id.csv"], data_dir)
    if derived is not None and (movie_I < 0).any():
        rows = np.genfromtxt(derived, delimiter=",", names=True, dtype=None, encoding="utf-8")
        ok = (rows["status"] == "exact") & (rows["tall_item"] < n_items)
        fill = ok & (movie_I[np.minimum(rows["tall_item"], n_items - 1)] < 0)
        movie_I[rows["tall_item"][fill]] = rows["movie_id"][fill].astype(np.int64)
        source = (source + " + " if raw is not None else "") + derived.name
    if raw is None and derived is None:
        raise FileNotFoundError("ML-1M two-tower: need ml-1m/raw/ratings.dat (or the partial raw file) or "
                                "ml-1m/derived/tall_item_to_movie_id.csv in the data dir to map items to movies")
    return movie_I, source


def title_features(movie_I: np.ndarray, data_dir) -> np.ndarray:
    """``[I, 19]`` float32: genre one-hot (GENRES order) and the standardised year (0 where unknown)."""
    movies = read_ml1m_movies(_need(["ml-1m/raw/movies.dat", "ml-1m/movies.dat"], data_dir, "movies.dat"))
    row_of = {int(m): r for r, m in enumerate(movies["movie_id"])}
    x = np.zeros((len(movie_I), len(GENRES) + 1), np.float32)
    years = np.full(len(movie_I), np.nan)
    for i, m in enumerate(movie_I):
        r = row_of.get(int(m))
        if r is None:
            continue
        for g in movies["genres"][r].split("|"):
            if g in GENRES:
                x[i, GENRES.index(g)] = 1.0
        found = re.search(r"\((\d{4})\)\s*$", movies["title"][r])
        years[i] = float(found.group(1)) if found else np.nan
    ok = np.isfinite(years)
    x[ok, -1] = (years[ok] - years[ok].mean()) / (years[ok].std() + 1e-8)
    return x


def user_territories(n_users: int, data_dir) -> np.ndarray:
    """Zip-code region (first digit) of users 0..N-1 (user u is MovieLens UserID u + 1)."""
    users = read_ml1m_users(_need(["ml-1m/raw/users.dat", "ml-1m/users.dat"], data_dir, "users.dat"))
    terr = np.full(n_users, -1, np.int64)
    for uid, z in zip(users["user_id"], users["zip"]):
        if 1 <= uid <= n_users and z[:1].isdigit():
            terr[uid - 1] = int(z[0])
    if (terr < 0).any():
        raise ValueError(f"users.dat: {int((terr < 0).sum())} users have no numeric zip code / no row")
    return terr


def svd_user_embedding(train: sp.csr_matrix, dim: int = 64) -> np.ndarray:
    """Fallback embedding: ``U_k sqrt(S_k)`` of the truncated SVD of the binary train matrix."""
    from scipy.sparse.linalg import svds

    u, s, _ = svds(train.astype(np.float64), k=dim, random_state=0)
    return (u * np.sqrt(s)).astype(np.float32)


def multvae_user_embedding(dataset, *, max_epochs: int = 50, progress: bool = True) -> np.ndarray:
    """MultVAE mu of every user, trained on the train split (early stopping on validation)."""
    from tall_jax.configs import make_config
    from tall_jax.fit import fit
    from tall_jax.vae import user_embeddings

    result = fit(dataset, make_config("ml-1m", "multvae", max_epochs=max_epochs), progress=progress)
    return user_embeddings(result.best_params, dataset.train)


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
    territory_group = np.zeros(10, np.int64)
    for g, regions in enumerate(ZIP_GROUPS.values()):
        territory_group[list(regions)] = g
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


# ------------------------------------------------------------------------------------- days from timestamps

RAW_RATINGS = ["ml-1m/raw/ratings.dat", "ml-1m/ratings.dat", "ml-1m/raw/ratings_users_1-2999.dat"]


def read_timed_ratings(data_dir) -> tuple[np.ndarray, Path]:
    """``[R, 4]`` int64 (UserID, MovieID, rating, Unix time) of the first raw ``ratings.dat`` found
    (full file first, then the staged partial file of users 1-2999), and its path."""
    import gzip

    path = _need(RAW_RATINGS, data_dir, "a raw ratings.dat with timestamps")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="latin-1") as f:
        text = f.read().replace("::", ",")
    arr = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    if arr.shape[1] != 4:
        raise ValueError(f"{path}: expected UserID::MovieID::Rating::Timestamp, got {arr.shape[1]} fields")
    return arr, path


def history_embedding(history: sp.csr_matrix, kind: str = "svd", *, dim: int = 64, vae_epochs: int = 50,
                      progress: bool = True) -> tuple[np.ndarray, str]:
    """User features from the history matrix only: ``svd`` (``U_k sqrt(S_k)``) or ``multvae`` (MultVAE mu,
    trained on the history with each user's last tenth of history items as validation)."""
    if kind == "svd":
        return svd_user_embedding(history, dim), f"svd{dim} of the history"
    if kind != "multvae":
        raise ValueError(f"user embedding must be 'svd' or 'multvae', got {kind!r}")
    from tall_jax.datasets.base import Dataset

    rng = np.random.default_rng(0)
    coo = history.tocoo()
    hold = rng.random(coo.nnz) < 0.1
    part = lambda m: sp.csr_matrix((np.ones(int(m.sum()), np.float32), (coo.row[m], coo.col[m])),  # noqa: E731
                                   shape=history.shape)
    ds = Dataset("ml-1m-history", "history", 0, part(~hold), part(hold), sp.csr_matrix(history.shape, dtype=np.float32))
    return multvae_user_embedding(ds, max_epochs=vae_epochs, progress=progress), "multvae_mu of the history"


def make_ml1m_days(
    data_dir,
    *,
    seed: int = 0,
    user_embedding: str | tuple[np.ndarray, str] = "svd",
    alpha: float = 4.0,
    history_frac: float = 0.5,
    n_train_days: int = 5,
    n_test_days: int = 3,
    test_frac: float = 0.5,
    valid_pool_frac: float = 0.1,
    random_frac: float = 0.5,
    upsample_frac: float = 0.5,
    active_quantile: float = 0.75,
    progress: bool = True,
) -> TwoTowerData:
    """The timestamp-day ML-1M data (module docstring). ``user_embedding`` is ``"svd"``, ``"multvae"`` or
    a precomputed ``(emb[U, F], name)`` (the history does not depend on ``seed``: compute it once)."""
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
    if isinstance(user_embedding, str):
        emb, emb_name = history_embedding(history, user_embedding, progress=progress)
    else:
        emb, emb_name = user_embedding
    emb = np.asarray(emb, np.float32)
    user_x = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    terr_U = user_territories(n_u, data_dir)
    territory_group = np.zeros(10, np.int64)
    for g, regions in enumerate(ZIP_GROUPS.values()):
        territory_group[list(regions)] = g
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
