"""The incremental protocol on your own log (docs/two_tower.md#your-own-logs): pools, daily samples,
upsampling, negatives and groups, from a :class:`~tall_jax.two_tower.log_cache.LogCache`.

Rules (one seed):

- Days are the log's distinct day values in order; the last ``n_test_days`` are test days.
- Users: a random ``test_frac`` of the users with rows on a test day form the test pool, each tested
  on its first test day with rows (its other rows are not used); a random ``valid_frac`` of all other
  users form the validation pool; the rest are the training pool (the ML-1M days rule).
- Each day: a random ``random_frac`` of the training-pool users with rows that day are the plain
  sample; upsampling adds a disjoint sample of ``upsample_frac`` of that day's other active users,
  "active" meaning at least ``active_threshold`` positives on the days before (none on day 0). Every
  validation user with rows that day validates, and on a test day every test user whose day it is.
- Examples are the rows of those users that day. A log without a label column gets ``alpha`` sampled
  negatives per positive: the user of a positive, a title seen (as a positive) in the user's
  territory, dropped if that pair is a positive anywhere in the log.
- Groups: from a ``territory -> group`` map, or by size: territories sorted by their number of users
  (largest first, ties by name) and cut into ``n_groups`` groups of (nearly) equal numbers of
  territories, ``G1`` holding the largest.

The examples are written once per seed and settings beside the cache (``examples-<hash>/``) and stay
on disk (:class:`~tall_jax.two_tower.shards.Column`): training examples are read window by window,
validation and test examples whole when they are scored.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tall_jax.files import atomic_write_text
from tall_jax.identity import short_hash
from tall_jax.two_tower.data import Day, PairSet, TwoTowerData, empty_pairs, upsample_active_users
from tall_jax.two_tower.log_cache import LogCache
from tall_jax.two_tower.logs import read_feature_file
from tall_jax.two_tower.shards import Chain, Column, NpyWriter, Rows, remove_tree, replace_dir

ROLES = ("plain", "added", "valid", "test")
EXAMPLES_VERSION = 3  # part of the examples folder's key: bump when the rules change


@dataclasses.dataclass(frozen=True)
class LogProtocol:
    """The knobs of the rules in the module docstring."""

    n_test_days: int = 3
    valid_frac: float = 0.1
    test_frac: float = 0.5
    random_frac: float = 0.5
    upsample_frac: float = 0.5
    active_threshold: int = 1
    alpha: float = 4.0


def groups_by_size(users_T: np.ndarray, names: list[str], n_groups: int) -> np.ndarray:
    """``group_T``: territories by number of users (largest first, ties by name) cut into ``n_groups``
    nearly equal runs; group 0 holds the largest."""
    t_n = len(users_T)
    if not 1 <= n_groups <= t_n:
        raise ValueError(f"--n-groups {n_groups}: need 1..{t_n} (the log has {t_n} territories)")
    order = sorted(range(t_n), key=lambda t: (-int(users_T[t]), names[t]))
    group_T = np.empty(t_n, np.int64)
    group_T[order] = np.arange(t_n) * n_groups // t_n
    return group_T


def groups_from_map(mapping: dict[str, str], names: list[str], source: str) -> tuple[np.ndarray, list[str]]:
    """``(group_T, group names)`` from ``territory -> group`` (groups in order of first appearance)."""
    missing = [t for t in names if t not in mapping]
    if missing:
        raise ValueError(f"{source}: territory {missing[0]!r} of the log has no group ({len(missing)} missing)")
    group_names = list(dict.fromkeys(mapping[t] for t in names))
    return np.asarray([group_names.index(mapping[t]) for t in names], np.int64), group_names


def feature_rows(path: str | Path, what: str, ids) -> np.ndarray:
    """The row of each of ``ids`` (the log's users or titles) in a feature file
    (:func:`~tall_jax.two_tower.logs.read_feature_file`); every id needs a row, extra rows are ignored."""
    ids = np.asarray(ids)
    integer = np.issubdtype(ids.dtype, np.integer)  # user ids: matched as integers
    _, file_ids = read_feature_file(path, what, integer_ids=integer)
    if integer and not np.issubdtype(file_ids.dtype, np.integer):
        try:
            file_ids = file_ids.astype(np.int64)
        except ValueError:
            bad = next((k for k, s in enumerate(file_ids) if not str(s).lstrip("+-").isdigit()), 0)
            raise ValueError(f"{Path(path).expanduser().with_suffix('.ids')}:{bad + 1}: {what} id "
                             f"{str(file_ids[bad])!r} is not an integer") from None
    elif not integer:
        ids = ids.astype(str)
    order = np.argsort(file_ids)
    at = np.minimum(np.searchsorted(file_ids[order], ids), max(len(order) - 1, 0))
    missing = np.nonzero(file_ids[order[at]] != ids)[0] if len(order) else np.arange(len(ids))
    if len(missing):
        raise ValueError(f"{Path(path).expanduser().with_suffix('.ids')}: {what} {str(ids[missing[0]])!r} of the log "
                         f"has no vector ({len(missing)} of {len(ids)} missing)")
    return order[at]


def aligned_features(path: str | Path, what: str, ids) -> np.ndarray:
    """The rows of a feature file in the order of ``ids`` (:func:`feature_rows`), in memory, float32."""
    rows = feature_rows(path, what, ids)
    return np.asarray(np.load(Path(path).expanduser(), mmap_mode="r")[rows], np.float32)


def user_feature_rows(path: str | Path, ids) -> Rows:
    """The user vectors of a feature file in the order of ``ids``, left on disk (:class:`Rows`): a log's
    users can outgrow memory, its titles (:func:`aligned_features`) do not."""
    return Rows(Path(path).expanduser(), feature_rows(path, "user", ids))


def _roles(cache: LogCache, proto: LogProtocol, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """``role_DxU`` int8 (0 none, 1 plain, 2 added, 3 valid, 4 test) and a description of the pools."""
    rows_DxU, pos_DxU = cache.array("rows_DxU"), cache.array("pos_DxU")
    d_n, u_n = rows_DxU.shape
    f = d_n - proto.n_test_days
    if f < 1 or proto.n_test_days < 1:
        raise ValueError(f"the log has {d_n} days; --test-days {proto.n_test_days} needs 1..{d_n - 1}")
    present = rows_DxU > 0
    on_test = present[f:].any(0)
    first_test_U = np.where(on_test, f + np.argmax(present[f:], axis=0), -1)
    cands = np.nonzero(on_test)[0]
    test_pool = np.sort(rng.choice(cands, size=int(round(proto.test_frac * len(cands))), replace=False))
    rest = rng.permutation(np.setdiff1d(np.arange(u_n), test_pool))
    n_valid = int(round(proto.valid_frac * len(rest)))
    pool_U = np.zeros(u_n, np.int8)  # 0 train, 1 valid, 2 test
    pool_U[rest[:n_valid]], pool_U[test_pool] = 1, 2
    role_DxU = np.zeros((d_n, u_n), np.int8)
    history_U = np.zeros(u_n, np.int64)
    days = []
    for d in range(d_n):
        day_train = np.nonzero(present[d] & (pool_U == 0))[0]
        random_users = np.sort(rng.choice(day_train, size=int(proto.random_frac * len(day_train)), replace=False))
        active_U = history_U >= proto.active_threshold
        n_eligible = int(active_U[day_train].sum() - active_U[random_users].sum())
        _, added = upsample_active_users(random_users, day_train, active_U, int(proto.upsample_frac * n_eligible), rng)
        role_DxU[d, random_users], role_DxU[d, added] = 1, 2
        role_DxU[d, present[d] & (pool_U == 1)] = 3
        if d >= f:
            role_DxU[d, (first_test_U == d) & (pool_U == 2)] = 4
        history_U += pos_DxU[d]
        days.append({"day": cache.manifest["days"][d], "is_test": d >= f, "n_users_plain": len(random_users),
                     "n_users_added_active": len(added), "active_users": int(active_U.sum())})
    pools = {"train": int((pool_U == 0).sum()), "valid": int((pool_U == 1).sum()), "test": int((pool_U == 2).sum())}
    return role_DxU, {"pools": pools, "days": days}


def _is_positive(cache: LogCache, keys: np.ndarray) -> np.ndarray:
    """``hit[N]``: whether each key ``user * I + title`` is a positive anywhere in the log (binary
    search in each sorted run of the cache, one run in memory at a time)."""
    hit = np.zeros(len(keys), bool)
    for run in cache.positive_runs():
        at = np.minimum(np.searchsorted(run, keys), max(len(run) - 1, 0))
        hit |= (run[at] == keys) if len(run) else False
    return hit


def write_examples(cache: LogCache, proto: LogProtocol, seed: int, folder: Path) -> dict[str, Any]:
    """Write every day's examples by role into ``folder`` (``d<day>_<role>_{user,item,label}.npy``);
    returns the pools and per-day description."""
    rng = np.random.default_rng(seed)
    role_DxU, info = _roles(cache, proto, rng)
    d_n = role_DxU.shape[0]
    i_n = len(cache.manifest["titles"])
    terr_U = cache.array("user_territory")
    avail_TxI = cache.array("avail_TxI")
    counts_T = avail_TxI.sum(1)
    items_TxA = np.zeros((len(counts_T), max(int(counts_T.max()), 1)), np.int64)
    for t in range(len(counts_T)):
        items_TxA[t, : counts_T[t]] = np.nonzero(avail_TxI[t])[0]
    writers = {(d, r, c): NpyWriter(folder / f"d{d}_{ROLES[r - 1]}_{c}.npy", dt)
               for d in range(d_n) for r in range(1, 5)
               for c, dt in (("user", np.int32), ("item", np.int32), ("label", np.float32))}
    sample = not cache.manifest["has_label"]
    for ch in cache.chunks(("user", "title", "day", "label")):
        role = role_DxU[ch["day"], ch["user"]]
        key = ch["day"].astype(np.int64) * 5 + role
        order = np.argsort(key, kind="stable")
        bounds = np.r_[0, np.nonzero(np.diff(key[order]))[0] + 1, len(order)]
        groups = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            sel = order[a:b]
            d, r = int(ch["day"][sel[0]]), int(role[sel[0]])
            if r == 0:
                continue
            u, t = ch["user"][sel], ch["title"][sel]
            neg = (np.zeros(0, np.int32), np.zeros(0, np.int32))
            if sample:
                n_neg = int(round(proto.alpha * len(u)))
                nu = u[rng.integers(0, len(u), n_neg)]
                terr = terr_U[nu]
                neg = (nu, items_TxA[terr, (rng.random(n_neg) * counts_T[terr]).astype(np.int64)])
            groups.append((d, r, u, t, ch["label"][sel], neg))
        if sample and groups:  # one look-up of the chunk's negatives in the positive runs
            keys = np.concatenate([g[5][0].astype(np.int64) * i_n + g[5][1] for g in groups])
            keep = np.split(~_is_positive(cache, keys), np.cumsum([len(g[5][0]) for g in groups])[:-1])
        for k, (d, r, u, t, y, (nu, nt)) in enumerate(groups):
            if sample:
                u, t = np.r_[u, nu[keep[k]]], np.r_[t, nt[keep[k]]]
                y = np.r_[y, np.zeros(int(keep[k].sum()), np.float32)]
            for c, v in (("user", u), ("item", t), ("label", y)):
                writers[(d, r, c)].append(v)
    for w in writers.values():
        w.close()
    return info


def _pairs(folder: Path, d: int, role: str, *, memory: bool) -> PairSet:
    pairs = PairSet(*(Column(folder / f"d{d}_{role}_{c}.npy") for c in ("user", "item", "label")))
    return pairs.in_memory() if memory else pairs


def make_log_two_tower(cache: LogCache, proto: LogProtocol, seed: int, *, group_T: np.ndarray,
                       group_names: list[str], user_x: np.ndarray | Rows | None = None,
                       item_x: np.ndarray | None = None,
                       in_memory: bool = False) -> TwoTowerData:
    """The :class:`TwoTowerData` of ``cache`` under ``proto`` and ``seed`` (module docstring). Without
    ``user_x`` / ``item_x`` the users / titles are ids for learned embeddings. ``in_memory`` reads the
    examples into memory (the simple path the on-disk one is tested against)."""
    m = cache.manifest
    settings = {"protocol": dataclasses.asdict(proto), "seed": seed, "cache": m["sources"],
                "version": EXAMPLES_VERSION}
    folder = cache.folder / f"examples-{short_hash(settings)}"
    done = folder / "done.json"
    if not done.is_file():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        remove_tree(tmp)
        tmp.mkdir()
        try:
            info = write_examples(cache, proto, seed, tmp)
            atomic_write_text(tmp / "done.json", json.dumps({"settings": settings, "info": info}))
            try:
                replace_dir(tmp, folder)
            except OSError:  # another process wrote the same examples meanwhile: use those
                if not done.is_file():
                    raise
                remove_tree(tmp)
        except BaseException:
            remove_tree(tmp)
            raise
    info = json.loads(done.read_text())["info"]
    d_n, f = len(m["days"]), len(m["days"]) - proto.n_test_days
    terr_U = cache.array("user_territory").astype(np.int64)
    days = []
    for d in range(d_n):
        plain, added = (_pairs(folder, d, r, memory=in_memory) for r in ("plain", "added"))
        up = PairSet(*(Chain([a, b]) if not in_memory else np.concatenate([a, b])
                       for a, b in zip((plain.user, plain.item, plain.label), (added.user, added.item, added.label))))
        valid = _pairs(folder, d, "valid", memory=in_memory)  # read at each scoring, not held
        test = _pairs(folder, d, "test", memory=in_memory) if d >= f else empty_pairs()
        days.append(Day(plain, up, valid, test, np.unique(test.user).astype(np.int64), None, label=m["days"][d]))
        info["days"][d].update({k: {"n": len(p), "n_pos": p.n_pos} for k, p in
                                (("train_plain", plain), ("train_upsampled", up), ("valid", valid), ("test", test))})
    u_n, i_n = cache.n_users, len(m["titles"])
    ids = lambda n: np.arange(n, dtype=np.float32)[:, None]  # noqa: E731
    info.update({"log": [s["name"] for s in m["sources"]], "rows": m["rows"], "users": u_n, "titles": i_n,
                 "territories": len(m["territories"]), "seed": seed, "protocol": dataclasses.asdict(proto),
                 "user_input": "features" if user_x is not None else "learned id embedding",
                 "title_input": "features" if item_x is not None else "learned id embedding",
                 "territory_users": np.bincount(terr_U, minlength=len(m["territories"])).tolist()})
    return TwoTowerData(
        "log", ids(u_n) if user_x is None else user_x, ids(i_n) if item_x is None else item_x, terr_U,
        np.asarray(group_T, np.int64), list(m["territories"]), list(group_names), days, proto.n_test_days, None, [],
        info, user_vocab=u_n if user_x is None else 0, item_vocab=i_n if item_x is None else 0)


__all__ = ["LogProtocol", "aligned_features", "feature_rows", "user_feature_rows", "groups_by_size", "groups_from_map",
           "make_log_two_tower", "write_examples"]
