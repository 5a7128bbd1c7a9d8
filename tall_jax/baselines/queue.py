"""Many local models through a few vmapped slots, and the checkpointed training of a whole set.

:func:`train_queue` keeps ``slots`` models of :mod:`tall_jax.baselines.local` training side by side
and refills a slot with the next queued model as soon as its model stops. :func:`train_models` runs a
whole set of models through it (largest user lists first) and, with a checkpoint folder, writes each
finished model to its own orbax checkpoint folder (atomically) and reuses every one whose inputs
still match, so a killed run resumes (model files written before orbax, ``model0007.npz``, are read
too); LOCA and EnLFT train through it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm.auto import tqdm

from tall_jax import checkpoint, objective
from tall_jax.baselines import local
from tall_jax.baselines.config import BaselineConfig
from tall_jax.batching import UserData
from tall_jax.vae import Params

log = logging.getLogger("tall_jax.baselines")


def train_queue(data: UserData, init_params: Params, rng: jax.Array, lists: list[np.ndarray],
                weights: list[np.ndarray] | None, cand_lists: list[np.ndarray] | None,
                config: local.LocalTrainConfig, slots: int, *, order=None, on_done=None,
                progress: bool = False, desc: str = "local"):
    """Train many local models through ``slots`` vmapped slots: when a model stops (patience or epoch
    cap) its slot is refilled at once with the next model of ``order``, so no slot computes for a
    stopped model while others still have work queued.

    ``init_params`` / ``rng`` / ``lists`` / ``weights`` / ``cand_lists``: one entry per model (the
    parameter tree with a leading model axis). Every model evolves exactly as if trained alone: its
    Adam state is fresh, its keys and shuffles fold in its own epoch count, padding batches are
    no-ops. ``on_done(k, params, best_epoch, epochs_run)`` is called as each model finishes, with its
    best (or, without patience, final) parameters on the host.

    Returns {model: (params, best_epoch, epochs_run)} for the models in ``order``.
    """
    order = list(range(len(lists)) if order is None else order)
    done: dict[int, tuple] = {}
    if not order:
        return done
    n_slots = min(slots, len(order))
    # widths of every model's lists, not only the queued ones: a resumed run (fewer models queued)
    # then trains with the same shapes, so bit for bit like the uninterrupted one, and one compilation
    width = max(len(ell) for ell in lists)
    cwidth = None if cand_lists is None else max(len(ell) for ell in cand_lists)
    host_init = jax.device_get(init_params)
    queue, first = order[n_slots:], order[:n_slots]
    occupant = np.array(first)
    sets = local.LocalSets.from_lists([lists[k] for k in first], data.n_users,
                                None if weights is None else [weights[k] for k in first],
                                multiple=config.batch_size, width=width)
    cands = (None if cand_lists is None else
             local.LocalSets.from_lists([cand_lists[k] for k in first], data.n_users, multiple=config.eval_batch,
                                  width=cwidth))
    state = local.init(jnp.asarray(rng)[np.array(first)], config,
                       jax.tree.map(lambda a: jnp.asarray(a[np.array(first)]), host_init))
    state = local.cap_epochs(state, config.max_epochs)
    opt_init = local.make_optimizer(config).init
    bar = tqdm(total=len(order), desc=desc, unit="model", disable=not progress, dynamic_ncols=True)
    while (occupant >= 0).any():
        state = local.epoch_and_stop(state, data, sets, cands, config, config.max_epochs)
        stopped = np.flatnonzero(~np.asarray(state.active_K) & (occupant >= 0))
        if not stopped.size:  # redraw every epoch: models can take minutes to finish
            bar.set_postfix(epoch=int(state.epoch), training=int((occupant >= 0).sum()))
            continue
        result = state.best_params if config.patience else state.params
        best_epoch = np.asarray(state.best_epoch_K if config.patience else state.epochs_run_K)
        epochs_run = np.asarray(state.epochs_run_K)
        for slot in stopped:
            k = int(occupant[slot])
            params_k = jax.device_get(jax.tree.map(lambda a: a[slot], result))
            done[k] = (params_k, int(best_epoch[slot]), int(epochs_run[slot]))
            if on_done is not None:
                on_done(k, *done[k])
            occupant[slot] = -1
            if queue:
                nxt = queue.pop(0)
                occupant[slot] = nxt
                state, sets, cands = _fill_slot(state, sets, cands, int(slot), host_init, rng, nxt, lists,
                                                weights, cand_lists, opt_init, data.n_users)
        bar.update(len(stopped))
    bar.close()
    return done


def _fill_slot(state: local.LocalState, sets: local.LocalSets, cands: local.LocalSets | None, slot: int, host_init, rng,
               k: int, lists, weights, cand_lists, opt_init, n_users: int):
    """Put model ``k`` (fresh Adam state, epoch 0, its user lists) into ``slot``."""
    params = jax.tree.map(lambda a: jnp.asarray(a[k]), host_init)
    put = lambda tree, new: jax.tree.map(lambda a, b: a.at[slot].set(b), tree, new)
    state = state.replace(
        params=put(state.params, params), opt_state=put(state.opt_state, opt_init(params)),
        rng=state.rng.at[slot].set(jnp.asarray(rng)[k]), best_params=put(state.best_params, params),
        best_score_K=state.best_score_K.at[slot].set(-jnp.inf), best_epoch_K=state.best_epoch_K.at[slot].set(0),
        epochs_run_K=state.epochs_run_K.at[slot].set(0), active_K=state.active_K.at[slot].set(True))

    def put_row(target: local.LocalSets, ell, w) -> local.LocalSets:
        row = local.LocalSets.from_lists([ell], n_users, None if w is None else [w], width=target.users_KxU.shape[1])
        return local.LocalSets(target.users_KxU.at[slot].set(row.users_KxU[0]), target.w_KxU.at[slot].set(row.w_KxU[0]))

    sets = put_row(sets, lists[k], None if weights is None else weights[k])
    if cands is not None:
        cands = put_row(cands, cand_lists[k], None)
    return state, sets, cands


def chunk_size(config: BaselineConfig, n_items: int, batch: int, n_models: int) -> int:
    """Local models trained side by side: ``config.chunk``, else as many as fit the memory budget."""
    if config.chunk:
        return min(config.chunk, n_models)
    per = local.copy_bytes(n_items, config.latent, batch)
    cap = int(max(1, min(n_models, config.memory_budget_gb * 2**30 // per)))
    return -(-n_models // -(-n_models // cap))  # equal rounds: no idle slots in the last one


def _model_key(lcfg: local.LocalTrainConfig, k: int, init_params: Params, rng: np.ndarray, lists, weights,
               cand_lists) -> str:
    """A digest of everything that determines local model ``k`` once trained (config, RNG streams,
    initial parameters, key, user list, weights, candidates): a checkpoint is reused only when it
    matches."""
    streams = {"noise": objective.NOISE, "shuffle": objective.SHUFFLE, "dropout": objective.DROPOUT}
    h = hashlib.sha256(json.dumps({"config": dataclasses.asdict(lcfg), "streams": streams},
                                  sort_keys=True).encode())
    for a in jax.tree.leaves(init_params):
        h.update(np.ascontiguousarray(a[k]).tobytes())
    h.update(np.ascontiguousarray(rng[k]).tobytes())
    h.update(np.asarray(lists[k], np.int64).tobytes())
    if weights is not None:
        h.update(np.asarray(weights[k], np.float32).tobytes())
    if cand_lists is not None:
        h.update(np.asarray(cand_lists[k], np.int64).tobytes())
    return h.hexdigest()


def _model_file(folder: Path, k: int) -> Path:
    """Model ``k``'s checkpoint in ``folder``: an orbax folder (``model0007/``)."""
    return folder / f"model{k:04d}"


def _save_model(path: Path, key: str, params: Params, best_epoch: int, epochs_run: int) -> None:
    """One finished model as one orbax checkpoint folder, written atomically (a killed run never
    leaves half a model)."""
    checkpoint.save_folder(path, {"params": params},
                           {"key": key, "best_epoch": int(best_epoch), "epochs_run": int(epochs_run)})


def _load_model(path: Path, key: str, template: Params):
    """(params, best_epoch, epochs_run) of a finished model, or None if absent, from other inputs
    or unreadable (a corrupt file: a warning names the file and what is wrong; the model is
    retrained); ValueError naming the leaves if its arrays do not fit ``template``. Reads ``path``
    (orbax) or, written before orbax, ``path.npz``."""
    folder = checkpoint.complete_orbax_folder(path)
    try:
        if folder is not None:
            meta = checkpoint.read_meta(folder, ("key", "best_epoch", "epochs_run"))
            if meta["key"] != key:
                log.warning("%s was written for other inputs; retraining that model", folder)
                return None
            params = checkpoint.read_tree(folder, "params", template, host=True)
            return (serialization.from_state_dict(template, params), int(meta["best_epoch"]),
                    int(meta["epochs_run"]))
        if path.with_suffix(".npz").exists():
            return _load_npz_model(path.with_suffix(".npz"), key, template)
    except checkpoint.CorruptCheckpointError as e:
        log.warning("%s; retraining that model", e)
    return None


def _load_npz_model(path: Path, key: str, template: Params):
    """A model file written before orbax (one .npz: key, best_epoch, epochs_run, leaf0..)."""
    try:
        with np.load(path) as z:
            if str(z["key"]) != key:
                log.warning("%s was written for other inputs; retraining that model", path)
                return None
            names = [f for f in z.files if f.startswith("leaf")]
            leaves = [z[f"leaf{i}"] for i in range(len(names))]
            best_epoch, epochs_run = int(z["best_epoch"]), int(z["epochs_run"])
    except Exception as e:  # BadZipFile, EOFError, a missing array (KeyError), a pickled array...
        raise checkpoint.CorruptCheckpointError(
            f"{path}: not a readable model file ({type(e).__name__}: {e})") from e
    n_leaves = len(jax.tree.leaves(template))
    if len(leaves) != n_leaves:
        raise ValueError(f"{path}: {len(leaves)} arrays, the model has {n_leaves}")
    params = jax.tree.unflatten(jax.tree.structure(template), leaves)
    checkpoint.check_like(template, params, str(path))
    return params, best_epoch, epochs_run


def train_models(data: UserData, init_params_K: Params, rng_K: jax.Array, lists, weights, cand_lists,
                 lcfg: local.LocalTrainConfig, chunk: int, *, progress: bool, desc: str,
                 checkpoint_dir: str | Path | None = None):
    """Train K local models through ``chunk`` vmapped slots (:func:`train_queue`; largest user
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
            got = _load_model(_model_file(folder, k), keys[k], template)
            if got is not None:
                results[k] = got
        if results:
            log.info("%s: %d of %d models loaded from %s", desc, len(results), n_models, folder)

        def on_done(k, params, best_epoch, epochs_run):
            _save_model(_model_file(folder, k), keys[k], params, best_epoch, epochs_run)

    sizes = [int(np.sum(np.asarray(ell) < data.n_users)) for ell in lists]
    order = [int(k) for k in np.argsort([-n for n in sizes], kind="stable") if k not in results]
    results.update(train_queue(data, host_init, host_rng, lists, weights, cand_lists, lcfg, chunk,
                               order=order, on_done=on_done, progress=progress, desc=desc))
    stacked = jax.tree.map(lambda *a: np.stack(a), *[results[k][0] for k in range(n_models)])
    best_epoch = np.array([results[k][1] for k in range(n_models)], np.int32)
    epochs_run = np.array([results[k][2] for k in range(n_models)], np.int32)
    log.info("%s: %d models trained; epochs run min/median/max %d/%d/%d", desc, n_models, epochs_run.min(),
             int(np.median(epochs_run)), epochs_run.max())
    return stacked, best_epoch, epochs_run


