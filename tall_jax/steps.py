"""Pure training and evaluation steps of the MultVAE family (MultVAE, WL, MoE, LMoE, TALL).

``train_step(state, batch, config) -> (state, metrics)`` is one Adam step on one batch (docs/fidelity.md#loss);
``train_epoch`` runs a whole epoch as a ``lax.scan`` on the device, with the adaptive weights set at its
start and the loss-change window updated at its end (docs/fidelity.md#adaptive-weights, #epoch); ``evaluate`` scores all users'
validation and test rankings through the one evaluator (:mod:`tall_jax.evaluation`) with
:class:`MixtureScorer`. ``config`` is static everywhere.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from tall_jax import gate as gate_lib
from tall_jax import evaluation, head, objective, vae, weights
from tall_jax.batching import Batch, UserData, dense_rows, epoch_order, make_batch
from tall_jax.configs import TALLConfig
from tall_jax.objective import NOISE, SHUFFLE
from tall_jax.ranking import DEFAULT_KS, normalise_ks
from tall_jax.state import TrainState, make_optimizer
from tall_jax.vae import Params

KS = DEFAULT_KS  # early-stopping cut-offs of the faithful default (docs/fidelity.md#metrics); evaluation
# also ranks at the cut-offs of the config's ``ks`` field (the union, sorted)
# encoder="auto" encodes sparsely below this share of nonzeros in the batch (benchmarks/README.md)
SPARSE_ENCODER_DENSITY = 0.02
# gates of the experts' per-user losses L_uk -> the tall_jax.gate.validation_gate kind they use
LOSS_GATE_KINDS = {"loss": "loss", "route": "route", "route_train": "route"}


def gate_rows(x_BxM: jax.Array, v_BxM: jax.Array, config: TALLConfig) -> tuple[jax.Array, jax.Array]:
    """(mask, target) rows of the gate's per-expert losses L_uk = |T_u| logsumexp(o_uk (1 - mask_u)) -
    sum_{i in T_u} o_uki (:func:`tall_jax.gate.masked_validation_loss`): the authors' (train items
    masked, validation items the targets) for "loss" and "route"; for "route_train" (an option),
    nothing masked and the train items the targets, i.e. the expert's multinomial NLL of the user's
    train items, a routing signal that never sees the validation items the model is selected on."""
    if config.gate == "route_train":
        return jnp.zeros_like(x_BxM), x_BxM
    return x_BxM, v_BxM


def beta_at(step: jax.Array, config: TALLConfig) -> jax.Array:
    """KL weight before the ``step``-th update: min(cap, step / total_anneal_steps) (docs/fidelity.md#multvae)."""
    if config.constant_beta is not None:
        return jnp.asarray(config.constant_beta, jnp.float32)
    return jnp.minimum(config.anneal_cap, step.astype(jnp.float32) / config.total_anneal_steps)


def forward(params: Params, x_BxM: jax.Array, v_BxM: jax.Array, key: jax.Array,
            config: TALLConfig, *, train: bool, nnz_cap: int = 0) -> dict[str, jax.Array]:
    """Experts, gate and mixture for a batch (docs/fidelity.md#gate). Returns gate_BxE, mix_BxM, kl_ExB (the fused
    path's evaluation encodes the means only and returns no kl_ExB) and, on the all-at-once
    reference path only, logits_ExBxM. The loss gate uses the validation rows
    ``v_BxM`` in training and at evaluation alike. ``config.forward_impl`` picks the fused head
    (:mod:`tall_jax.head`) or the reference path; both compute the same maths. ``nnz_cap`` bounds
    the train nonzeros of the batch (``Batch.nnz_cap``; 0 = unknown, which rules out the sparse
    encoder)."""
    xn = vae.normalise(x_BxM)
    if train:
        xn = objective.input_dropout(xn, key, config.dropout)
    n_experts = params["experts"]["dec_b"].shape[0]
    if config.forward_impl == "fused":
        return _forward_fused(params, xn, x_BxM, v_BxM, key, config, train=train, nnz_cap=nnz_cap)
    if 0 < config.expert_chunk < n_experts:
        return _forward_chunked(params, xn, x_BxM, v_BxM, key, config, train=train)
    logits_ExBxM, kl_ExB = vae.experts_forward(
        params["experts"], xn, jax.random.fold_in(key, NOISE), train=train,
        noise_std=config.noise_std, precision=config.matmul_precision)
    mask_BxM, target_BxM = gate_rows(x_BxM, v_BxM, config)
    gate_BxE = _gate(params, x_BxM, target_BxM, config, n_experts,
                     lambda: gate_lib.masked_validation_loss(logits_ExBxM, mask_BxM, target_BxM).T)
    mix_BxM = logits_ExBxM[0] if n_experts == 1 else gate_lib.mix_logits(gate_BxE, logits_ExBxM)
    return dict(logits_ExBxM=logits_ExBxM, kl_ExB=kl_ExB, gate_BxE=gate_BxE, mix_BxM=mix_BxM)


def use_sparse_encoder(config: TALLConfig, nnz_cap: int, batch: int, n_items: int) -> bool:
    """Whether the fused forward encodes from the nonzeros (``config.encoder``, see configs)."""
    if config.encoder == "auto":
        return 0 < nnz_cap <= SPARSE_ENCODER_DENSITY * batch * n_items
    if config.encoder == "sparse" and nnz_cap <= 0:
        raise ValueError("encoder='sparse' needs a batch from make_batch (its nnz_cap bound)")
    return config.encoder == "sparse"


def _forward_fused(params: Params, xn_BxM: jax.Array, x_BxM: jax.Array, v_BxM: jax.Array,
                   key: jax.Array, config: TALLConfig, *, train: bool,
                   nnz_cap: int) -> dict[str, jax.Array]:
    """:func:`forward` through :mod:`tall_jax.head`: no [E, B, M] array in the forward or backward
    pass. Expert k draws the same noise as in :func:`tall_jax.vae.experts_forward`."""
    experts, precision = params["experts"], config.matmul_precision
    n_experts = experts["dec_b"].shape[0]
    # evaluation uses z = mu, so it multiplies by the encoder's mean columns only
    if use_sparse_encoder(config, nnz_cap, *x_BxM.shape):
        mu_ExBxD, logvar_ExBxD = head.encode_experts_sparse(experts["enc_w"], experts["enc_b"],
                                                            xn_BxM, nnz_cap, means_only=not train)
    else:
        mu_ExBxD, logvar_ExBxD = head.encode_experts(experts["enc_w"], experts["enc_b"], xn_BxM,
                                                     precision, means_only=not train)
    if train:
        keys = jax.random.split(jax.random.fold_in(key, NOISE), n_experts)
        eps = jax.vmap(lambda k: jax.random.normal(k, mu_ExBxD.shape[1:], mu_ExBxD.dtype))(keys)
        z_ExBxD = mu_ExBxD + config.noise_std * eps * jnp.exp(0.5 * logvar_ExBxD)
    else:
        z_ExBxD = mu_ExBxD
    chunk = config.expert_chunk or head.auto_chunk(n_experts, *x_BxM.shape)
    decoder = (z_ExBxD, experts["dec_w"], experts["dec_b"])
    mask_BxM, target_BxM = gate_rows(x_BxM, v_BxM, config)
    # a detached gate trains cheaper through the mixture GEMM (no gate VJP to form), but evaluation
    # differentiates nothing, so it always takes the online mixture
    if config.gate in LOSS_GATE_KINDS and not (config.gate_stop_gradient and train):
        gate_logits_fn = functools.partial(gate_lib.validation_gate_logits,
                                           kind=LOSS_GATE_KINDS[config.gate],
                                           temperature=config.gate_temperature)
        mix_BxM, gate_BxE = head.loss_gated_mixture(*decoder, mask_BxM, target_BxM, gate_logits_fn,
                                                    chunk, precision)
    else:  # the gate takes no gradient through the experts' validation losses
        gate_BxE = _gate(params, x_BxM, target_BxM, config, n_experts, lambda: head.expert_validation_losses(
            *jax.lax.stop_gradient(decoder), mask_BxM, target_BxM, chunk, precision).T)
        mix_BxM = head.mixture_logits(gate_BxE, *decoder, precision)
    out = dict(gate_BxE=gate_BxE, mix_BxM=mix_BxM)
    if train:
        out["kl_ExB"] = vae.kl_per_user(mu_ExBxD, logvar_ExBxD)
    return out


def _gate(params: Params, x_BxM: jax.Array, target_BxM: jax.Array, config: TALLConfig, n_experts: int,
          validation_loss_BxE) -> jax.Array:
    """g [B, E] of the configured gate; ``validation_loss_BxE()`` gives L_uk over the targets of
    :func:`gate_rows` for the loss gates."""
    if config.gate in LOSS_GATE_KINDS:
        return gate_lib.validation_gate(validation_loss_BxE(), jnp.sum(target_BxM, axis=-1),
                                        kind=LOSS_GATE_KINDS[config.gate], temperature=config.gate_temperature,
                                        stop_gradient=config.gate_stop_gradient)
    if config.gate == "mlp":
        gate_BxE = gate_lib.mlp_gate(params["gate"], x_BxM)
        return jax.lax.stop_gradient(gate_BxE) if config.gate_stop_gradient else gate_BxE
    # "uniform", or "none" with a single expert
    return jnp.full((x_BxM.shape[0], n_experts), 1.0 / n_experts, jnp.float32)


def _forward_chunked(params: Params, xn_BxM: jax.Array, x_BxM: jax.Array, v_BxM: jax.Array,
                     key: jax.Array, config: TALLConfig, *, train: bool) -> dict[str, jax.Array]:
    """:func:`forward` with ``config.expert_chunk`` experts at a time (memory option; same maths).

    Pass 1 (loss gate only) computes L_uk chunk by chunk, the gate follows, and pass 2 recomputes each
    chunk's logits and accumulates the mixture. Both passes are ``jax.checkpoint``-ed scans, so no
    [E, B, M] array exists in the forward or the backward pass. Expert k draws the same noise key as
    in :func:`tall_jax.vae.experts_forward`. The returned dict has no ``logits_ExBxM``.
    """
    experts = params["experts"]
    n_experts, batch = experts["dec_b"].shape[0], x_BxM.shape[0]
    n_chunks = n_experts // config.expert_chunk
    keys = jax.random.split(jax.random.fold_in(key, NOISE), n_experts)
    chunk = lambda a: a.reshape((n_chunks, config.expert_chunk) + a.shape[1:])  # noqa: E731
    params_C, keys_C = jax.tree.map(chunk, experts), chunk(keys)

    def run(p, k):
        return jax.vmap(lambda pe, ke: vae.expert_forward(
            pe, xn_BxM, ke, train=train, noise_std=config.noise_std,
            precision=config.matmul_precision))(p, k)

    mask_BxM, target_BxM = gate_rows(x_BxM, v_BxM, config)

    @jax.checkpoint
    def val_loss(pk):
        logits_cxBxM, _ = run(*pk)
        return gate_lib.masked_validation_loss(logits_cxBxM, mask_BxM, target_BxM)

    gate_BxE = _gate(params, x_BxM, target_BxM, config, n_experts, lambda: jax.lax.map(
        val_loss, (params_C, keys_C)).reshape(n_experts, batch).T)

    @jax.checkpoint
    def mix_step(mix_BxM, pkg):
        p, k, gate_cxB = pkg
        logits_cxBxM, kl_cxB = run(p, k)
        return mix_BxM + gate_lib.mix_logits(gate_cxB.T, logits_cxBxM), kl_cxB

    mix_BxM, kl_CxcxB = jax.lax.scan(mix_step, jnp.zeros(x_BxM.shape, jnp.float32),
                                     (params_C, keys_C, chunk(gate_BxE.T)))
    return dict(kl_ExB=kl_CxcxB.reshape(n_experts, batch), gate_BxE=gate_BxE, mix_BxM=mix_BxM)


def loss_fn(params: Params, batch: Batch, w_B: jax.Array, beta: jax.Array, key: jax.Array,
            config: TALLConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """loss = sum_u w_u CE_u / sum_u w_u + beta * KL_mix (docs/fidelity.md#loss), over the batch's real users.

    KL_mix (docs/fidelity.md#kl): "sum_users" = sum_u sum_k g_uk KLbar_k (faithful; about B times the
    MultVAE KL weight), "mean" = the same divided by the number of users, "per_user" = mean_u sum_k
    g_uk KL_uk with each user's own KL. With one expert and "mean" this is MultVAE's CE + beta * KLbar.
    Also returns, detached, each user's mixture validation loss l_u (mask trick, docs/fidelity.md#loss).
    """
    x_BxM = dense_rows(batch.train_idx, batch.n_items)
    v_BxM = dense_rows(batch.valid_idx, batch.n_items)
    out = forward(params, x_BxM, v_BxM, key, config, train=True, nnz_cap=batch.nnz_cap)
    mask_B = batch.mask
    n_real = jnp.sum(mask_B)
    ce_B = objective.multinomial_ce(out["mix_BxM"], x_BxM)
    w_B = w_B * mask_B
    ce = jnp.sum(w_B * ce_B) / jnp.maximum(jnp.sum(w_B), 1e-30)
    gate_BxE, kl_ExB = out["gate_BxE"], out["kl_ExB"]
    if config.kl_reduction == "per_user":
        kl = jnp.sum(mask_B * jnp.sum(gate_BxE * kl_ExB.T, axis=-1)) / n_real
    else:
        kl_bar_E = jnp.sum(kl_ExB * mask_B[None, :], axis=-1) / n_real
        kl_sum = jnp.sum(mask_B * (gate_BxE @ kl_bar_E))
        kl = kl_sum if config.kl_reduction == "sum_users" else kl_sum / n_real
    recorded_B = jax.lax.stop_gradient(
        gate_lib.masked_validation_loss(out["mix_BxM"], x_BxM, v_BxM))
    entropy_B, _ = gate_lib.gate_diagnostics(jax.lax.stop_gradient(gate_BxE))
    aux = dict(ce=ce, kl=kl, recorded_B=recorded_B,
               gate_entropy=jnp.sum(entropy_B * mask_B) / n_real)
    return ce + beta * kl, aux


def _apply(params: Params, opt_state: optax.OptState, grads: Params, config: TALLConfig):
    updates, opt_state = make_optimizer(config).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _train_step(state: TrainState, batch: Batch, config: TALLConfig):
    key = jax.random.fold_in(jax.random.fold_in(state.rng, NOISE), state.step)
    w_B = state.weights_N.at[batch.users].get(mode="fill", fill_value=0.0)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    params, opt_state, step = state.params, state.opt_state, state.step
    if config.adaptive == "wl" and config.wl_double_step:
        # TALL-repo WL quirk (docs/fidelity.md#wl): an unweighted step, then the weighted one; both count.
        (_, _), grads = grad_fn(params, batch, jnp.ones_like(w_B), beta_at(step, config), key,
                                config)
        params, opt_state = _apply(params, opt_state, grads, config)
        step = step + 1
        key = jax.random.fold_in(jax.random.fold_in(state.rng, NOISE), step)
    (loss, aux), grads = grad_fn(params, batch, w_B, beta_at(step, config), key, config)
    params, opt_state = _apply(params, opt_state, grads, config)
    loss_N = state.loss_N.at[batch.users].set(aux["recorded_B"], mode="drop")
    new_state = state.replace(params=params, opt_state=opt_state, step=step + 1, loss_N=loss_N)
    metrics = dict(loss=loss, ce=aux["ce"], kl=aux["kl"], beta=beta_at(step, config),
                   gate_entropy=aux["gate_entropy"])
    return new_state, metrics


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def train_step(state: TrainState, batch: Batch, config: TALLConfig):
    """One optimizer step on one batch; records each user's l_u before the update (docs/fidelity.md#loss).

    ``batch`` comes from :func:`tall_jax.batching.make_batch`; its padding users change nothing. The
    adaptive weights are read from ``state.weights_N``: call :func:`begin_epoch` / :func:`end_epoch`
    around each epoch of a hand-written loop to update them as TALL does.
    """
    return _train_step(state, batch, config)


def begin_epoch(state: TrainState, config: TALLConfig, n_valid_N: jax.Array) -> TrainState:
    """Set w for epoch t = state.epoch + 1 (paper Eq. 3, docs/fidelity.md#adaptive-weights): 1 while t <= T, else KKT weights
    of the loss-change window mean ("loss_change") or of the last raw loss ("raw_loss")."""
    if config.adaptive in ("none", "wl"):
        return state
    w_N = weights.adaptive_weights(
        state.epoch + 1, config.gap, config.alpha, signal=config.adaptive,
        window_NxL=state.window_NxL, count=state.window_count, last_loss_N=state.loss_N,
        mode=config.kkt_mode, per_item=config.weight_per_item, n_valid_N=n_valid_N,
        cap=config.weight_cap)
    return state.replace(weights_N=w_N)


def end_epoch(state: TrainState, config: TALLConfig) -> TrainState:
    """Close epoch t: from t >= 2 push Delta_u = l_u^{t-1} - l_u^t into the window (docs/fidelity.md#adaptive-weights)."""
    window, count = weights.push_window(state.window_NxL, state.window_count,
                                        state.prev_loss_N - state.loss_N)
    has_previous = state.epoch >= 1
    return state.replace(
        window_NxL=jnp.where(has_previous, window, state.window_NxL),
        window_count=jnp.where(has_previous, count, state.window_count),
        prev_loss_N=jnp.copy(state.loss_N),  # a distinct buffer: train_step donates the state
        epoch=state.epoch + 1,
    )


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def train_epoch(state: TrainState, data: UserData, config: TALLConfig):
    """One epoch on the device: weights, a fresh shuffle, a ``lax.scan`` of train steps, the window.

    Returns the new state and the per-step metrics stacked along a leading axis.
    """
    n_valid_N = jnp.sum(data.valid_idx[:-1] < data.n_items, axis=-1).astype(jnp.float32)
    state = begin_epoch(state, config, n_valid_N)
    shuffle_key = jax.random.fold_in(jax.random.fold_in(state.rng, SHUFFLE), state.epoch)
    order = epoch_order(shuffle_key, data.n_users, config.batch_size)

    def body(carry: TrainState, users_B: jax.Array):
        return _train_step(carry, make_batch(data, users_B), config)

    state, metrics = jax.lax.scan(body, state, order)
    return end_epoch(state, config), metrics


def predict(params: Params, batch: Batch, config: TALLConfig):
    """Eval-mode mixture logits [B, M] (z = mu) and the gate [B, E]; the loss gate sees the
    validation items, as in the authors' code (docs/fidelity.md#gate-at-evaluation)."""
    x_BxM = dense_rows(batch.train_idx, batch.n_items)
    v_BxM = dense_rows(batch.valid_idx, batch.n_items)
    out = forward(params, x_BxM, v_BxM, jax.random.PRNGKey(0), config, train=False,
                  nnz_cap=batch.nnz_cap)
    return out["mix_BxM"], out["gate_BxE"], x_BxM, v_BxM


@dataclasses.dataclass(frozen=True)
class MixtureScorer:
    """The TALL family's scorer for :mod:`tall_jax.evaluation`: eval-mode mixture logits and the
    gate's per-user entropy and max/min ratio. Hashable (a static argument of the jitted batch)."""

    config: TALLConfig

    def __call__(self, params: Params, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        mix_BxM, gate_BxE, _, _ = predict(params, batch, self.config)
        entropy_B, ratio_B = gate_lib.gate_diagnostics(gate_BxE)
        return mix_BxM, {"gate/entropy": entropy_B, "gate/max_min_ratio": ratio_B}


def eval_step(params: Params, batch: Batch, test_idx_BxP: jax.Array,
              config: TALLConfig) -> dict[str, jax.Array]:
    """Per-user validation and test metrics @{1,5,10,20} (and ``config.ks``) of one batch, with the
    gate diagnostics (docs/fidelity.md#metrics): train items are excluded from both rankings;
    validation items stay candidates in the test ranking."""
    return evaluation.batch_metrics(MixtureScorer(config.for_scoring()), params, batch, test_idx_BxP,
                                    normalise_ks((*KS, *config.ks)))


def evaluate(params: Params, data: UserData, config: TALLConfig) -> dict[str, jax.Array]:
    """All users' per-user metrics through the one evaluator (:func:`tall_jax.evaluation.evaluate`,
    ``config.eval_batch`` users per compiled call)."""
    return evaluation.evaluate(MixtureScorer(config.for_scoring()), params, data, batch_size=config.eval_batch,
                               ks=(*KS, *config.ks))
