"""K local MultVAEs trained together: stacked parameters, stacked Adam states, one compiled call per
epoch (docs/fidelity.md#loca, #lft, #enlft).

Model k trains on its own user list ``users_KxU[k]`` (the dummy user N pads the end, or marks a hole:
LOCA keeps every id's position so its batches are windows of consecutive ids)
with its own per-user weights ``w_KxU[k]`` (LOCA's kernel values; 1 for LFT). An epoch cuts every
list into batches of ``batch_size`` (the last one partial, as a PyTorch loop does); a model whose
list is exhausted, or which has early-stopped, skips the update (params and Adam state kept by a
``where``), so model k evolves exactly as if it were trained alone. Early stopping is per model on
the mean validation NDCG@{1,5,10,20} over its own candidate users, with the best state kept by a
``where`` on the stacked tree.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm.auto import tqdm

from tall_jax import vae
from tall_jax.batching import UserData, dense_rows
from tall_jax.metrics import DEFAULT_KS, rank_metrics, valid_test_metrics
from tall_jax.state import make_optimizer
from tall_jax.vae import Params

KS = DEFAULT_KS  # the cut-offs of docs/fidelity.md#early-stopping
_SHUFFLE, _NOISE, _DROPOUT = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class LocalTrainConfig:
    """How each local model trains. Hashable: a static argument of the jitted epoch."""

    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-3  # torch Adam's coupled L2 (state.make_optimizer)
    noise_std: float = 0.01  # reparameterisation noise std (docs/fidelity.md#multvae)
    dropout: float = 0.0  # input dropout after L2 normalisation (LFT 0.2)
    beta: float = 0.0  # constant KL weight on the batch-mean KL (LOCA 0: docs/fidelity.md#loca; LFT 0.2)
    loss_norm: str = "count"  # "count": sum_u w_u CE_u / n_batch (LOCA, LFT); "weight": / sum_u w_u
    shuffle: bool = False  # False: fixed list order every epoch (LOCA); True: a fresh shuffle (LFT)
    max_epochs: int = 10_000
    patience: int = 0  # 0: no validation selection, keep the final state (LFT); else early stopping
    eval_batch: int = 256  # candidate users per evaluation call (memory only)

    def __post_init__(self) -> None:
        if self.loss_norm not in ("count", "weight"):
            raise ValueError(f"loss_norm must be 'count' or 'weight', got {self.loss_norm!r}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 0:
            raise ValueError(f"bad local training config {self}")


@struct.dataclass
class LocalSets:
    """Per-model user lists with static shapes; the dummy user N is padding (at the end, or a hole)."""

    users_KxU: jax.Array  # int32, pad N
    w_KxU: jax.Array  # f32, 0 on padding

    @classmethod
    def from_lists(cls, lists: list[np.ndarray], n_users: int, weights: list[np.ndarray] | None = None,
                   multiple: int = 1, width: int | None = None) -> "LocalSets":
        """Pad the lists to a common width (the longest list, or ``width``, rounded up to a multiple
        of ``multiple``); weights default to 1."""
        longest = max(max((len(ell) for ell in lists), default=1), 1)
        if width is not None and width < longest:
            raise ValueError(f"width {width} is shorter than the longest list ({longest})")
        width = -(-(width or longest) // multiple) * multiple
        users = np.full((len(lists), width), n_users, np.int32)
        w = np.zeros((len(lists), width), np.float32)
        for k, ell in enumerate(lists):
            users[k, :len(ell)] = ell
            w[k, :len(ell)] = 1.0 if weights is None else weights[k]
        return cls(jnp.asarray(users), jnp.asarray(w))


@struct.dataclass
class LocalState:
    """K models' parameters, Adam states, keys and per-model early-stopping bookkeeping."""

    params: Params  # stacked [K, ...]
    opt_state: optax.OptState  # stacked [K, ...]
    rng_K: jax.Array  # one base key per model
    epoch: jax.Array  # int32: epochs run by the loop (a stopped model skips the later ones)
    active_K: jax.Array  # bool: still training
    best_params: Params
    best_score_K: jax.Array  # f32: best validation score so far (-inf before the first)
    best_epoch_K: jax.Array  # int32: epoch (1-based) of the best score, 0 before the first
    epochs_run_K: jax.Array  # int32: epochs model k actually trained


def init_local(params_K: Params, rng_K: jax.Array, config: LocalTrainConfig) -> LocalState:
    """Fresh Adam state per model (vmapped ``init``) around the given stacked parameters."""
    n = rng_K.shape[0]
    opt_state = jax.vmap(make_optimizer(config).init)(params_K)
    return LocalState(params=jax.tree.map(jnp.copy, params_K), opt_state=opt_state, rng_K=jnp.copy(rng_K),
                      epoch=jnp.zeros((), jnp.int32), active_K=jnp.ones(n, bool),
                      best_params=jax.tree.map(jnp.copy, params_K), best_score_K=jnp.full(n, -jnp.inf, jnp.float32),
                      best_epoch_K=jnp.zeros(n, jnp.int32), epochs_run_K=jnp.zeros(n, jnp.int32))


def _where_K(cond_K: jax.Array, new, old):
    """Per-model select on stacked pytrees (leading axis K)."""
    def pick(a, b):
        return jnp.where(cond_K.reshape(cond_K.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, new, old)


def _one_step(params: Params, opt_state, users_S, w_S, key, do, data: UserData,
              config: LocalTrainConfig):
    """One Adam step of one model on one batch; a no-op unless ``do`` and the batch has a user."""
    x = dense_rows(data.train_idx[users_S], data.n_items)
    mask = (users_S < data.n_users).astype(jnp.float32)
    n_real = jnp.sum(mask)

    def loss_fn(p):
        xn = vae.normalise(x)
        if config.dropout > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(key, _DROPOUT), 1 - config.dropout, xn.shape)
            xn = jnp.where(keep, xn / (1 - config.dropout), 0.0)
        logits, kl_S = vae.expert_forward(p, xn, jax.random.fold_in(key, _NOISE), train=True,
                                          noise_std=config.noise_std)
        ce_S = -jnp.sum(x * jax.nn.log_softmax(logits, axis=-1), axis=-1)
        w = w_S * mask
        denom = n_real if config.loss_norm == "count" else jnp.sum(w)
        loss = jnp.sum(w * ce_S) / jnp.maximum(denom, 1e-30)
        if config.beta:
            loss = loss + config.beta * jnp.sum(mask * kl_S) / jnp.maximum(n_real, 1.0)
        return loss

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, new_opt = make_optimizer(config).update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    do = do & (n_real > 0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(do, a, b), new, old)
    return keep(new_params, params), keep(new_opt, opt_state), jnp.where(do, loss, jnp.nan)


def epoch_order(sets: LocalSets, rng_K: jax.Array, epoch_K: jax.Array, n_users: int,
                config: LocalTrainConfig):
    """This epoch's per-model batches: (users [nb, K, S], weights [nb, K, S]).

    Shuffling sorts each model's real positions by a uniform draw keyed on (model key, the model's
    own epoch, position), so a model's permutation depends neither on how wide the padded lists are
    nor on when its slot started it.
    """
    users, w = sets.users_KxU, sets.w_KxU
    n_models, width = users.shape
    if config.shuffle:
        def sort_keys(key, real_U, epoch):
            key = jax.random.fold_in(jax.random.fold_in(key, _SHUFFLE), epoch)
            r = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(jnp.arange(width))
            return jnp.where(real_U, r, 2.0)
        perm = jnp.argsort(jax.vmap(sort_keys)(rng_K, users < n_users, epoch_K), axis=1)
        users = jnp.take_along_axis(users, perm, axis=1)
        w = jnp.take_along_axis(w, perm, axis=1)
    s = config.batch_size
    nb = -(-width // s)
    pad = nb * s - width
    users = jnp.pad(users, ((0, 0), (0, pad)), constant_values=n_users)
    w = jnp.pad(w, ((0, 0), (0, pad)))
    return (users.reshape(n_models, nb, s).transpose(1, 0, 2),
            w.reshape(n_models, nb, s).transpose(1, 0, 2))


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def train_epoch(state: LocalState, data: UserData, sets: LocalSets, config: LocalTrainConfig):
    """One epoch of every active model: a ``lax.scan`` over batch positions, ``vmap`` over models.

    Returns the new state and the mean training loss per model (NaN for a model that did not train).
    """
    users_BxKxS, w_BxKxS = epoch_order(sets, state.rng_K, state.epochs_run_K, data.n_users, config)
    step = jax.vmap(functools.partial(_one_step, data=data, config=config))

    def body(carry, inp):
        params, opt_state = carry
        b, users_KxS, w_KxS = inp
        keys = jax.vmap(lambda k, e: jax.random.fold_in(jax.random.fold_in(k, e), b))(
            state.rng_K, state.epochs_run_K)
        params, opt_state, loss_K = step(params, opt_state, users_KxS, w_KxS, keys, state.active_K)
        return (params, opt_state), loss_K

    nb = users_BxKxS.shape[0]
    (params, opt_state), loss_BxK = jax.lax.scan(
        body, (state.params, state.opt_state), (jnp.arange(nb), users_BxKxS, w_BxKxS))
    state = state.replace(params=params, opt_state=opt_state, epoch=state.epoch + 1,
                          epochs_run_K=state.epochs_run_K + state.active_K.astype(jnp.int32))
    return state, jnp.nanmean(loss_BxK, axis=0)


def _valid_scores(params_K: Params, data: UserData, cands: LocalSets, eval_batch: int) -> jax.Array:
    """Mean over each model's candidates of mean_k validation NDCG@k (docs/fidelity.md#metrics), f32 [K]."""
    users = cands.users_KxU
    n_models, width = users.shape
    nb = -(-width // eval_batch)
    users = jnp.pad(users, ((0, 0), (0, nb * eval_batch - width)), constant_values=data.n_users)
    users_BxKxS = users.reshape(n_models, nb, eval_batch).transpose(1, 0, 2)

    def one(p, users_S):
        x = dense_rows(data.train_idx[users_S], data.n_items)
        v = dense_rows(data.valid_idx[users_S], data.n_items)
        logits, _ = vae.expert_forward(p, vae.normalise(x), jax.random.PRNGKey(0), train=False,
                                       noise_std=0.0)
        m = rank_metrics(logits, x > 0, v > 0, KS)
        score_S = jnp.mean(jnp.stack([m[f"ndcg@{k}"] for k in KS]), axis=0)
        ok = (users_S < data.n_users) & jnp.isfinite(score_S)
        return jnp.sum(jnp.where(ok, score_S, 0.0)), jnp.sum(ok)

    sums, counts = jax.lax.map(lambda u: jax.vmap(one)(params_K, u), users_BxKxS)
    return jnp.sum(sums, axis=0) / jnp.sum(counts, axis=0)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def validate(state: LocalState, data: UserData, cands: LocalSets, config: LocalTrainConfig):
    """Early-stopping bookkeeping after an epoch (docs/fidelity.md#early-stopping, per model): the first epoch always
    improves, later ones only if strictly better; a model stops after ``patience`` epochs without
    improvement. Returns the new state and the scores [K]."""
    score_K = _valid_scores(state.params, data, cands, config.eval_batch)
    improved = state.active_K & ((state.best_epoch_K == 0) | (score_K > state.best_score_K))
    best_epoch = jnp.where(improved, state.epochs_run_K, state.best_epoch_K)
    active = state.active_K & (state.epochs_run_K - best_epoch < config.patience)
    return state.replace(best_params=_where_K(improved, state.params, state.best_params),
                         best_score_K=jnp.where(improved, score_K, state.best_score_K),
                         best_epoch_K=best_epoch, active_K=active), score_K


def train_local(state: LocalState, data: UserData, sets: LocalSets, config: LocalTrainConfig,
                cands: LocalSets | None = None, *, progress: bool = False, desc: str = "local",
                max_epochs: int | None = None) -> LocalState:
    """Train every model until it stops (patience on ``cands``) or ``config.max_epochs`` epochs.

    With ``config.patience == 0`` there is no validation: ``best_params`` is the final state.
    """
    limit = min(config.max_epochs, max_epochs or config.max_epochs)
    # with early stopping the number of epochs is unknown: count them instead of a meaningless ETA
    bar = tqdm(total=None if config.patience else limit, desc=desc, unit="epoch", disable=not progress,
               dynamic_ncols=True, leave=False)
    state = _cap(state, limit)
    while bool(jnp.any(state.active_K)):
        state = _epoch_and_stop(state, data, sets, cands, config, limit)
        bar.set_postfix(active=int(jnp.sum(state.active_K)), refresh=False)
        bar.update(1)
    bar.close()
    if not config.patience:
        state = state.replace(best_params=state.params, best_epoch_K=state.epochs_run_K)
    return state


def _cap(state: LocalState, limit: int) -> LocalState:
    """A model stops once it has trained ``limit`` epochs of its own."""
    return state.replace(active_K=state.active_K & (state.epochs_run_K < limit))


def _epoch_and_stop(state, data, sets, cands, config, limit):
    """One epoch of every active model, then each model's stopping rule (patience, epoch cap)."""
    state, _ = train_epoch(state, data, sets, config)
    if config.patience:
        if cands is None:
            raise ValueError("early stopping (patience > 0) needs candidate users")
        state, _ = validate(state, data, cands, config)
    return _cap(state, limit)


def train_queue(data: UserData, init_params: Params, rng: jax.Array, lists: list[np.ndarray],
                weights: list[np.ndarray] | None, cand_lists: list[np.ndarray] | None,
                config: LocalTrainConfig, slots: int, *, order=None, on_done=None,
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
    width = max(len(lists[k]) for k in order)
    cwidth = None if cand_lists is None else max(len(cand_lists[k]) for k in order)
    host_init = jax.device_get(init_params)
    queue, first = order[n_slots:], order[:n_slots]
    occupant = np.array(first)
    sets = LocalSets.from_lists([lists[k] for k in first], data.n_users,
                                None if weights is None else [weights[k] for k in first],
                                multiple=config.batch_size, width=width)
    cands = (None if cand_lists is None else
             LocalSets.from_lists([cand_lists[k] for k in first], data.n_users, multiple=config.eval_batch,
                                  width=cwidth))
    state = init_local(jax.tree.map(lambda a: jnp.asarray(a[np.array(first)]), host_init),
                       jnp.asarray(rng)[np.array(first)], config)
    state = _cap(state, config.max_epochs)
    opt_init = make_optimizer(config).init
    bar = tqdm(total=len(order), desc=desc, unit="model", disable=not progress, dynamic_ncols=True)
    while (occupant >= 0).any():
        state = _epoch_and_stop(state, data, sets, cands, config, config.max_epochs)
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


def _fill_slot(state: LocalState, sets: LocalSets, cands: LocalSets | None, slot: int, host_init, rng,
               k: int, lists, weights, cand_lists, opt_init, n_users: int):
    """Put model ``k`` (fresh Adam state, epoch 0, its user lists) into ``slot``."""
    params = jax.tree.map(lambda a: jnp.asarray(a[k]), host_init)
    put = lambda tree, new: jax.tree.map(lambda a, b: a.at[slot].set(b), tree, new)
    state = state.replace(
        params=put(state.params, params), opt_state=put(state.opt_state, opt_init(params)),
        rng_K=state.rng_K.at[slot].set(jnp.asarray(rng)[k]), best_params=put(state.best_params, params),
        best_score_K=state.best_score_K.at[slot].set(-jnp.inf), best_epoch_K=state.best_epoch_K.at[slot].set(0),
        epochs_run_K=state.epochs_run_K.at[slot].set(0), active_K=state.active_K.at[slot].set(True))

    def put_row(target: LocalSets, ell, w) -> LocalSets:
        row = LocalSets.from_lists([ell], n_users, None if w is None else [w], width=target.users_KxU.shape[1])
        return LocalSets(target.users_KxU.at[slot].set(row.users_KxU[0]), target.w_KxU.at[slot].set(row.w_KxU[0]))

    sets = put_row(sets, lists[k], None if weights is None else weights[k])
    if cands is not None:
        cands = put_row(cands, cand_lists[k], None)
    return state, sets, cands


def _eval_logits(params: Params, x_BxM: jax.Array) -> jax.Array:
    return vae.expert_forward(params, vae.normalise(x_BxM), jax.random.PRNGKey(0), train=False,
                              noise_std=0.0)[0]


@jax.jit
def mixture_logits(params_K: Params, x_BxM: jax.Array, w_BxK: jax.Array) -> jax.Array:
    """sum_k w_bk logits_k(x_b) / sum_k w_bk, eval mode (docs/fidelity.md#loca, #enlft); NaN rows where the
    weights sum to 0 (the caller substitutes its fallback)."""
    def add(acc, pw):
        p, w_B = pw
        return acc + w_B[:, None] * _eval_logits(p, x_BxM), None

    acc, _ = jax.lax.scan(add, jnp.zeros(x_BxM.shape, jnp.float32), (params_K, w_BxK.T))
    return acc / jnp.sum(w_BxK, axis=1, keepdims=True)


@jax.jit
def own_user_logits(params_K: Params, x_KxM: jax.Array) -> jax.Array:
    """Each copy k scores its own user's row x_k (LFT, docs/fidelity.md#lft): logits [K, M]."""
    return jax.vmap(lambda p, x: _eval_logits(p, x[None])[0])(params_K, x_KxM)


_metrics = jax.jit(valid_test_metrics, static_argnames=("ks",))


def evaluate_rows(score_fn, users: np.ndarray, data: UserData, batch: int = 256) -> dict[str, np.ndarray]:
    """Per-user valid/test NDCG and Recall@{1,5,10,20} of ``score_fn(users_B, x_BxM) -> logits_BxM``
    for ``users`` (train items excluded; validation items stay candidates for test, docs/fidelity.md#metrics)."""
    out: dict[str, list[np.ndarray]] = {}
    users = np.asarray(users, np.int32)
    for start in range(0, len(users), batch):
        u = np.full(batch, data.n_users, np.int32)
        n = min(batch, len(users) - start)
        u[:n] = users[start:start + n]
        u_j = jnp.asarray(u)
        x = dense_rows(data.train_idx[u_j], data.n_items)
        res = _metrics(score_fn(u_j, x), x, dense_rows(data.valid_idx[u_j], data.n_items),
                       dense_rows(data.test_idx[u_j], data.n_items))
        for k, v in res.items():
            out.setdefault(k, []).append(np.asarray(v)[:n])
    return {k: np.concatenate(v) for k, v in out.items()}


def stack_params(params: Params, n: int) -> Params:
    """``n`` copies of one model's parameters on a leading axis (LFT/EnLFT start from the global model)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), params)


def copy_bytes(n_items: int, latent: int, batch: int) -> int:
    """Rough device bytes per local model in training: params, grads, Adam moments, updates, best
    copy (6 x params) plus a batch's activations (~8 x batch x M floats)."""
    n_params = n_items * 2 * latent + 2 * latent + latent * n_items + n_items
    return 4 * (6 * n_params + 8 * batch * n_items)
