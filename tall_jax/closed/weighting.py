"""User weights for the weighted EASE, G = Xᵀ diag(w) X + λI (docs/closed_forms.md#weighted-ease).

Three sources, each normalised to mean 1 over the users (so λ keeps its meaning):

- ``wl``: WL's fixed weights ((MS_max − MS_u)/(MS_max − MS_min))^γ / mean
  (:func:`tall_jax.state.wl_weights`, the function our ``wl`` model trains with). The most
  mainstream user gets weight 0 and is kept at 0, as in ``wl``: λI keeps G + λI positive definite,
  and her row still gets scores.
- ``ms``: w_u ∝ (max(MS_u, ε·mean MS) / mean MS)^(−p), ε = 1e-3 (a user who shares no item with
  anyone has MS_u = 0).
- ``kkt``: TALL's Eq. 3 closed form (:func:`tall_jax.weights.kkt_weights`) applied to a per-user
  loss signal of the previous solution, re-solved for R rounds (:func:`kkt_rounds`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp

from tall_jax.closed.ease import binary
from tall_jax.state import wl_weights
from tall_jax.weights import kkt_weights

MS_FLOOR = 1e-3  # ms weights: MS_u is floored at this share of the mean MS


def mean_one(w_N: np.ndarray) -> np.ndarray:
    """w / mean(w) as float64 (all ones if the mean is 0)."""
    w_N = np.asarray(w_N, np.float64)
    mean = w_N.mean() if w_N.size else 0.0
    return w_N / mean if mean > 0 else np.ones_like(w_N)


def wl_user_weights(ms_N: np.ndarray, gamma: float) -> np.ndarray:
    """WL's weights ((MS_max − MS_u)/(MS_max − MS_min))^γ with mean 1 (docs/fidelity.md#wl)."""
    return mean_one(wl_weights(ms_N, gamma))


def ms_user_weights(ms_N: np.ndarray, p: float) -> np.ndarray:
    """w_u = (max(MS_u, ε m) / m)^(−p) with m = mean MS and ε = 1e-3, normalised to mean 1."""
    ms_N = np.asarray(ms_N, np.float64)
    m = ms_N.mean() if ms_N.size and ms_N.mean() > 0 else 1.0
    return mean_one((np.maximum(ms_N, MS_FLOOR * m) / m) ** -p)


def user_losses(train: sp.spmatrix, b_MxM: np.ndarray, block: int = 2048) -> np.ndarray:
    """ℓ_u = ||x_u − x_u B||² / max(|T_u|, 1): each user's squared reconstruction error of her train
    row per train item, float64 [N]. Since diag(B) = 0, each train item is predicted from the user's
    OTHER train items, so this is a leave-one-item-out error (docs/closed_forms.md#ease_kkt).

    Computed as ||s_u||² − 2 s_u·x_u + |T_u| with s_u = x_u B, over blocks of users."""
    x = binary(train, b_MxM.dtype)
    n = x.shape[0]
    size_N = np.diff(x.indptr).astype(np.float64)
    loss_N = np.empty(n, np.float64)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        s = np.asarray(x[lo:hi] @ b_MxM, np.float64)
        own = np.asarray(x[lo:hi].multiply(s).sum(axis=1)).ravel()
        loss_N[lo:hi] = np.einsum("ij,ij->i", s, s) - 2.0 * own + size_N[lo:hi]
    return loss_N / np.maximum(size_N, 1.0)


def kkt_user_weights(signal_N: np.ndarray, alpha: float, mode: str = "paper") -> np.ndarray:
    """TALL's Eq. 3 weights of ``signal_N`` with α in units of the signal's spread:
    w = kkt_weights(s, α · std(s)), renormalised to mean 1 (TALL's batch loss divides by Σ w, so
    only ratios matter there; mean 1 keeps λ's meaning here). All ones when s is constant.

    Paper mode: w_u = max((s_u − mean s + 2α')/(2α'), 1e-8) = max(1 + z_u / (2α), 1e-8), z the
    standardised signal."""
    s_N = np.asarray(signal_N, np.float64)
    spread = s_N.std()
    if not spread > 0:
        return np.ones_like(s_N)
    # standardised before float32: the signal's scale (losses ~1, changes ~1e-3) never meets rounding
    z_N = (s_N - s_N.mean()) / spread
    return mean_one(np.asarray(kkt_weights(z_N.astype(np.float32), float(alpha), mode=mode)))


def kkt_rounds(train: sp.spmatrix, solve: Callable[[np.ndarray | None, float], np.ndarray], lam: float,
               alpha: float, *, signal: str = "loss_change", mode: str = "paper",
               start_signal_N: np.ndarray | None = None
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Rounds r = 1, 2, ... of the KKT re-weighted EASE: yields (r, signal s^r, weights w^r, B^r).

    ``solve(w_N, lam) -> B`` is the (weighted) EASE. Round 0 is EASE (w⁰ = 1). Round r takes the
    signal of the previous solution B^{r−1} = B_λ(w^{r−1}):
    - ``raw_loss``: s_u = ℓ_u(B_λ(w^{r−1})) (:func:`user_losses`);
    - ``loss_change``: s_u = ℓ_u(B_{2λ}(w^{r−1})) − ℓ_u(B_λ(w^{r−1})): how much the user's loss
      falls when the penalty halves under the same weights. Ridge regression's λ-path tracks gradient
      descent's path (λ ≈ 1/(step size x steps)), so halving λ stands for training on, and this is
      TALL's loss change per epoch (docs/closed_forms.md#ease_kkt);
    then w^r = :func:`kkt_user_weights` (s^r, α) and B^r = B_λ(w^r). ``start_signal_N``: round 1's
    signal when already known (it depends on λ only, so a grid shares it over α)."""
    if signal not in ("loss_change", "raw_loss"):
        raise ValueError(f"kkt signal must be 'loss_change' or 'raw_loss', got {signal!r}")

    def next_signal(w_N: np.ndarray | None, holder: list[np.ndarray]) -> np.ndarray:
        loss_N = user_losses(train, holder.pop())  # B_λ is released here, before B_2λ is solved
        if signal == "raw_loss":
            return loss_N
        return user_losses(train, solve(w_N, 2.0 * lam)) - loss_N

    s_N = start_signal_N if start_signal_N is not None else next_signal(None, [solve(None, lam)])
    r = 0
    while True:
        r += 1
        w_N = kkt_user_weights(s_N, alpha, mode)
        holder = [solve(w_N, lam)]
        yield r, s_N, w_N, holder[0]
        s_N = next_signal(w_N, holder)
