"""LFT (docs/fidelity.md#lft): per-user fine-tuning of the global WL model on the user's neighbourhood, a chunk
of users' copies stacked and trained together (``local.train_local``), each copy then scoring its
own user (:func:`scoring.own_user_scores`)."""
from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tall_jax.baselines import local, scoring
from tall_jax.baselines.config import BaselineConfig
from tall_jax.baselines.neighbours import Neighbourhoods, lft_neighbourhoods
from tall_jax.baselines.queue import chunk_size
from tall_jax.batching import UserData
from tall_jax.vae import Params

log = logging.getLogger("tall_jax.baselines")
_USER_KEYS = 7


def finetune_config(config: BaselineConfig) -> local.LocalTrainConfig:
    """A fresh Adam(1e-3, wd 0.01) per copy; 30 shuffled epochs of batch 128; CE + 0.2 KLbar; input
    dropout 0.2; no validation selection (docs/fidelity.md#lft)."""
    return local.LocalTrainConfig(
        batch_size=config.ft_batch, lr=config.ft_lr, weight_decay=config.ft_reg,
        noise_std=config.noise_std, dropout=config.ft_dropout, beta=config.ft_beta,
        loss_norm="count", shuffle=True, max_epochs=config.ft_epochs, patience=0,
        eval_batch=config.eval_batch)


def user_keys(seed: int, users: np.ndarray) -> jax.Array:
    """One fine-tuning key per user, independent of chunking: fold_in(key(seed), u)."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), _USER_KEYS)
    return jax.vmap(lambda u: jax.random.fold_in(base, u))(jnp.asarray(users, jnp.uint32))


def select_users(n_users: int, n_subset: int, seed: int) -> np.ndarray:
    """All users, or a seeded random subset of ``n_subset`` users (sorted)."""
    if not n_subset or n_subset >= n_users:
        return np.arange(n_users)
    return np.sort(np.random.default_rng(seed).choice(n_users, n_subset, replace=False))


def finetune_chunk(data: UserData, global_params: Params, users: np.ndarray, lists: list[np.ndarray],
                   keys: jax.Array, lcfg: local.LocalTrainConfig) -> local.LocalState:
    """Fine-tune one copy of the global model per entry of ``lists`` together; final states."""
    sets = local.LocalSets.from_lists(lists, data.n_users, multiple=lcfg.batch_size)
    params = local.stack_params(global_params, len(lists))
    state = local.init(keys, lcfg, params)
    return local.train_local(state, data, sets, lcfg)


def run_lft(data: UserData, train, global_params: Params, config: BaselineConfig, *,
            progress: bool = True, neighbourhoods: Neighbourhoods | None = None):
    """LFT on ``config.users`` users (all by default). Returns per-user metrics of those users, the
    user ids, and diagnostics."""
    nb = neighbourhoods or lft_neighbourhoods(train, config.sim_threshold, config.cos_threshold,
                                              config.min_size, config.max_size, config.alpha_mix)
    users = select_users(data.n_users, config.users, config.seed)
    lcfg = finetune_config(config)
    chunk = chunk_size(config, data.n_items, config.ft_batch, len(users))
    order = users[np.argsort(-nb.len_N[users], kind="stable")]  # similar sizes share a chunk
    keys = user_keys(config.seed, order)
    out: dict[str, list[np.ndarray]] = {}
    done_users: list[np.ndarray] = []
    bar = tqdm(total=len(users), desc="LFT users", unit="user", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    for start in range(0, len(order), chunk):
        ids = order[start:start + chunk]
        pad = chunk - len(ids)
        ids_p = np.concatenate([ids, np.repeat(ids[-1:], pad)])
        lists = [nb.idx_NxL[u, :nb.len_N[u]] for u in ids_p]
        key_p = jnp.concatenate([keys[start:start + len(ids)], jnp.repeat(keys[start + len(ids) - 1:start + len(ids)], pad, axis=0)])
        state = finetune_chunk(data, global_params, ids_p, lists, key_p, lcfg)
        evals = scoring.evaluate_users(scoring.own_user_scores, state.params, data, ids_p, len(ids_p))
        for k, v in evals.items():
            out.setdefault(k, []).append(v[:len(ids)])
        done_users.append(ids)
        bar.update(len(ids))
    bar.close()
    seconds = time.perf_counter() - started
    done = np.concatenate(done_users)
    back = np.argsort(done)
    evals = {k: np.concatenate(v)[back] for k, v in out.items()}
    info = {"users": done[back].tolist(), "n_users_finetuned": int(len(done)),
            "neighbourhood_size_mean": float(nb.len_N.mean()),
            "neighbourhood_size_max": int(nb.len_N.max()), "chunk": chunk,
            "finetune_seconds": seconds, "seconds_per_user": seconds / max(len(done), 1),
            "projected_full_finetune_seconds": seconds / max(len(done), 1) * data.n_users}
    return evals, done[back], info
