"""LOCA (docs/fidelity.md#loca): kernel-weighted local MultVAEs around coverage anchors in the MultVAE embedding
space, all trained together (:func:`tall_jax.baselines.queue.train_models`), mixed by a kernel-weighted
logit average with the global MultVAE as fallback for uncovered users (:func:`scoring.loca_scores`)."""
from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tall_jax import vae
from tall_jax.baselines import local, scoring
from tall_jax.baselines.config import BaselineConfig
from tall_jax.baselines.queue import chunk_size, train_models
from tall_jax.baselines.neighbours import loca_anchors, loca_kernel
from tall_jax.batching import UserData
from tall_jax.vae import Params

log = logging.getLogger("tall_jax.baselines")
# one compiled program instead of dozens of eager random ops (same values, bit for bit)
_init_experts = jax.jit(vae.init_experts, static_argnums=(1, 2, 3))


def local_config(config: BaselineConfig) -> local.LocalTrainConfig:
    """Each local model: fresh MultVAE, Adam(1e-3, wd 1e-3), fixed user order, batch 512, CE only
    (beta 0), unnormalised kernel-weighted loss, patience 15 (docs/fidelity.md#loca)."""
    return local.LocalTrainConfig(
        batch_size=config.loca_batch, lr=config.loca_lr, weight_decay=config.loca_reg,
        noise_std=config.noise_std, dropout=config.loca_dropout, beta=config.loca_beta,
        loss_norm=config.loca_loss_norm, shuffle=False, max_epochs=config.max_epochs,
        patience=config.patience, eval_batch=config.eval_batch)


def loca_sets(kernel_NxA: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per anchor: users with kernel > 0 in user-id order, and their kernel values."""
    lists = [np.flatnonzero(kernel_NxA[:, a] > 0) for a in range(kernel_NxA.shape[1])]
    return lists, [kernel_NxA[ell, a] for a, ell in enumerate(lists)]


def loca_batch_rows(kernel_NxA: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per anchor, the training order of docs/fidelity.md#loca: every user id 0..N-1, with users outside the
    neighbourhood replaced by the padding id N (weight 0). Cut into batches of 512 consecutive ids,
    each batch keeps only its neighbourhood members, so batches vary in size and a batch without
    members is skipped, as in the original code (which filters each batch, not the user list)."""
    n = kernel_NxA.shape[0]
    ids = np.arange(n, dtype=np.int32)
    # the kernel is >= 0, so non-members already carry weight 0
    return ([np.where(kernel_NxA[:, a] > 0, ids, n) for a in range(kernel_NxA.shape[1])],
            [kernel_NxA[:, a].astype(np.float32) for a in range(kernel_NxA.shape[1])])


def run_loca(data: UserData, train, global_params: Params, config: BaselineConfig, *,
             progress: bool = True, checkpoint_dir: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """LOCA end to end on one split. ``global_params``: one MultVAE (the final state, by default).

    Returns per-user valid/test metrics of all users and diagnostics (anchors, coverage, epochs)."""
    emb = vae.user_embeddings(global_params, train)
    anchors = np.asarray(loca_anchors(emb, config.test_h, config.n_local, config.anchor_stride))
    k_train = np.asarray(loca_kernel(emb, anchors, config.train_h))
    k_test = np.asarray(loca_kernel(emb, anchors, config.test_h))
    lists, _ = loca_sets(k_train)
    rows, weights = loca_batch_rows(k_train)
    cand_lists, _ = loca_sets(k_test)
    key = jax.random.PRNGKey(config.seed)
    k_init, k_run = jax.random.split(key)
    init = _init_experts(k_init, config.n_local, data.n_items, config.latent)
    rng_K = jax.random.split(k_run, config.n_local)
    lcfg = local_config(config)
    chunk = chunk_size(config, data.n_items, config.loca_batch, config.n_local)
    params_K, best_epoch, epochs_run = train_models(
        data, init, rng_K, rows, weights, cand_lists, lcfg, chunk, progress=progress, desc="LOCA",
        checkpoint_dir=checkpoint_dir)
    scorer_params = {"local": jax.device_put(params_K), "kernel_NxK": jnp.asarray(k_test),
                     "global": global_params}
    evals = scoring.evaluate_users(scoring.loca_scores, scorer_params, data, np.arange(data.n_users),
                                   config.eval_batch)
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
