"""The synthetic multi-territory data of the two-tower study, with days (docs/fidelity.md#two-tower-synthetic):
territories of very different sizes in groups, global and local titles, a small active fraction,
and per-day first-time positives whose title logits drift day to day."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp

from tall_jax.two_tower.data import PairSet, Day, TwoTowerData, empty_pairs, sample_negatives, upsample_active_users, positives_of, csr_lookup


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """docs/fidelity.md#two-tower-synthetic generator, with days. Sizes are chosen so a 5-seed study of four models trains on 2 shared
    CPU cores in a few minutes."""

    n_users: int = 40_000  # user universe (train pool + validation pool + test pool)
    group_size_pattern: tuple[float, ...] = (10.0, 3.0, 1.5, 1.0)  # relative territory sizes in a group
    group_scale: tuple[float, ...] = (1.0, 0.8, 0.9, 0.7)  # relative group sizes; G = len(group_scale)
    n_global_titles: int = 40  # available in every territory
    n_local_per_territory: int = 4  # available only in their home territory
    latent: int = 16  # k, latent taste dimension
    user_dim: int = 32  # F_u, observed user-feature width
    item_dim: int = 32  # F_i, observed title-feature width
    active_frac: float = 0.12  # share of users with a high latent activity
    active_logit: float = -4.5  # activity offset of active users
    inactive_logit: float = -11.0  # activity offset of the others
    history_days: int = 14  # recent window used to call a user "active" (>= 1 positive in it)
    taste_scale: float = 1.5  # scale of <z_u, M_g v_t> / sqrt(k)
    group_rotation: float = 0.8  # rho: M_g = (1 - rho) I + rho R_g, the group-specific taste transform
    group_shift_sd: float = 0.8  # sd of group-level title popularity shifts c[g, t]
    territory_shift_sd: float = 0.4  # sd of territory-level shifts c[tau, t]
    local_boost: float = 1.0  # extra logit of a local title in its home territory
    feature_noise: float = 0.5  # sd of the noise added to the projected features
    day_drift_sd: float = 0.3  # sd of the daily random-walk step of each title's logit (daily patterns)
    train_pool_frac: float = 0.5  # users eligible for training days
    valid_pool_frac: float = 0.1  # held-out validation users (early stopping); the rest are test users
    random_frac: float = 0.6  # share of the train pool in each day's plain random sample
    upsample_frac: float = 0.5  # share of the remaining active users added by upsampling, each day
    n_train_days: int = 3  # days before the first test day (the last one also validates)
    n_test_days: int = 3
    alpha: float = 4.0  # negatives per positive (docs/fidelity.md#two-tower-inputs)


def _synthetic_world(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, Any]:
    g_n = len(cfg.group_scale)
    per = len(cfg.group_size_pattern)
    t_n = g_n * per
    territory_group = np.repeat(np.arange(g_n), per)
    size_T = np.outer(cfg.group_scale, cfg.group_size_pattern).ravel()
    user_territory = rng.choice(t_n, size=cfg.n_users, p=size_T / size_T.sum())
    k = cfg.latent
    n_loc = cfg.n_local_per_territory * t_n
    i_n = cfg.n_global_titles + n_loc
    home_I = np.r_[np.full(cfg.n_global_titles, -1), np.repeat(np.arange(t_n), cfg.n_local_per_territory)]
    available_TxI = (home_I[None, :] == -1) | (home_I[None, :] == np.arange(t_n)[:, None])
    terr_emb_TxK = rng.normal(size=(t_n, k)) * 0.7
    group_emb_GxK = rng.normal(size=(g_n, k))
    z_UxK = rng.normal(size=(cfg.n_users, k)) + 0.5 * (group_emb_GxK[territory_group] + terr_emb_TxK)[user_territory]
    v_IxK = rng.normal(size=(i_n, k))
    v_IxK[cfg.n_global_titles:] += terr_emb_TxK[home_I[cfg.n_global_titles:]]  # local titles match local taste
    rot_GxKxK = np.stack([(1 - cfg.group_rotation) * np.eye(k) + cfg.group_rotation * rng.normal(size=(k, k)) / np.sqrt(k)
                          for _ in range(g_n)])
    b_I = rng.normal(size=i_n) * 0.5 + np.where(home_I >= 0, cfg.local_boost, 0.0)
    shift_GxI = rng.normal(size=(g_n, i_n)) * cfg.group_shift_sd
    shift_TxI = rng.normal(size=(t_n, i_n)) * cfg.territory_shift_sd
    n_days = cfg.n_train_days + cfg.n_test_days
    day_DxI = np.cumsum(np.r_[np.zeros((1, i_n)), rng.normal(size=(n_days - 1, i_n)) * cfg.day_drift_sd], axis=0)
    active_U = rng.random(cfg.n_users) < cfg.active_frac
    act_U = np.where(active_U, cfg.active_logit, cfg.inactive_logit) + rng.normal(size=cfg.n_users) * 0.5
    return dict(t_n=t_n, g_n=g_n, i_n=i_n, territory_group=territory_group, user_territory=user_territory,
                home_I=home_I, available_TxI=available_TxI, terr_emb_TxK=terr_emb_TxK, z_UxK=z_UxK, v_IxK=v_IxK,
                rot_GxKxK=rot_GxKxK, b_I=b_I, shift_GxI=shift_GxI, shift_TxI=shift_TxI, day_DxI=day_DxI, act_U=act_U)


def _propensity(w: dict[str, Any], cfg: SyntheticConfig, users: np.ndarray, day: int = 0) -> np.ndarray:
    """``p[u, t] = sigmoid(act_u + s <z_u, M_g v_t>/sqrt(k) + b_t + c[g,t] + c[tau,t] + r[day,t])``, 0 if
    unavailable; ``r`` is a per-title random walk over days (day 0: 0)."""
    terr = w["user_territory"][users]
    grp = w["territory_group"][terr]
    zr_UxK = np.einsum("uk,ukl->ul", w["z_UxK"][users], w["rot_GxKxK"][grp])
    logit = (w["act_U"][users, None] + cfg.taste_scale * zr_UxK @ w["v_IxK"].T / np.sqrt(cfg.latent)
             + w["b_I"][None] + w["shift_GxI"][grp] + w["shift_TxI"][terr] + w["day_DxI"][day][None])
    return np.where(w["available_TxI"][terr], 1.0 / (1.0 + np.exp(-logit)), 0.0)


def _project(raw_NxR: np.ndarray, dim: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    proj = rng.normal(size=(raw_NxR.shape[1], dim)) / np.sqrt(raw_NxR.shape[1])
    x = raw_NxR @ proj + noise * rng.normal(size=(raw_NxR.shape[0], dim))
    return ((x - x.mean(0)) / (x.std(0) + 1e-8)).astype(np.float32)


def make_synthetic_two_tower(cfg: SyntheticConfig = SyntheticConfig(), seed: int = 0) -> TwoTowerData:
    """docs/fidelity.md#two-tower-synthetic: territories of very different sizes in G groups, global vs local titles, group- and
    territory-specific taste shifts, a small active fraction, and days with their own positives.

    Users fall into three disjoint pools: training, validation and test; the test pool is cut into one
    disjoint slice per test day. Each day ``d`` a random sample of the training pool (plus, for the
    upsampled set, a disjoint sample of the remaining active users), every validation user and, on a test
    day, that day's test users draw one Bernoulli label per available title from the day's propensity
    (``_propensity``: the title logits drift by a random walk from day to day). Labels are first-time
    discoveries: a title a user discovered on an earlier day is never a positive again and is never
    sampled as a negative. "Active" = at least one positive in a ``history_days`` window before day 0
    (Poisson with the user's daily expected count), so activity is observed, noisily, as in the paper.
    """
    rng = np.random.default_rng(seed)
    w = _synthetic_world(cfg, rng)
    n_u, i_n = cfg.n_users, w["i_n"]
    n_days = cfg.n_train_days + cfg.n_test_days
    if cfg.n_train_days < 1 or cfg.n_test_days < 1:
        raise ValueError("SyntheticConfig: need n_train_days >= 1 and n_test_days >= 1")
    perm = rng.permutation(n_u)
    n_train, n_valid = int(cfg.train_pool_frac * n_u), int(cfg.valid_pool_frac * n_u)
    pool, valid_pool = np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_valid])
    test_users = [np.sort(d) for d in np.array_split(perm[n_train + n_valid:], cfg.n_test_days)]
    hist = np.zeros(n_u)
    for start in range(0, n_u, 20_000):
        users = np.arange(start, min(start + 20_000, n_u))
        hist[users] = rng.poisson(cfg.history_days * _propensity(w, cfg, users, 0).sum(1))
    active_U = hist >= 1
    user_x = _project(np.c_[w["z_UxK"], np.log1p(hist), w["terr_emb_TxK"][w["user_territory"]]],
                      cfg.user_dim, cfg.feature_noise, rng)
    home_emb = np.where(w["home_I"][:, None] >= 0, w["terr_emb_TxK"][np.maximum(w["home_I"], 0)], 0.0)
    item_x = _project(np.c_[w["v_IxK"], w["b_I"], w["home_I"] >= 0, home_emb], cfg.item_dim, cfg.feature_noise, rng)

    avail = [np.nonzero(row)[0] for row in w["available_TxI"]]
    items_TxA = np.zeros((w["t_n"], max(map(len, avail))), np.int64)
    for t, a in enumerate(avail):
        items_TxA[t, : len(a)] = a
    counts_T = np.array([len(a) for a in avail])
    discovered = sp.csr_matrix((n_u, i_n), dtype=np.float32)
    days, day_info = [], []
    for d in range(n_days):
        test_d = test_users[d - cfg.n_train_days] if d >= cfg.n_train_days else np.zeros(0, np.int64)
        random_users = np.sort(rng.choice(pool, size=int(cfg.random_frac * len(pool)), replace=False))
        n_eligible = int(np.sum(active_U[pool])) - int(np.sum(active_U[random_users]))
        _, added = upsample_active_users(random_users, pool, active_U, int(cfg.upsample_frac * n_eligible), rng)
        present = np.sort(np.concatenate([random_users, added, valid_pool, test_d])).astype(np.int64)
        p_UxI = _propensity(w, cfg, present, d) * (np.asarray(discovered[present].todense()) == 0)
        draw = sp.coo_matrix(rng.random(p_UxI.shape) < p_UxI)
        label_csr = sp.csr_matrix((np.ones(draw.nnz, np.float32), (present[draw.row], draw.col)), shape=(n_u, i_n))
        seen = csr_lookup(discovered + label_csr)

        def examples(users: np.ndarray) -> PairSet:
            pos = positives_of(users, label_csr)
            neg = sample_negatives(users, int(round(cfg.alpha * pos.n_pos)),
                                   (items_TxA, counts_T, w["user_territory"][users]), seen, rng)
            return pos.concat(neg)

        plain = examples(random_users)
        day = Day(plain, plain.concat(examples(added)), examples(valid_pool), examples(test_d) if len(test_d) else empty_pairs(),
                  test_d, label_csr if len(test_d) else None, label=f"day {d}")
        days.append(day)
        day_info.append({"day": d, "is_test": d >= cfg.n_train_days, "n_users_plain": len(random_users),
                         "n_users_added_active": len(added), "train_plain": {"n": len(plain), "n_pos": plain.n_pos},
                         "train_upsampled": {"n": len(day.train_upsampled), "n_pos": day.train_upsampled.n_pos},
                         "valid": {"n": len(day.valid), "n_pos": day.valid.n_pos},
                         "test": {"n": len(day.test), "n_pos": day.test.n_pos}})
        discovered = (discovered + label_csr).tocsr()
    territory_names = [f"T{t + 1}" for t in range(w["t_n"])]
    case = _synthetic_case_titles(w, days[cfg.n_train_days:], territory_names)
    info = {
        "generator": dataclasses.asdict(cfg), "seed": seed, "n_titles": i_n,
        "territory_size_weight": np.outer(cfg.group_scale, cfg.group_size_pattern).ravel().round(3).tolist(),
        "active_fraction_observed": float(active_U.mean()),
        "pools": {"train": len(pool), "valid": len(valid_pool), "test": [len(t) for t in test_users]},
        "days": day_info,
    }
    return TwoTowerData("synthetic", user_x, item_x, w["user_territory"], w["territory_group"], territory_names,
                        [f"G{g + 1}" for g in range(w["g_n"])], days, cfg.n_test_days, None, case, info)


def _synthetic_case_titles(w, test_days: list[Day], territory_names) -> list[dict[str, Any]]:
    """Paper §4.4: in two minor territories of different groups, the local title with most test
    positives and the global title whose test-positive count there is closest to it ("comparable
    positive examples")."""
    t_n, g_n = w["t_n"], w["g_n"]
    per = t_n // g_n
    out = []
    for terr in (per - 1, 2 * per - 1):  # the smallest territory of groups 1 and 2
        cnt_I = np.zeros(w["i_n"])
        for day in test_days:
            u = day.test_users[w["user_territory"][day.test_users] == terr]
            cnt_I += np.asarray(day.positives[u].sum(0)).ravel()
        local = np.nonzero(w["home_I"] == terr)[0]
        lt = int(local[np.argmax(cnt_I[local])])
        glob = np.nonzero(w["home_I"] == -1)[0]
        gt = int(glob[np.argmin(np.abs(cnt_I[glob] - cnt_I[lt]))])
        for kind, title in (("local", lt), ("global", gt)):
            out.append({"title": title, "territory": terr, "kind": kind, "n_test_pos": int(cnt_I[title]),
                        "name": f"{kind} title in {territory_names[terr]}"})
    return out


if __name__ == "__main__":
    # why: `python -m tall_jax.two_tower.synthetic --out DIR` writes a large log (synthetic_log, which
    # imports this module); running it by name keeps the import graph free of a cycle
    import runpy

    runpy.run_module("tall_jax.two_tower.synthetic_log", run_name="__main__")
