"""TALL's adaptive user weights (paper Eq. 1-3, docs/fidelity.md#adaptive-weights, #weights-and-validation-size, #decisions) as pure, jittable functions.

Three pieces:
- `kkt_weights`: the solution of the weight QP of Eq. (1), either as the authors' closed form (clamp at
  1e-8, no renormalisation: mode "paper") or as the true KKT solution (simplex projection: mode "exact").
- the loss-change window (L = 8 columns per user): `init_window`, `push_window`, `window_mean`.
- `adaptive_weights`: the per-epoch rule (gap T, loss change or raw loss, optional per-item signal).
`weight_stats` summarises a weight vector on the host for per-epoch logging (docs/fidelity.md#weights-and-validation-size).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

WINDOW_LEN = 8  # L of docs/fidelity.md#adaptive-weights (hard-coded in the authors' MOE.py)
CLAMP = 1e-8  # lower clamp of the authors' closed form (docs/fidelity.md#adaptive-weights, #departures item 9)
MODES = ("paper", "exact")
SIGNALS = ("loss_change", "raw_loss")


def _check_alpha(alpha: Any) -> None:
    if isinstance(alpha, (int, float, np.integer, np.floating)) and not alpha > 0:
        raise ValueError(f"tall_jax.weights: alpha must be > 0 (the weight regulariser of Eq. 1), got {alpha}")


def _mask_or_all(mask_N: jax.Array | None, n: int) -> jax.Array:
    if mask_N is None:
        return jnp.ones((n,), bool)
    mask_N = jnp.asarray(mask_N, bool)
    if mask_N.shape != (n,):
        raise ValueError(f"tall_jax.weights: mask_N has shape {mask_N.shape}, expected ({n},)")
    return mask_N


def kkt_weights(scores_N: jax.Array, alpha: float | jax.Array, *, mode: str = "paper",
                mask_N: jax.Array | None = None) -> jax.Array:
    """Adaptive weights w_N solving  max_w Σ_u w_u s_u − α‖w‖²  s.t.  Σ_u w_u = N, w ≥ 0  (paper Eq. 1).

    Derivation. The Lagrangian is  Σ w_u s_u − α Σ w_u² − λ(Σ w_u − N) + Σ μ_u w_u  with μ ≥ 0.
    Stationarity gives s_u − 2α w_u − λ + μ_u = 0, and complementary slackness (μ_u w_u = 0) gives
    w_u = max((s_u − λ)/(2α), 0), with λ fixed by Σ w = N (Eq. 2/3). If no user is clamped, summing
    (s_u − λ)/(2α) = N over users gives λ = mean(s) − 2α, i.e. w_u = (s_u − mean(s) + 2α)/(2α) = 1 +
    (s_u − mean(s))/(2α): this is the λ the paper prints. That λ is only correct when no clamp binds.
    Completing the square, −α‖w‖² + w·s = −α‖w − s/(2α)‖² + const, so the true optimum is the Euclidean
    projection of s/(2α) onto the scaled simplex {w ≥ 0, Σ w = N}.

    Modes:
    - "paper": w_u = max((s_u − mean(s) + 2α)/(2α), 1e-8), exactly as the authors' code (docs/fidelity.md#adaptive-weights): the
      clamp is at 1e-8, and Σ w is NOT renormalised to N when it binds (then Σ w > N).
    - "exact": the projection (sort-based, O(N log N), Duchi et al. 2008): sort v = s/(2α) descending,
      ρ = the largest j with v_(j) − (Σ_{i≤j} v_(i) − N)/j > 0, θ = (Σ_{i≤ρ} v_(i) − N)/ρ, w = max(v − θ, 0).
      It equals "paper" (up to the 1e-8 floor) whenever "paper" clamps nobody.

    `mask_N` (bool, optional) marks the real users (for padded batches): the others get weight 0 and do
    not count in N, in mean(s) or in the projection. Returns f32[N].
    """
    if mode not in MODES:
        raise ValueError(f"tall_jax.weights.kkt_weights: mode must be one of {MODES}, got {mode!r}")
    _check_alpha(alpha)
    s_N = jnp.asarray(scores_N, jnp.float32)
    if s_N.ndim != 1:
        raise ValueError(f"tall_jax.weights.kkt_weights: scores_N must be 1-D, got shape {s_N.shape}")
    n_users = s_N.shape[0]
    mask_N = _mask_or_all(mask_N, n_users)
    s_N = jnp.where(mask_N, s_N, 0.0)  # keeps NaN/inf of padding rows out of every reduction
    n_real = jnp.sum(mask_N).astype(jnp.float32)
    two_alpha = 2.0 * jnp.asarray(alpha, jnp.float32)

    if mode == "paper":
        mean_s = jnp.sum(s_N) / jnp.maximum(n_real, 1.0)
        w_N = jnp.maximum((s_N - mean_s + two_alpha) / two_alpha, CLAMP)
        return jnp.where(mask_N, w_N, 0.0)

    v_N = s_N / two_alpha
    # Padding users sort last and are excluded from ρ by the j ≤ n_real test.
    u_N = -jnp.sort(-jnp.where(mask_N, v_N, -jnp.inf))
    j_N = jnp.arange(1, n_users + 1, dtype=jnp.float32)
    u_N = jnp.where(j_N <= n_real, u_N, 0.0)
    css_N = jnp.cumsum(u_N) - n_real
    ok_N = (u_N - css_N / j_N > 0) & (j_N <= n_real)
    rho = jnp.maximum(jnp.max(jnp.where(ok_N, j_N, 0.0)), 1.0)  # j = 1 always qualifies when n_real ≥ 1
    theta = jnp.take(css_N, rho.astype(jnp.int32) - 1) / rho
    return jnp.where(mask_N, jnp.maximum(v_N - theta, 0.0), 0.0)


def cap_weights(w_N: jax.Array, cap: float, mask_N: jax.Array | None = None) -> jax.Array:
    """w'_u = min(w_u, cap) · N / Σ_v min(w_v, cap) over the real users (an option, not the paper's):
    late in training the paper's weights reach 100-200 for a few users, so a handful of users can own a
    batch's loss; the cap bounds them and the rescale keeps Σ w' = N (mean 1). Users outside
    ``mask_N`` keep weight 0."""
    mask_N = _mask_or_all(mask_N, jnp.shape(w_N)[0])
    capped_N = jnp.where(mask_N, jnp.minimum(w_N, cap), 0.0)
    n_real = jnp.sum(mask_N).astype(jnp.float32)
    return capped_N * n_real / jnp.maximum(jnp.sum(capped_N), 1e-30)


def init_window(n_users: int, length: int = WINDOW_LEN) -> tuple[jax.Array, jax.Array]:
    """An empty loss-change window: (zeros f32[N, L], count = 0) (docs/fidelity.md#adaptive-weights)."""
    if length < 1:
        raise ValueError(f"tall_jax.weights.init_window: window length must be >= 1, got {length}")
    return jnp.zeros((n_users, length), jnp.float32), jnp.zeros((), jnp.int32)


def push_window(window_NxL: jax.Array, count: int | jax.Array,
                delta_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Append the column Δ_N = ℓ^{t−1} − ℓ^t to the window (docs/fidelity.md#adaptive-weights).

    Columns 0..count−1 hold the filled columns, oldest first. While count < L the new column goes to
    position `count`; once full, the oldest column (0) is dropped, the rest shift left and the new one
    goes last. Returns (window_NxL, count') with count' = min(count + 1, L). Jittable (count may be traced).
    """
    window_NxL = jnp.asarray(window_NxL, jnp.float32)
    delta_N = jnp.asarray(delta_N, jnp.float32)
    n_users, length = window_NxL.shape
    if delta_N.shape != (n_users,):
        raise ValueError(f"tall_jax.weights.push_window: delta_N has shape {delta_N.shape}, "
                         f"expected ({n_users},) to match window {window_NxL.shape}")
    count = jnp.asarray(count, jnp.int32)
    full = count >= length
    shifted_NxL = jnp.where(full, jnp.roll(window_NxL, -1, axis=1), window_NxL)
    col = jnp.where(full, length - 1, count)
    is_col_L = jnp.arange(length) == col
    new_NxL = jnp.where(is_col_L[None, :], delta_N[:, None], shifted_NxL)
    return new_NxL, jnp.minimum(count + 1, length)


def window_mean(window_NxL: jax.Array, count: int | jax.Array) -> jax.Array:
    """Δ̄_N: the mean of each user's filled window columns (the ≤ L most recent loss changes, docs/fidelity.md#adaptive-weights,
    docs/fidelity.md#decisions). Zeros when the window is empty. Returns f32[N]."""
    window_NxL = jnp.asarray(window_NxL, jnp.float32)
    count = jnp.asarray(count, jnp.int32)
    filled_L = jnp.arange(window_NxL.shape[1]) < count
    total_N = jnp.sum(jnp.where(filled_L[None, :], window_NxL, 0.0), axis=1)
    return total_N / jnp.maximum(count, 1).astype(jnp.float32)


def adaptive_weights(epoch: int | jax.Array, gap: int | jax.Array, alpha: float | jax.Array, *,
                     signal: str = "loss_change", window_NxL: jax.Array | None = None,
                     count: int | jax.Array | None = None, last_loss_N: jax.Array | None = None,
                     mode: str = "paper", per_item: bool = False, n_valid_N: jax.Array | None = None,
                     mask_N: jax.Array | None = None, cap: float = 0.0) -> jax.Array:
    """The weights w_N held fixed during epoch `epoch` (1-based) (paper Eq. 3, docs/fidelity.md#adaptive-weights).

    - While epoch ≤ gap (T): w = 1 (the gap mechanism).
    - signal "loss_change" (TALL): the signal is Δ̄_u = `window_mean(window_NxL, count)`; while the window
      is empty, w = 1 (docs/fidelity.md#decisions: this makes T < 2 usable; the authors' code crashes there).
    - signal "raw_loss" (ablation LMoE+gap+L): the signal is the latest recorded loss ℓ_u^{t−1} =
      `last_loss_N`; w = 1 at epoch 1 (no loss recorded yet).
    - per_item (docs/fidelity.md#weights-and-validation-size option): the signal is divided by |V_u| = `n_valid_N`; users with |V_u| = 0 get
      signal 0.
    Then w = `kkt_weights(signal, alpha, mode=mode, mask_N=mask_N)`, capped by :func:`cap_weights` when
    `cap` > 0 (static). Users outside `mask_N` get 0 in all
    cases. Jittable with traced epoch/gap/alpha/count; `signal`, `mode`, `per_item` are static.
    """
    if signal not in SIGNALS:
        raise ValueError(f"tall_jax.weights.adaptive_weights: signal must be one of {SIGNALS}, got {signal!r}")
    if signal == "loss_change":
        if window_NxL is None or count is None:
            raise ValueError("tall_jax.weights.adaptive_weights: signal 'loss_change' needs window_NxL and count")
        s_N = window_mean(window_NxL, count)
        has_signal = jnp.asarray(count) > 0
    else:
        if last_loss_N is None:
            raise ValueError("tall_jax.weights.adaptive_weights: signal 'raw_loss' needs last_loss_N")
        s_N = jnp.asarray(last_loss_N, jnp.float32)
        has_signal = jnp.asarray(epoch) >= 2
    if per_item:
        if n_valid_N is None:
            raise ValueError("tall_jax.weights.adaptive_weights: per_item=True needs n_valid_N (|V_u|)")
        n_valid_N = jnp.asarray(n_valid_N, jnp.float32)
        if n_valid_N.shape != s_N.shape:
            raise ValueError(f"tall_jax.weights.adaptive_weights: n_valid_N has shape {n_valid_N.shape}, "
                             f"expected {s_N.shape}")
        s_N = jnp.where(n_valid_N > 0, s_N / jnp.maximum(n_valid_N, 1.0), 0.0)
    mask_N = _mask_or_all(mask_N, s_N.shape[0])
    w_N = kkt_weights(s_N, alpha, mode=mode, mask_N=mask_N)
    if cap > 0:
        w_N = cap_weights(w_N, cap, mask_N)
    active = (jnp.asarray(epoch) > jnp.asarray(gap)) & has_signal
    return jnp.where(active, w_N, jnp.where(mask_N, 1.0, 0.0))


def _average_ranks(x_N: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as scipy.stats.rankdata 'average')."""
    _, inverse, counts = np.unique(x_N, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(a_N: np.ndarray, b_N: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN if either input is constant."""
    a_N, b_N = np.asarray(a_N, np.float64).ravel(), np.asarray(b_N, np.float64).ravel()
    if a_N.shape != b_N.shape:
        raise ValueError(f"tall_jax.weights.spearman: shapes differ: {a_N.shape} vs {b_N.shape}")
    ra, rb = _average_ranks(a_N), _average_ranks(b_N)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denom) if denom > 0 else float("nan")


def weight_stats(w_N: Any, n_valid_N: Any, ms_N: Any) -> dict[str, float]:
    """Per-epoch spread of the adaptive weights (docs/fidelity.md#weights-and-validation-size): min, max, mean, std, share of users clamped
    (w ≤ 1e-8), and the Spearman rank correlation of w with |V_u| and with the mainstream score MS_u."""
    w_N = np.asarray(w_N, np.float64)
    return {
        "w_min": float(w_N.min()),
        "w_max": float(w_N.max()),
        "w_mean": float(w_N.mean()),
        "w_std": float(w_N.std()),
        "share_clamped": float(np.mean(w_N <= CLAMP)),
        "spearman_n_valid": spearman(w_N, n_valid_N),
        "spearman_ms": spearman(w_N, ms_N),
    }
