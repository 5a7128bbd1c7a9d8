"""LOCA (spec §6.2): kernel-weighted local MultVAEs around coverage anchors in the MultVAE embedding
space, all trained together (``local.train_local``), mixed by a kernel-weighted logit average with
the global MultVAE as fallback for uncovered users."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tall_jax import vae
from tall_jax.baselines import local
from tall_jax.baselines.config import BaselineConfig
from tall_jax.baselines.neighbours import loca_anchors, loca_kernel
from tall_jax.batching import UserData
from tall_jax.vae import Params

log = logging.getLogger("tall_jax.baselines")


def local_config(config: BaselineConfig) -> local.LocalTrainConfig:
    """Each local model: fresh MultVAE, Adam(1e-3, wd 1e-3), fixed user order, batch 512, CE only
    (beta 0), unnormalised kernel-weighted loss, patience 15 (spec §6.2.4)."""
    return local.LocalTrainConfig(
        batch_size=config.loca_batch, lr=config.loca_lr, weight_decay=config.loca_reg,
        noise_std=config.noise_std, dropout=config.loca_dropout, beta=config.loca_beta,
        loss_norm=config.loca_loss_norm, shuffle=False, max_epochs=config.max_epochs,
        patience=config.patience, eval_batch=config.eval_batch)


def loca_sets(kernel_NxA: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per anchor: users with kernel > 0 in user-id order, and their kernel values."""
    lists = [np.flatnonzero(kernel_NxA[:, a] > 0) for a in range(kernel_NxA.shape[1])]
    return lists, [kernel_NxA[ell, a] for a, ell in enumerate(lists)]


def chunk_size(config: BaselineConfig, n_items: int, batch: int, n_models: int) -> int:
    if config.chunk:
        return min(config.chunk, n_models)
    per = local.copy_bytes(n_items, config.latent, batch)
    cap = int(max(1, min(n_models, config.memory_budget_gb * 2**30 // per)))
    return -(-n_models // -(-n_models // cap))  # equal chunks: little padding in the last one


def _chunk_key(lcfg: local.LocalTrainConfig, ids, init_params: Params, rng: np.ndarray, lists, weights,
               cand_lists) -> str:
    """A digest of everything that determines a chunk's trained models (config, initial parameters,
    keys, user lists, weights, candidates): a checkpoint is reused only when it matches."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(lcfg), sort_keys=True).encode())
    for k in ids:
        for a in jax.tree.leaves(init_params):
            h.update(np.ascontiguousarray(a[k]).tobytes())
        h.update(np.ascontiguousarray(rng[k]).tobytes())
        h.update(np.asarray(lists[k], np.int64).tobytes())
        if weights is not None:
            h.update(np.asarray(weights[k], np.float32).tobytes())
        if cand_lists is not None:
            h.update(np.asarray(cand_lists[k], np.int64).tobytes())
    return h.hexdigest()


def _save_chunk(path: Path, key: str, params: Params, best_epoch: np.ndarray, epochs_run: np.ndarray) -> None:
    leaves, _ = jax.tree.flatten(params)
    tmp = path.with_suffix(".part.npz")
    np.savez(tmp, key=np.array(key), best_epoch=best_epoch, epochs_run=epochs_run,
             **{f"leaf{i}": np.asarray(a) for i, a in enumerate(leaves)})
    tmp.replace(path)  # atomic: a killed run never leaves a half-written chunk


def _load_chunk(path: Path, key: str, template: Params):
    """(params, best_epoch, epochs_run) of a finished chunk, or None if absent or from other inputs."""
    if not path.exists():
        return None
    with np.load(path) as z:
        if str(z["key"]) != key:
            log.warning("%s was written for other inputs; retraining that chunk", path)
            return None
        leaves = [z[f"leaf{i}"] for i in range(len(jax.tree.leaves(template)))]
        return jax.tree.unflatten(jax.tree.structure(template), leaves), z["best_epoch"], z["epochs_run"]


def train_models(data: UserData, init_params_K: Params, rng_K: jax.Array, lists, weights, cand_lists,
                 lcfg: local.LocalTrainConfig, chunk: int, *, progress: bool, desc: str,
                 checkpoint_dir: str | Path | None = None):
    """Train K local models in chunks of ``chunk`` (models sorted by list size to limit padding).

    ``checkpoint_dir``: each finished chunk's best parameters are written there, and a chunk whose
    file matches its inputs is loaded instead of trained, so a killed run resumes where it stopped.

    Returns the best (or final, without patience) parameters stacked in the original order, and per
    model (best epoch, epochs run)."""
    n_models = len(lists)
    order = np.argsort([-len(ell) for ell in lists], kind="stable")
    best: list[Params] = [None] * n_models
    best_epoch = np.zeros(n_models, np.int32)
    epochs_run = np.zeros(n_models, np.int32)
    if checkpoint_dir is not None:
        host_init = jax.device_get(init_params_K)
        host_rng = np.asarray(jax.random.key_data(rng_K) if jax.dtypes.issubdtype(rng_K.dtype, jax.dtypes.prng_key)
                              else rng_K)
    for start in range(0, n_models, chunk):
        ids = order[start:start + chunk]
        path = key = None
        if checkpoint_dir is not None:
            path = Path(checkpoint_dir) / f"chunk{start:04d}.npz"
            key = _chunk_key(lcfg, ids, host_init, host_rng, lists, weights, cand_lists)
            template = jax.tree.map(lambda a: a[:len(ids)], host_init)
            done = _load_chunk(path, key, template)
            if done is not None:
                for j, k in enumerate(ids):
                    best[k] = jax.tree.map(lambda a: a[j], done[0])
                best_epoch[ids], epochs_run[ids] = done[1], done[2]
                log.info("%s: models %d/%d loaded from %s", desc, start + len(ids), n_models, path)
                continue
        pad = chunk - len(ids)  # pad with copies of the first model so the call compiles once
        ids_p = np.concatenate([ids, np.repeat(ids[:1], pad)])
        sets = local.LocalSets.from_lists([lists[k] for k in ids_p], data.n_users,
                                          None if weights is None else [weights[k] for k in ids_p],
                                          multiple=lcfg.batch_size)
        cands = (None if cand_lists is None else
                 local.LocalSets.from_lists([cand_lists[k] for k in ids_p], data.n_users,
                                            multiple=lcfg.eval_batch))
        params = jax.tree.map(lambda a: a[jnp.asarray(ids_p)], init_params_K)
        state = local.init_local(params, rng_K[jnp.asarray(ids_p)], lcfg)
        state = local.train_local(state, data, sets, lcfg, cands, progress=progress,
                                  desc=f"{desc} {start + len(ids)}/{n_models}")
        host = jax.device_get(state.best_params)
        for j, k in enumerate(ids):
            best[k] = jax.tree.map(lambda a: a[j], host)
        best_epoch[ids] = np.asarray(state.best_epoch_K)[:len(ids)]
        epochs_run[ids] = np.asarray(state.epochs_run_K)[:len(ids)]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_chunk(path, key, jax.tree.map(lambda a: a[:len(ids)], host), best_epoch[ids], epochs_run[ids])
        log.info("%s: models %d/%d trained (epochs run %s)", desc, start + len(ids), n_models,
                 np.asarray(state.epochs_run_K)[:len(ids)].tolist())
    stacked = jax.tree.map(lambda *a: np.stack(a), *best)
    return stacked, best_epoch, epochs_run


def run_loca(data: UserData, train, global_params: Params, config: BaselineConfig, *,
             progress: bool = True, checkpoint_dir: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """LOCA end to end on one split. ``global_params``: one MultVAE (the final state, by default).

    Returns per-user valid/test metrics of all users and diagnostics (anchors, coverage, epochs)."""
    emb = vae.user_embeddings(global_params, train)
    anchors = np.asarray(loca_anchors(emb, config.test_h, config.n_local, config.anchor_stride))
    k_train = np.asarray(loca_kernel(emb, anchors, config.train_h))
    k_test = np.asarray(loca_kernel(emb, anchors, config.test_h))
    lists, weights = loca_sets(k_train)
    cand_lists, _ = loca_sets(k_test)
    key = jax.random.PRNGKey(config.seed)
    k_init, k_run = jax.random.split(key)
    init = vae.init_experts(k_init, config.n_local, data.n_items, config.latent)
    rng_K = jax.random.split(k_run, config.n_local)
    lcfg = local_config(config)
    chunk = chunk_size(config, data.n_items, config.loca_batch, config.n_local)
    params_K, best_epoch, epochs_run = train_models(
        data, init, rng_K, lists, weights, cand_lists, lcfg, chunk, progress=progress, desc="LOCA",
        checkpoint_dir=checkpoint_dir)
    params_K = jax.device_put(params_K)
    k_test_j = jnp.asarray(k_test)

    def score(users_B, x_BxM):
        w = k_test_j.at[users_B].get(mode="fill", fill_value=0.0)
        mix = local.mixture_logits(params_K, x_BxM, w)
        fallback = local._eval_logits(global_params, x_BxM)
        return jnp.where(jnp.sum(w, axis=1, keepdims=True) > 0, mix, fallback)

    evals = local.evaluate_rows(score, np.arange(data.n_users), data, config.eval_batch)
    covered = k_test.sum(1) > 0
    info = {
        "anchors": anchors.tolist(), "n_distinct_anchors": int(len(set(anchors.tolist()))),
        "train_users_per_model": [len(ell) for ell in lists],
        "candidates_per_model": [len(ell) for ell in cand_lists],
        "users_covered": int(covered.sum()), "users_fallback": int((~covered).sum()),
        "best_epoch_per_model": best_epoch.tolist(), "epochs_run_per_model": epochs_run.tolist(),
        "chunk": chunk,
    }
    return evals, info
