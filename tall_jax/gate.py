"""TALL's loss-driven gate and the logit-space mixture (paper §3.1, docs/fidelity.md#gate), a routing gate of
per-item losses (an option), plus the MLP gate of
the "MoE" ablation (docs/fidelity.md#ablations) and gate diagnostics (docs/fidelity.md#near-uniform-gate)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tall_jax.vae import Params


def masked_validation_loss(logits_BxM: jax.Array, x_BxM: jax.Array, v_BxM: jax.Array) -> jax.Array:
    """The authors' per-user validation loss with the "mask trick" (docs/fidelity.md#gate), shape [B]:

        L_u = |V_u| * logsumexp_m(o_um * (1 - x_um)) - sum_{i in V_u} o_ui.

    Train items' logits become 0 inside the softmax denominator (each adds e^0) rather than being
    removed; the loss is a sum over validation items, not a mean. Users with no validation item get 0.
    Works on any leading axes (e.g. [E, B, M] logits with [B, M] masks).
    """
    x_BxM = jnp.broadcast_to(x_BxM, logits_BxM.shape)
    v_BxM = jnp.broadcast_to(v_BxM, logits_BxM.shape)
    n_valid = jnp.sum(v_BxM, axis=-1)
    log_denominator = jax.nn.logsumexp(logits_BxM * (1.0 - x_BxM), axis=-1)
    return n_valid * log_denominator - jnp.sum(logits_BxM * v_BxM, axis=-1)


def loss_gate(loss_BxE: jax.Array, has_valid_B: jax.Array, *, temperature: float = 1.0,
              stop_gradient: bool = False) -> jax.Array:
    """g_uk = softmax_k((1 / L_uk) / temperature) (paper §3.1; temperature 1 is the authors' gate).

    Users without validation items (82 in the authors' ML-1M split) get the uniform gate, with finite
    gradients (the reciprocal is taken of a safe placeholder, not of 0).
    """
    return validation_gate(loss_BxE, has_valid_B.astype(jnp.float32), kind="loss",
                           temperature=temperature, stop_gradient=stop_gradient)


def route_gate(loss_BxE: jax.Array, n_valid_B: jax.Array, *, temperature: float = 1.0,
               stop_gradient: bool = False) -> jax.Array:
    """A gate that routes (an option, not the paper's): g_uk = softmax_k(−(L_uk / |V_u|) / temperature).

    The loss gate's 1/L_uk differs between experts by about 1/L² · ΔL, so it is uniform to five
    decimals; this gate compares the experts' per-item validation losses directly, and a small
    temperature makes it pick the few experts that fit the user best. Users without validation items
    get the uniform gate.
    """
    return validation_gate(loss_BxE, n_valid_B, kind="route", temperature=temperature,
                           stop_gradient=stop_gradient)


def validation_gate_logits(loss_BxE: jax.Array, n_valid_B: jax.Array, *, kind: str = "loss",
                           temperature: float = 1.0) -> jax.Array:
    """The logits s_uk whose softmax over experts is :func:`validation_gate`: (1 / L_uk) / temperature
    (``kind="loss"``) or −(L_uk / |V_u|) / temperature ("route"), 0 for users without validation
    items (so their gate is uniform). Each s_uk depends on L_uk alone, so a chunk of experts' logits
    can be formed as soon as its losses are (the online mixture of :mod:`tall_jax.head`)."""
    has_valid_B = n_valid_B > 0
    if kind == "route":
        logits_BxE = -(loss_BxE / jnp.maximum(n_valid_B, 1.0)[:, None]) / temperature
    else:  # the reciprocal of a safe placeholder where there is no validation item, not of 0
        logits_BxE = 1.0 / (jnp.where(has_valid_B[:, None], loss_BxE, 1.0) * temperature)
    return jnp.where(has_valid_B[:, None], logits_BxE, 0.0)


def validation_gate(loss_BxE: jax.Array, n_valid_B: jax.Array, *, kind: str = "loss",
                    temperature: float = 1.0, stop_gradient: bool = False) -> jax.Array:
    """The gate of the experts' validation losses L_uk ([B, E]) for users with |V_u| = ``n_valid_B``
    validation items: :func:`loss_gate` (``kind="loss"``, the paper's) or :func:`route_gate` ("route"),
    i.e. softmax_k of :func:`validation_gate_logits`."""
    gate = jax.nn.softmax(validation_gate_logits(loss_BxE, n_valid_B, kind=kind,
                                                 temperature=temperature), axis=-1)
    return jax.lax.stop_gradient(gate) if stop_gradient else gate


def init_mlp_gate(key: jax.Array, n_items: int, hidden: int, n_experts: int) -> Params:
    """Linear(M -> hidden) -> ReLU -> Linear(hidden -> E), PyTorch default init (docs/fidelity.md#ablations)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    b1, b2 = 1.0 / np.sqrt(n_items), 1.0 / np.sqrt(hidden)
    u = jax.random.uniform
    return {
        "w1": u(k1, (n_items, hidden), jnp.float32, -b1, b1),
        "b1": u(k2, (hidden,), jnp.float32, -b1, b1),
        "w2": u(k3, (hidden, n_experts), jnp.float32, -b2, b2),
        "b2": u(k4, (n_experts,), jnp.float32, -b2, b2),
    }


def mlp_gate(params: Params, x_BxM: jax.Array) -> jax.Array:
    """Softmax gate of a standard MoE applied to the raw (unnormalised) train row, [B, E]."""
    hidden = jax.nn.relu(x_BxM @ params["w1"] + params["b1"][None, :])
    return jax.nn.softmax(hidden @ params["w2"] + params["b2"][None, :], axis=-1)


def mix_logits(gate_BxE: jax.Array, logits_ExBxM: jax.Array) -> jax.Array:
    """o_u = sum_k g_uk o_uk: the experts' raw logits are mixed, softmax comes after (docs/fidelity.md#mixture)."""
    return jnp.einsum("be,ebm->bm", gate_BxE, logits_ExBxM)


def gate_diagnostics(gate_BxE: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-user gate entropy (nats) and max(g)/min(g) (docs/fidelity.md#near-uniform-gate: the loss gate is nearly uniform)."""
    entropy = -jnp.sum(gate_BxE * jnp.log(jnp.maximum(gate_BxE, 1e-30)), axis=-1)
    ratio = jnp.max(gate_BxE, axis=-1) / jnp.maximum(jnp.min(gate_BxE, axis=-1), 1e-30)
    return entropy, ratio
