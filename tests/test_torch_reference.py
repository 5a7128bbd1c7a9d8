"""Self-check of benchmarks/torch_reference.py (skipped without torch): its loss equals an independent
float64 NumPy computation of spec §4/§5.2-5.3 with the noise off, and one step moves the parameters."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

E, M, B, D = 3, 20, 4, 5


@pytest.fixture(scope="module")
def ref_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_reference.py"
    spec = importlib.util.spec_from_file_location("torch_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lse(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.exp(a - m).sum(axis=axis))


def numpy_loss(p, x, v, w, beta):
    """Loop over experts and users, float64, written directly from the spec's formulas."""
    gate = np.zeros((B, E))
    logits = np.zeros((E, B, M))
    kl_bar = np.zeros(E)
    for k in range(E):
        for u in range(B):
            xn = x[u] / max(np.linalg.norm(x[u]), 1e-12)
            h = xn @ p["enc_w_ExMx2d"][k] + p["enc_b_Ex2d"][k]
            mu, logvar = h[:D], h[D:]
            logits[k, u] = mu @ p["dec_w_ExdxM"][k] + p["dec_b_ExM"][k]  # noise off: z = μ
            kl_bar[k] += 0.5 * np.sum(-logvar + np.exp(logvar) + mu ** 2 - 1) / B
    for u in range(B):
        val = np.array([sum(np.log(sum(np.exp(logits[k, u, j]) for j in range(M) if x[u, j] == 0)
                                   + x[u].sum()) - logits[k, u, i] for i in np.flatnonzero(v[u]))
                        for k in range(E)])
        gate[u] = np.exp(1 / val) / np.exp(1 / val).sum()
    ce = 0.0
    for u in range(B):
        o = gate[u] @ logits[:, u]
        ce += w[u] * -(x[u] * (o - _lse(o, 0))).sum()
    return ce / w.sum() + beta * (gate @ kl_bar).sum()


@pytest.fixture()
def batch():
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(B, M)) < 0.3).astype(np.float32)
    x[:, 0], x[:, M - 1] = 1.0, 0.0  # every user has a train item and ...
    v = ((rng.uniform(size=(B, M)) < 0.25) & (x == 0)).astype(np.float32)
    v[:, M - 1] = 1.0  # ... a validation item
    assert np.all(v.sum(1) > 0) and not np.any(v * x)
    w = rng.uniform(0.2, 3.0, size=B).astype(np.float32)
    return x, v, w


def random_params(seed):
    rng = np.random.default_rng(seed)
    return {"enc_w_ExMx2d": rng.normal(size=(E, M, 2 * D)) * 0.3, "enc_b_Ex2d": rng.normal(size=(E, 2 * D)) * 0.1,
            "dec_w_ExdxM": rng.normal(size=(E, D, M)) * 0.5, "dec_b_ExM": rng.normal(size=(E, M)) * 0.3}


def test_loss_matches_numpy(ref_module, batch):
    x, v, w = batch
    model = ref_module.TorchTALL(M, E, latent=D, reg=1e-3, seed=0, noise=False)
    p = random_params(1)
    model.load_params(**p)
    for name, arr in model.params_numpy().items():
        np.testing.assert_allclose(arr, p[name], rtol=1e-6, atol=1e-7, err_msg=name)
    beta = 0.37
    loss = model.step(torch.tensor(x), torch.tensor(v), torch.tensor(w), beta)
    np.testing.assert_allclose(loss, numpy_loss(p, x.astype(np.float64), v, w.astype(np.float64), beta),
                               rtol=1e-5)
    assert model.last_gate.shape == (B, E) and model.last_user_loss.shape == (B,)


def test_step_moves_params_by_about_lr(ref_module, batch):
    x, v, w = batch
    model = ref_module.TorchTALL(M, E, latent=D, reg=1e-3, seed=3)
    before = model.params_numpy()
    l0 = model.step(torch.tensor(x), torch.tensor(v), torch.tensor(w), 0.1)
    after = model.params_numpy()
    step = np.concatenate([np.abs(after[k] - before[k]).ravel() for k in before])
    # First Adam step: |Δθ| = lr·|g|/(|g| + eps) ≤ lr, ≈ lr wherever the gradient is not tiny.
    assert step.max() <= 1e-3 * (1 + 1e-4)
    assert np.median(step) > 0.9e-3
    l1 = model.step(torch.tensor(x), torch.tensor(v), torch.tensor(w), 0.1)
    assert np.isfinite(l0) and np.isfinite(l1) and l0 != l1


def test_seed_reproducible_and_shape_errors(ref_module, batch):
    a = ref_module.TorchTALL(M, E, latent=D, seed=5).params_numpy()
    b = ref_module.TorchTALL(M, E, latent=D, seed=5).params_numpy()
    c = ref_module.TorchTALL(M, E, latent=D, seed=6).params_numpy()
    np.testing.assert_array_equal(a["dec_w_ExdxM"], b["dec_w_ExdxM"])
    assert not np.array_equal(a["dec_w_ExdxM"], c["dec_w_ExdxM"])
    assert np.abs(a["enc_w_ExMx2d"]).max() <= 1 / np.sqrt(M)  # U(±1/√fan_in)
    model = ref_module.TorchTALL(M, E, latent=D)
    with pytest.raises(ValueError, match="enc_w_ExMx2d"):
        model.load_params(np.zeros((E, M, D)), np.zeros((E, 2 * D)), np.zeros((E, D, M)), np.zeros((E, M)))
    x, v, w = batch
    with pytest.raises(ValueError, match="expected"):
        model.step(torch.tensor(x[:, :-1]), torch.tensor(v), torch.tensor(w), 0.0)
