"""A PyTorch two-tower of exactly the shape of ``tall_jax.two_tower.model.TwoTower`` (docs/fidelity.md#two-tower-model),
the baseline of benchmarks/two_tower_speed.py and a cross-check of the JAX train step.

Both towers are ``n_layers`` x (Linear -> BatchNorm1d (train mode) -> ReLU) of width d; the baseline scores
``scale * <u, t> + bias`` (one column), the multi-task model ``scale * <relu(u W_g + b_g), t> + bias`` for every
group g at once (a stacked ``head_kernel[G, d, d]``), and the loss is the masked per-group BCE of
``tall_jax.two_tower.model.masked_bce_loss``: every head is computed, entries of other groups' heads and of
padded rows are removed with ``torch.where`` (zero gradient), the sum is divided by the number of real rows.
Adam, lr 1e-3, float32.

``load_from_flax`` copies a JAX state's parameters and BatchNorm statistics in (Linear weights transposed),
``params_as_flax`` returns the parameters in the flax layout, so one step of each can be compared.

Two differences that do not change a training step (tests/test_two_tower_torch_reference.py):
PyTorch's BatchNorm1d normalises with the biased batch variance, as flax does, but moves its running
variance with the unbiased one (n / (n - 1) times flax's update); and it has no mask, so every row of a batch
must be real (the benchmark's batches are full). PyTorch is an optional dependency (the ``bench`` extra);
nothing in ``tall_jax/`` imports this module.
"""
from __future__ import annotations

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError("benchmarks/torch_two_tower.py needs PyTorch: pip install 'tall_jax[bench]'") from err


class TorchTower(nn.Module):
    """``n_layers`` x (Linear -> BatchNorm1d -> ReLU), width ``width`` (flax's Dense / BatchNorm / relu)."""

    def __init__(self, in_dim: int, width: int, n_layers: int = 2, momentum: float = 0.99):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_layers):
            # flax: ra = momentum ra + (1 - momentum) batch; torch: ra = (1 - m) ra + m batch; eps 1e-5 both
            layers += [nn.Linear(in_dim if i == 0 else width, width),
                       nn.BatchNorm1d(width, eps=1e-5, momentum=1.0 - momentum), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.n_layers = n_layers

    def forward(self, x_BxF: torch.Tensor) -> torch.Tensor:
        return self.net(x_BxF)


class TorchTwoTower(nn.Module):
    """Baseline (``n_groups == 0``) or multi-task (``n_groups == G``) two-tower; returns logits ``[B, max(G, 1)]``."""

    def __init__(self, user_dim: int, item_dim: int, n_groups: int = 0, width: int = 512, n_layers: int = 2,
                 momentum: float = 0.99):
        super().__init__()
        self.n_groups, self.width = n_groups, width
        self.user_tower = TorchTower(user_dim, width, n_layers, momentum)
        self.item_tower = TorchTower(item_dim, width, n_layers, momentum)
        self.logit_scale = nn.Parameter(torch.tensor(width ** -0.5))
        self.logit_bias = nn.Parameter(torch.tensor(0.0))
        if n_groups > 0:
            self.head_kernel = nn.Parameter(torch.randn(n_groups, width, width) / np.sqrt(width))
            self.head_bias = nn.Parameter(torch.zeros(n_groups, width))

    def forward(self, user_x_BxU: torch.Tensor, item_x_BxI: torch.Tensor) -> torch.Tensor:
        u_BxD = self.user_tower(user_x_BxU)
        t_BxD = self.item_tower(item_x_BxI)
        if self.n_groups == 0:
            return self.logit_scale * torch.sum(u_BxD * t_BxD, dim=-1, keepdim=True) + self.logit_bias
        h_BxGxD = torch.relu(torch.einsum("bd,gde->bge", u_BxD, self.head_kernel) + self.head_bias)
        return self.logit_scale * torch.einsum("bge,be->bg", h_BxGxD, t_BxD) + self.logit_bias


def masked_bce(scores_BxG: torch.Tensor, label_B: torch.Tensor, group_B: torch.Tensor,
               valid_B: torch.Tensor) -> torch.Tensor:
    """``sum_b sum_g m[b,g] valid[b] BCE(y_b, sigmoid(s[b,g])) / max(sum_b valid[b], 1)``, m one-hot of the
    group (all ones for one column), masked entries removed with ``where`` (tall_jax's masked_bce_loss)."""
    n_heads = scores_BxG.shape[1]
    label_BxG = label_B.to(scores_BxG.dtype)[:, None].expand_as(scores_BxG)
    bce_BxG = F.binary_cross_entropy_with_logits(scores_BxG, label_BxG, reduction="none")
    if n_heads == 1:
        keep_BxG = torch.ones_like(bce_BxG, dtype=torch.bool)
    else:
        keep_BxG = F.one_hot(group_B.long(), n_heads).bool()
    keep_BxG = keep_BxG & valid_B.bool()[:, None]
    n_real = valid_B.to(scores_BxG.dtype).sum().clamp_min(1.0)
    return torch.where(keep_BxG, bce_BxG, torch.zeros((), dtype=bce_BxG.dtype)).sum() / n_real


class TorchTwoTowerTrainer:
    """The model, Adam(lr) over all its parameters, and ``step`` = one training step in train mode."""

    def __init__(self, model: TorchTwoTower, lr: float = 1e-3, **adam_options):
        self.model = model.train()
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, **adam_options)

    def step(self, user_x, item_x, label, group, valid) -> torch.Tensor:
        """One Adam step; returns the loss before the update (a 0-d tensor, not synchronised)."""
        self.opt.zero_grad(set_to_none=True)
        loss = masked_bce(self.model(user_x, item_x), label, group, valid)
        loss.backward()
        self.opt.step()
        return loss.detach()


# ---------------------------------------------------------------------------------------- converters
def _towers(model: TorchTwoTower):
    return (("user_tower", model.user_tower), ("item_tower", model.item_tower))


def load_from_flax(model: TorchTwoTower, params, batch_stats=None) -> TorchTwoTower:
    """Copy a flax ``TwoTower``'s ``params`` (and ``batch_stats``) into ``model`` in place (float32).

    Raises ValueError when a shape or a name does not match (a different width, depth or group count)."""
    def put(dst: torch.Tensor, src, name: str):
        a = np.asarray(src, np.float32)
        if tuple(a.shape) != tuple(dst.shape):
            raise ValueError(f"load_from_flax: {name} has shape {a.shape}, the torch model {tuple(dst.shape)}")
        dst.copy_(torch.from_numpy(a.copy()))

    expected = {"user_tower", "item_tower", "logit_scale", "logit_bias"} | (
        {"head_kernel", "head_bias"} if model.n_groups > 0 else set())
    if set(params) != expected:
        raise ValueError(f"load_from_flax: parameters {sorted(params)}, expected {sorted(expected)} "
                         f"(head_rank and other options have no torch counterpart)")
    with torch.no_grad():
        for name, tower in _towers(model):
            for i in range(tower.n_layers):
                lin, bn = tower.net[3 * i], tower.net[3 * i + 1]
                p_dense, p_bn = params[name][f"dense_{i}"], params[name][f"bn_{i}"]
                put(lin.weight, np.asarray(p_dense["kernel"]).T, f"{name}.dense_{i}.kernel")
                put(lin.bias, p_dense["bias"], f"{name}.dense_{i}.bias")
                put(bn.weight, p_bn["scale"], f"{name}.bn_{i}.scale")
                put(bn.bias, p_bn["bias"], f"{name}.bn_{i}.bias")
                if batch_stats is not None:
                    put(bn.running_mean, batch_stats[name][f"bn_{i}"]["mean"], f"{name}.bn_{i}.mean")
                    put(bn.running_var, batch_stats[name][f"bn_{i}"]["var"], f"{name}.bn_{i}.var")
        put(model.logit_scale, params["logit_scale"], "logit_scale")
        put(model.logit_bias, params["logit_bias"], "logit_bias")
        if model.n_groups > 0:
            put(model.head_kernel, params["head_kernel"], "head_kernel")
            put(model.head_bias, params["head_bias"], "head_bias")
    return model


def params_as_flax(model: TorchTwoTower, *, grad: bool = False) -> tuple[dict, dict]:
    """``(params, batch_stats)`` as NumPy arrays in the flax ``TwoTower`` layout (kernels ``[in, out]``);
    with ``grad=True`` the parameters' ``.grad`` instead of their values (after a ``step``)."""
    def t(p):
        x = p.grad if grad else p
        return x.detach().cpu().numpy().copy()

    params, stats = {}, {}
    for name, tower in _towers(model):
        params[name], stats[name] = {}, {}
        for i in range(tower.n_layers):
            lin, bn = tower.net[3 * i], tower.net[3 * i + 1]
            params[name][f"dense_{i}"] = {"kernel": t(lin.weight).T.copy(), "bias": t(lin.bias)}
            params[name][f"bn_{i}"] = {"scale": t(bn.weight), "bias": t(bn.bias)}
            stats[name][f"bn_{i}"] = {"mean": bn.running_mean.cpu().numpy().copy(),
                                      "var": bn.running_var.cpu().numpy().copy()}
    params["logit_scale"], params["logit_bias"] = t(model.logit_scale), t(model.logit_bias)
    if model.n_groups > 0:
        params["head_kernel"], params["head_bias"] = t(model.head_kernel), t(model.head_bias)
    return params, stats
