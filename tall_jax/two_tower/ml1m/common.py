"""What both ML-1M two-tower builders share: territories from zip codes, title features, the TALL item
to MovieID map, the SVD user embedding and the raw timed ratings (module docstring of
:mod:`tall_jax.two_tower.ml1m`)."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from tall_jax.datasets.cache import find_file
from tall_jax.datasets.readers import read_ml1m_movies, read_ml1m_ratings, read_ml1m_users

ZIP_GROUPS = {"Northeast": (0, 1), "South": (2, 3, 7), "Midwest": (4, 5, 6), "West": (8, 9)}
GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def need(rel: list[str], data_dir, what: str) -> Path:
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
    movies = read_ml1m_movies(need(["ml-1m/raw/movies.dat", "ml-1m/movies.dat"], data_dir, "movies.dat"))
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
    users = read_ml1m_users(need(["ml-1m/raw/users.dat", "ml-1m/users.dat"], data_dir, "users.dat"))
    terr = np.full(n_users, -1, np.int64)
    for uid, z in zip(users["user_id"], users["zip"]):
        if 1 <= uid <= n_users and z[:1].isdigit():
            terr[uid - 1] = int(z[0])
    if (terr < 0).any():
        raise ValueError(f"users.dat: {int((terr < 0).sum())} users have no numeric zip code / no row")
    return terr


def svd_user_embedding(train: sp.csr_matrix, dim: int = 64) -> np.ndarray:
    """Fallback embedding: ``U_k sqrt(S_k)`` of the truncated SVD of the binary train matrix."""
    u, s, _ = svds(train.astype(np.float64), k=dim, random_state=0)
    return (u * np.sqrt(s)).astype(np.float32)


def territory_groups() -> np.ndarray:
    """``group[10]``: the index in ``ZIP_GROUPS`` of each zip-code region 0..9."""
    territory_group = np.zeros(10, np.int64)
    for g, regions in enumerate(ZIP_GROUPS.values()):
        territory_group[list(regions)] = g
    return territory_group


RAW_RATINGS = ["ml-1m/raw/ratings.dat", "ml-1m/ratings.dat", "ml-1m/raw/ratings_users_1-2999.dat"]


def read_timed_ratings(data_dir) -> tuple[np.ndarray, Path]:
    """``[R, 4]`` int64 (UserID, MovieID, rating, Unix time) of the first raw ``ratings.dat`` found
    (full file first, then the staged partial file of users 1-2999), and its path."""
    path = need(RAW_RATINGS, data_dir, "a raw ratings.dat with timestamps")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="latin-1") as f:
        text = f.read().replace("::", ",")
    arr = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    if arr.shape[1] != 4:
        raise ValueError(f"{path}: expected UserID::MovieID::Rating::Timestamp, got {arr.shape[1]} fields")
    return arr, path
