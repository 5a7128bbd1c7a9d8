"""A PyTorch per-expert reference of ONE TALL training step, written from the spec (§4, §5.1-5.3) the way
the authors' code organises it: a Python loop over E MultVAE experts, then the loss-driven gate, the logit
mixture, the weighted CE and the gate-weighted KL, and one Adam step over all experts.

It is a benchmark baseline and a cross-check for the JAX step (set identical parameters with
`load_params`, turn the noise off with `noise=False`, compare losses). PyTorch is an optional dependency
(the `bench` extra); nothing in `tall_jax/` imports this module.
"""
from __future__ import annotations

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError("benchmarks/torch_reference.py needs PyTorch: pip install 'tall_jax[bench]' "
                      "(or pip install torch)") from err


class _MultVAE(nn.Module):
    """One TALL expert (docs/fidelity.md#multvae): Linear(M → 2d) encoder, Linear(d → M) decoder, no tanh."""

    def __init__(self, n_items: int, latent: int, gen: torch.Generator):
        super().__init__()
        self.latent = latent
        self.enc = nn.Linear(n_items, 2 * latent)
        self.dec = nn.Linear(latent, n_items)
        with torch.no_grad():  # PyTorch's default Linear init, U(±1/√fan_in) for W and b, from `gen`
            for lin in (self.enc, self.dec):
                bound = 1.0 / np.sqrt(lin.in_features)
                lin.weight.uniform_(-bound, bound, generator=gen)
                lin.bias.uniform_(-bound, bound, generator=gen)

    def forward(self, x_BxM: torch.Tensor, gen: torch.Generator | None, noise: bool):
        """Returns (logits_BxM, batch-mean KL). Noise ε ~ N(0, 0.01²) only when `noise`."""
        xn = x_BxM / x_BxM.norm(dim=1, keepdim=True).clamp_min(1e-12)
        h = self.enc(xn)
        mu, logvar = h[:, :self.latent], h[:, self.latent:]
        z = mu
        if noise:
            eps = 0.01 * torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        kl = 0.5 * torch.sum(-logvar + torch.exp(logvar) + mu ** 2 - 1.0, dim=1).mean()
        return self.dec(z), kl


class TorchTALL:
    """E MultVAE experts trained jointly by TALL's loss (docs/fidelity.md#tall), one optimiser over all of them.

    `step` runs one training step on a dense batch and returns the loss before the update. After a step,
    `last_user_loss` holds the recorded mixture validation loss ℓ_u (docs/fidelity.md#loss) and `last_gate` the gate.
    """

    def __init__(self, n_items: int, n_experts: int, latent: int = 100, reg: float = 1e-3, seed: int = 0,
                 *, lr: float = 1e-3, noise: bool = True, device: str | torch.device = "cpu"):
        if n_items < 1 or n_experts < 1 or latent < 1:
            raise ValueError(f"TorchTALL: n_items, n_experts, latent must be >= 1, got "
                             f"{n_items}, {n_experts}, {latent}")
        self.n_items, self.n_experts, self.latent = n_items, n_experts, latent
        self.reg, self.lr, self.noise = reg, lr, noise
        self.device = torch.device(device)
        self._gen = torch.Generator(device="cpu").manual_seed(seed)
        self.experts = nn.ModuleList(_MultVAE(n_items, latent, self._gen) for _ in range(n_experts))
        self.experts.to(self.device)
        self._noise_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self._make_optimizer()
        self.last_user_loss: torch.Tensor | None = None
        self.last_gate: torch.Tensor | None = None

    def _make_optimizer(self) -> None:
        # torch Adam's weight_decay is coupled L2 on every parameter, biases included (docs/fidelity.md#multvae, #experts).
        self.opt = torch.optim.Adam(self.experts.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8,
                                    weight_decay=self.reg / self.n_experts)

    def load_params(self, enc_w_ExMx2d, enc_b_Ex2d, dec_w_ExdxM, dec_b_ExM) -> None:
        """Set every expert's parameters from stacked numpy arrays (the JAX layout of tall_jax.vae) and reset
        the Adam state."""
        E, M, d = self.n_experts, self.n_items, self.latent
        want = {"enc_w_ExMx2d": (E, M, 2 * d), "enc_b_Ex2d": (E, 2 * d), "dec_w_ExdxM": (E, d, M),
                "dec_b_ExM": (E, M)}
        got = dict(zip(want, (enc_w_ExMx2d, enc_b_Ex2d, dec_w_ExdxM, dec_b_ExM)))
        for name, shape in want.items():
            if np.shape(got[name]) != shape:
                raise ValueError(f"TorchTALL.load_params: {name} has shape {np.shape(got[name])}, expected {shape}")
        as_t = lambda a: torch.as_tensor(np.array(a, np.float32), device=self.device)  # noqa: E731
        with torch.no_grad():
            for k, ex in enumerate(self.experts):
                ex.enc.weight.copy_(as_t(got["enc_w_ExMx2d"][k]).T)  # torch stores W as [out, in]
                ex.enc.bias.copy_(as_t(got["enc_b_Ex2d"][k]))
                ex.dec.weight.copy_(as_t(got["dec_w_ExdxM"][k]).T)
                ex.dec.bias.copy_(as_t(got["dec_b_ExM"][k]))
        self._make_optimizer()

    def params_numpy(self) -> dict[str, np.ndarray]:
        """The parameters as stacked numpy arrays in the layout `load_params` takes."""
        stack = lambda ts: np.stack([t.detach().cpu().numpy() for t in ts])  # noqa: E731
        return {"enc_w_ExMx2d": stack(ex.enc.weight.T for ex in self.experts),
                "enc_b_Ex2d": stack(ex.enc.bias for ex in self.experts),
                "dec_w_ExdxM": stack(ex.dec.weight.T for ex in self.experts),
                "dec_b_ExM": stack(ex.dec.bias for ex in self.experts)}

    def loss(self, x_BxM: torch.Tensor, v_BxM: torch.Tensor, w_B: torch.Tensor, beta: float) -> torch.Tensor:
        """TALL's training loss on one batch (docs/fidelity.md#gate, #loss), differentiable w.r.t. every expert."""
        logits, kls = [], []
        for ex in self.experts:  # the authors' per-expert loop
            o, kl = ex(x_BxM, self._noise_gen, self.noise)
            logits.append(o)
            kls.append(kl)
        logits_ExBxM, kl_E = torch.stack(logits), torch.stack(kls)
        keep_BxM = 1.0 - x_BxM
        n_valid_B = v_BxM.sum(dim=1)
        # Mask trick (§5.2.1): train-item logits become 0 inside the softmax denominator.
        lse_ExB = torch.logsumexp(logits_ExBxM * keep_BxM, dim=2)
        val_loss_ExB = n_valid_B * lse_ExB - (logits_ExBxM * v_BxM).sum(dim=2)
        # Gate = softmax_k(1/L_uk), no stop-gradient; uniform for users without validation items (§9).
        has_valid_B = n_valid_B > 0
        inv_ExB = torch.where(has_valid_B, 1.0 / torch.where(has_valid_B, val_loss_ExB, 1.0), 0.0)
        gate_BxE = torch.softmax(inv_ExB.T, dim=1)
        mix_BxM = torch.einsum("be,ebm->bm", gate_BxE, logits_ExBxM)
        ce_B = -(x_BxM * torch.log_softmax(mix_BxM, dim=1)).sum(dim=1)
        ce = (w_B * ce_B).sum() / w_B.sum()
        kl_mix = (gate_BxE @ kl_E).sum()  # Σ_users Σ_k g_uk KL̄_k (§5.2.4)
        with torch.no_grad():
            self.last_user_loss = n_valid_B * torch.logsumexp(mix_BxM * keep_BxM, dim=1) - (mix_BxM * v_BxM).sum(1)
            self.last_gate = gate_BxE.detach()
        return ce + beta * kl_mix

    def step(self, x_BxM: torch.Tensor, v_BxM: torch.Tensor, w_B: torch.Tensor, beta: float) -> float:
        """One Adam step on TALL's loss for a dense binary train batch `x_BxM`, a dense validation
        indicator `v_BxM` and user weights `w_B`. Returns the loss before the update."""
        B, M = x_BxM.shape
        if M != self.n_items or v_BxM.shape != (B, M) or w_B.shape != (B,):
            raise ValueError(f"TorchTALL.step: expected x and v of shape (B, {self.n_items}) and w of shape "
                             f"(B,), got {tuple(x_BxM.shape)}, {tuple(v_BxM.shape)}, {tuple(w_B.shape)}")
        to = lambda t: t.to(self.device, torch.float32)  # noqa: E731
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(to(x_BxM), to(v_BxM), to(w_B), float(beta))
        loss.backward()
        self.opt.step()
        return float(loss.detach())
