"""K local MultVAEs trained together: stacked parameters, stacked Adam states, one compiled call per
epoch (docs/fidelity.md#loca, #lft, #enlft). The slot queue that streams many models through K slots
is :mod:`tall_jax.baselines.queue`; their scoring, :mod:`tall_jax.baselines.scoring`.

Model k trains on its own user list ``users_KxU[k]`` (the dummy user N pads the end, or marks a hole:
LOCA keeps every id's position so its batches are windows of consecutive ids)
with its own per-user weights ``w_KxU[k]`` (LOCA's kernel values; 1 for LFT). An epoch cuts every
list into batches of ``batch_size`` (the last one partial, as a PyTorch loop does); a model whose
list is exhausted, or which has early-stopped, skips the update (params and Adam state kept by a
``where``), so model k evolves exactly as if it were trained alone. Early stopping is per model on
the mean validation NDCG@{1,5,10,20} over its own candidate users (the rule of
:mod:`tall_jax.stopping`, on [K] arrays), with the best state kept by a ``where`` on the stacked tree.

The state follows the one state convention (:mod:`tall_jax.train_state`): ``init(keys_K, config,
params_K)``; a hand-written loop steps ``train_step`` over ``epoch_batches`` and closes each epoch
with ``end_epoch``, which is ``train_epoch`` step by step.

RNG streams are :mod:`tall_jax.objective`'s (noise 0, shuffle 1, dropout 2). Before the experiment
layer the local models used shuffle 0 and noise 1, so LOCA / LFT / EnLFT runs draw other (equally
distributed) noise and shuffles than runs made before it; LOCA's per-model checkpoint key includes
the streams, so such a run's saved local models are retrained rather than mixed with new ones.
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

from tall_jax import objective, vae
from tall_jax.baselines.scoring import eval_logits
from tall_jax.batching import UserData, dense_rows
from tall_jax.objective import NOISE, SHUFFLE
from tall_jax.optim import adam_l2
from tall_jax.ranking import EARLY_STOPPING_KS, rank_metrics
from tall_jax.stopping import exhausted, improves
from tall_jax.vae import Params

KS = EARLY_STOPPING_KS  # the cut-offs of docs/fidelity.md#early-stopping


@dataclasses.dataclass(frozen=True)
class LocalTrainConfig:
    """How each local model trains. Hashable: a static argument of the jitted epoch."""

    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-3  # torch Adam's coupled L2 (optim.adam_l2)
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
    """K models' parameters, Adam states, keys and per-model early-stopping bookkeeping, in the one
    state convention (:mod:`tall_jax.train_state`; the optimiser is :func:`make_optimizer` of the
    static config)."""

    params: Params  # stacked [K, ...]
    opt_state: optax.OptState  # stacked [K, ...]
    rng: jax.Array  # [K]: one base key per model
    step: jax.Array  # int32: batch positions stepped by the loop (a model without a batch there skips)
    epoch: jax.Array  # int32: epochs run by the loop (a stopped model skips the later ones)
    active_K: jax.Array  # bool: still training
    best_params: Params
    best_score_K: jax.Array  # f32: best validation score so far (-inf before the first)
    best_epoch_K: jax.Array  # int32: epoch (1-based) of the best score, 0 before the first
    epochs_run_K: jax.Array  # int32: epochs model k actually trained


@struct.dataclass
class LocalBatch:
    """One batch position of an epoch for every model: model k steps on users ``users_KxS[k]``
    (N = padding) with weights ``w_KxS[k]``; ``index`` is the position in the epoch (it keys the
    models' noise and dropout)."""

    users_KxS: jax.Array  # int32
    w_KxS: jax.Array  # f32
    index: jax.Array  # int32 scalar


def make_optimizer(config: LocalTrainConfig):
    """Each local model's Adam with coupled L2 (:func:`tall_jax.optim.adam_l2`)."""
    return adam_l2(config.lr, config.weight_decay)


def init(key: jax.Array, config: LocalTrainConfig, params_K: Params) -> LocalState:
    """A state for K models starting from the stacked parameters ``params_K``, with ``key`` [K]
    (one base key per model, e.g. ``jax.random.split(key, K)``) and a fresh Adam state per model."""
    n = key.shape[0]
    opt_state = jax.vmap(make_optimizer(config).init)(params_K)
    return LocalState(params=jax.tree.map(jnp.copy, params_K), opt_state=opt_state, rng=jnp.copy(key),
                      step=jnp.zeros((), jnp.int32), epoch=jnp.zeros((), jnp.int32), active_K=jnp.ones(n, bool),
                      best_params=jax.tree.map(jnp.copy, params_K), best_score_K=jnp.full(n, -jnp.inf, jnp.float32),
                      best_epoch_K=jnp.zeros(n, jnp.int32), epochs_run_K=jnp.zeros(n, jnp.int32))


def where_K(cond_K: jax.Array, new, old):
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
        xn = objective.input_dropout(vae.normalise(x), key, config.dropout)
        logits, kl_S = vae.expert_forward(p, xn, jax.random.fold_in(key, NOISE), train=True,
                                          noise_std=config.noise_std)
        ce_S = objective.multinomial_ce(logits, x)
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
            key = jax.random.fold_in(jax.random.fold_in(key, SHUFFLE), epoch)
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


def _step_models(state: LocalState, params: Params, opt_state, b, users_KxS, w_KxS, data: UserData,
                 config: LocalTrainConfig):
    """Every active model's step at batch position ``b`` of its current epoch (vmapped
    :func:`_one_step`): new (params, opt_state) and the loss per model (NaN where none was taken)."""
    keys = jax.vmap(lambda k, e: jax.random.fold_in(jax.random.fold_in(k, e), b))(state.rng, state.epochs_run_K)
    step = jax.vmap(functools.partial(_one_step, data=data, config=config))
    return step(params, opt_state, users_KxS, w_KxS, keys, state.active_K)


def epoch_batches(state: LocalState, data: UserData, sets: LocalSets, config: LocalTrainConfig) -> list[LocalBatch]:
    """The batches of every model's current epoch, in order, for a hand-written loop of
    :func:`train_step` closed by :func:`end_epoch` (the same steps as :func:`train_epoch`)."""
    users_BxKxS, w_BxKxS = epoch_order(sets, state.rng, state.epochs_run_K, data.n_users, config)
    return [LocalBatch(users_BxKxS[b], w_BxKxS[b], jnp.asarray(b, jnp.int32)) for b in range(users_BxKxS.shape[0])]


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def train_step(state: LocalState, batch: LocalBatch, data: UserData, config: LocalTrainConfig):
    """One batch position of every active model (one Adam step each on its own batch). Returns the
    new state and ``{"loss": loss per model}`` (NaN for a model that did not step)."""
    params, opt_state, loss_K = _step_models(state, state.params, state.opt_state, batch.index, batch.users_KxS,
                                             batch.w_KxS, data, config)
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), {"loss": loss_K}


def end_epoch(state: LocalState) -> LocalState:
    """Close an epoch of the loop: every active model has run one more epoch of its own."""
    return state.replace(epoch=state.epoch + 1,
                         epochs_run_K=state.epochs_run_K + state.active_K.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def train_epoch(state: LocalState, data: UserData, sets: LocalSets, config: LocalTrainConfig):
    """One epoch of every active model: a ``lax.scan`` over batch positions, ``vmap`` over models.

    Returns the new state and the mean training loss per model (NaN for a model that did not train).
    """
    users_BxKxS, w_BxKxS = epoch_order(sets, state.rng, state.epochs_run_K, data.n_users, config)

    def body(carry, inp):
        params, opt_state = carry
        b, users_KxS, w_KxS = inp
        params, opt_state, loss_K = _step_models(state, params, opt_state, b, users_KxS, w_KxS, data, config)
        return (params, opt_state), loss_K

    nb = users_BxKxS.shape[0]
    (params, opt_state), loss_BxK = jax.lax.scan(
        body, (state.params, state.opt_state), (jnp.arange(nb), users_BxKxS, w_BxKxS))
    state = end_epoch(state.replace(params=params, opt_state=opt_state, step=state.step + nb))
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
        m = rank_metrics(eval_logits(p, x), x > 0, v > 0, KS)
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
    improved = state.active_K & improves(score_K, state.best_score_K, state.best_epoch_K)
    best_epoch = jnp.where(improved, state.epochs_run_K, state.best_epoch_K)
    active = state.active_K & ~exhausted(state.epochs_run_K, best_epoch, config.patience)
    return state.replace(best_params=where_K(improved, state.params, state.best_params),
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
    state = cap_epochs(state, limit)
    while bool(jnp.any(state.active_K)):
        state = epoch_and_stop(state, data, sets, cands, config, limit)
        bar.set_postfix(active=int(jnp.sum(state.active_K)), refresh=False)
        bar.update(1)
    bar.close()
    if not config.patience:
        state = state.replace(best_params=state.params, best_epoch_K=state.epochs_run_K)
    return state


def cap_epochs(state: LocalState, limit: int) -> LocalState:
    """A model stops once it has trained ``limit`` epochs of its own."""
    return state.replace(active_K=state.active_K & (state.epochs_run_K < limit))


def epoch_and_stop(state, data, sets, cands, config, limit):
    """One epoch of every active model, then each model's stopping rule (patience, epoch cap)."""
    state, _ = train_epoch(state, data, sets, config)
    if config.patience:
        if cands is None:
            raise ValueError("early stopping (patience > 0) needs candidate users")
        state, _ = validate(state, data, cands, config)
    return cap_epochs(state, limit)


def stack_params(params: Params, n: int) -> Params:
    """``n`` copies of one model's parameters on a leading axis (LFT/EnLFT start from the global model)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), params)


def copy_bytes(n_items: int, latent: int, batch: int) -> int:
    """Rough device bytes per local model in training: params, grads, Adam moments, updates, best
    copy (6 x params) plus a batch's activations (~8 x batch x M floats)."""
    n_params = n_items * 2 * latent + 2 * latent + latent * n_items + n_items
    return 4 * (6 * n_params + 8 * batch * n_items)
