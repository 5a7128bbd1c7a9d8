"""LOCA (docs/fidelity.md#loca): kernel-weighted local MultVAEs around coverage anchors in the MultVAE embedding
space, all trained together (``local.train_queue``), mixed by a kernel-weighted logit average with
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


def chunk_size(config: BaselineConfig, n_items: int, batch: int, n_models: int) -> int:
    """Local models trained side by side: ``config.chunk``, else as many as fit the memory budget."""
    if config.chunk:
        return min(config.chunk, n_models)
    per = local.copy_bytes(n_items, config.latent, batch)
    cap = int(max(1, min(n_models, config.memory_budget_gb * 2**30 // per)))
    return -(-n_models // -(-n_models // cap))  # equal rounds: no idle slots in the last one


def _model_key(lcfg: local.LocalTrainConfig, k: int, init_params: Params, rng: np.ndarray, lists, weights,
               cand_lists) -> str:
    """A digest of everything that determines local model ``k`` once trained (config, initial
    parameters, key, user list, weights, candidates): a checkpoint is reused only when it matches."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(lcfg), sort_keys=True).encode())
    for a in jax.tree.leaves(init_params):
        h.update(np.ascontiguousarray(a[k]).tobytes())
    h.update(np.ascontiguousarray(rng[k]).tobytes())
    h.update(np.asarray(lists[k], np.int64).tobytes())
    if weights is not None:
        h.update(np.asarray(weights[k], np.float32).tobytes())
    if cand_lists is not None:
        h.update(np.asarray(cand_lists[k], np.int64).tobytes())
    return h.hexdigest()


def _save_model(path: Path, key: str, params: Params, best_epoch: int, epochs_run: int) -> None:
    leaves = jax.tree.leaves(params)
    tmp = path.with_suffix(".part.npz")
    np.savez(tmp, key=np.array(key), best_epoch=best_epoch, epochs_run=epochs_run,
             **{f"leaf{i}": np.asarray(a) for i, a in enumerate(leaves)})
    tmp.replace(path)  # atomic: a killed run never leaves a half-written file


def _load_model(path: Path, key: str, template: Params):
    """(params, best_epoch, epochs_run) of a finished model, or None if absent or from other inputs."""
    if not path.exists():
        return None
    with np.load(path) as z:
        if str(z["key"]) != key:
            log.warning("%s was written for other inputs; retraining that model", path)
            return None
        leaves = [z[f"leaf{i}"] for i in range(len(jax.tree.leaves(template)))]
        return jax.tree.unflatten(jax.tree.structure(template), leaves), int(z["best_epoch"]), int(z["epochs_run"])


def train_models(data: UserData, init_params_K: Params, rng_K: jax.Array, lists, weights, cand_lists,
                 lcfg: local.LocalTrainConfig, chunk: int, *, progress: bool, desc: str,
                 checkpoint_dir: str | Path | None = None):
    """Train K local models through ``chunk`` vmapped slots (:func:`local.train_queue`; largest user
    lists first), each slot refilled as soon as its model stops.

    ``checkpoint_dir``: each finished model's parameters are written there as it finishes, and a
    model whose file matches its inputs is loaded instead of trained, so a killed run resumes.

    Returns the best (or final, without patience) parameters stacked in the original order, and per
    model (best epoch, epochs run)."""
    n_models = len(lists)
    host_init = jax.device_get(init_params_K)
    host_rng = np.asarray(jax.random.key_data(rng_K) if jax.dtypes.issubdtype(rng_K.dtype, jax.dtypes.prng_key)
                          else rng_K)
    results: dict[int, tuple] = {}
    on_done = None
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir)
        folder.mkdir(parents=True, exist_ok=True)
        keys = {k: _model_key(lcfg, k, host_init, host_rng, lists, weights, cand_lists) for k in range(n_models)}
        template = jax.tree.map(lambda a: a[0], host_init)
        for k in range(n_models):
            got = _load_model(folder / f"model{k:04d}.npz", keys[k], template)
            if got is not None:
                results[k] = got
        if results:
            log.info("%s: %d of %d models loaded from %s", desc, len(results), n_models, folder)

        def on_done(k, params, best_epoch, epochs_run):
            _save_model(folder / f"model{k:04d}.npz", keys[k], params, best_epoch, epochs_run)

    sizes = [int(np.sum(np.asarray(ell) < data.n_users)) for ell in lists]
    order = [int(k) for k in np.argsort([-n for n in sizes], kind="stable") if k not in results]
    results.update(local.train_queue(data, host_init, host_rng, lists, weights, cand_lists, lcfg, chunk,
                                     order=order, on_done=on_done, progress=progress, desc=desc))
    stacked = jax.tree.map(lambda *a: np.stack(a), *[results[k][0] for k in range(n_models)])
    best_epoch = np.array([results[k][1] for k in range(n_models)], np.int32)
    epochs_run = np.array([results[k][2] for k in range(n_models)], np.int32)
    log.info("%s: %d models trained; epochs run min/median/max %d/%d/%d", desc, n_models, epochs_run.min(),
             int(np.median(epochs_run)), epochs_run.max())
    return stacked, best_epoch, epochs_run


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
    init = vae.init_experts(k_init, config.n_local, data.n_items, config.latent)
    rng_K = jax.random.split(k_run, config.n_local)
    lcfg = local_config(config)
    chunk = chunk_size(config, data.n_items, config.loca_batch, config.n_local)
    params_K, best_epoch, epochs_run = train_models(
        data, init, rng_K, rows, weights, cand_lists, lcfg, chunk, progress=progress, desc="LOCA",
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
