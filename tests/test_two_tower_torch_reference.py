"""benchmarks/torch_two_tower.py is the same model as tall_jax's two-tower (skipped without torch): with the
JAX initial weights copied across, one train step on the same batch gives the same loss, the same
gradients and the same parameters after Adam, for the baseline and the multi-task model.

The Dense biases in front of a BatchNorm are the exception after Adam: BatchNorm removes the batch mean, so
their true gradient is 0 and both sides compute float32 round-off (~1e-8), which Adam's first step, lr g /
(|g| + 1e-8), turns into a move of up to lr in an arbitrary direction. Their gradients are checked to be ~0
on both sides and their move to be at most lr."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tall_jax.two_tower import steps  # noqa: E402
from tall_jax.two_tower.model import TwoTower  # noqa: E402

U, I, D, B, G = 6, 10, 8, 32, 3
LR = 1e-3


@pytest.fixture(scope="module")
def ref():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_two_tower.py"
    spec = importlib.util.spec_from_file_location("torch_two_tower", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return steps.make_batch(rng.normal(size=(B, U)).astype(np.float32), rng.normal(size=(B, I)).astype(np.float32),
                            (rng.random(B) < 0.3).astype(np.float32), rng.integers(0, G, B).astype(np.int32), B)


def torch_batch(b):
    return [torch.from_numpy(np.asarray(a)) for a in (b.user_x, b.item_x, b.label, b.group, b.valid)]


def flat(tree) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def before_batchnorm(name: str) -> bool:
    return "dense_" in name and name.endswith("['bias']")


@pytest.mark.parametrize("n_groups", [0, G])
def test_one_step_matches_jax(ref, n_groups):
    model = TwoTower(n_groups=n_groups, width=D)
    config = steps.TwoTowerConfig(model, learning_rate=LR)
    state = steps.init(jax.random.PRNGKey(1), config, U, I)
    # a trained-looking start: random BatchNorm scales / biases and head biases, not the init's 1 / 0
    rng = np.random.default_rng(2)
    noise = lambda p: jnp.asarray(p + rng.normal(size=p.shape).astype(np.float32) * 0.1)  # noqa: E731
    state = state.replace(params=jax.tree.map(noise, state.params))
    b = batch()
    tmodel = ref.load_from_flax(ref.TorchTwoTower(U, I, n_groups, D), state.params, state.batch_stats)
    p0, s0 = ref.params_as_flax(tmodel)
    for k, v in flat(state.params).items():  # the converter round-trips exactly
        np.testing.assert_array_equal(flat(p0)[k], v, err_msg=k)
    for k, v in flat(state.batch_stats).items():
        np.testing.assert_array_equal(flat(s0)[k], v, err_msg=k)

    (loss_j, _), grads_j = jax.value_and_grad(steps.two_tower_loss, has_aux=True)(
        state.params, state.batch_stats, b, model=model)
    trainer = ref.TorchTwoTowerTrainer(tmodel, lr=LR)
    old = {k: np.array(v) for k, v in flat(state.params).items()}
    s_old = {k: np.array(v) for k, v in flat(state.batch_stats).items()}  # the step donates the state
    new_state, metrics = steps.two_tower_train_step(state, b, config)
    loss_t = trainer.step(*torch_batch(b))
    np.testing.assert_allclose(float(loss_t), float(metrics["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(loss_t), float(loss_j), rtol=1e-6)

    grads_t = flat(ref.params_as_flax(tmodel, grad=True)[0])
    gj = flat(grads_j)
    assert set(gj) == set(grads_t)
    for k, g in gj.items():
        if before_batchnorm(k):  # true gradient 0: round-off on both sides
            assert np.abs(g).max() < 1e-5 and np.abs(grads_t[k]).max() < 1e-5, k
        else:
            np.testing.assert_allclose(grads_t[k], g, rtol=1e-4, atol=1e-6, err_msg=k)

    p1, s1 = ref.params_as_flax(tmodel)
    pj, pt = flat(new_state.params), flat(p1)
    for k, v in pj.items():
        if before_batchnorm(k):
            assert np.abs(pt[k] - old[k]).max() <= LR * (1 + 1e-5) and np.abs(v - old[k]).max() <= LR * (1 + 1e-5), k
        else:
            np.testing.assert_allclose(pt[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
            assert np.abs(v - old[k]).max() > 0.5 * LR, k  # the step moved it
    # running statistics: the same mean; torch moves the variance with the unbiased batch variance
    sj, st = flat(new_state.batch_stats), flat(s1)
    for k, v in sj.items():
        if k.endswith("['mean']"):
            np.testing.assert_allclose(st[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            batch_var_j = (v - 0.99 * s_old[k]) / 0.01
            batch_var_t = (st[k] - 0.99 * s_old[k]) / 0.01
            np.testing.assert_allclose(batch_var_t, batch_var_j * B / (B - 1), rtol=1e-3, err_msg=k)


def test_masked_bce_matches_jax(ref):
    """Padded rows and other groups' heads: the same loss and zero gradient where masked."""
    from tall_jax.two_tower.model import masked_bce_loss
    rng = np.random.default_rng(3)
    s = rng.normal(size=(B, G)).astype(np.float32)
    y = (rng.random(B) < 0.5).astype(np.float32)
    g = rng.integers(0, G, B).astype(np.int32)
    valid = np.arange(B) < B - 5
    lj, dj = jax.value_and_grad(masked_bce_loss)(jnp.asarray(s), y, jax.nn.one_hot(g, G), valid)
    st = torch.tensor(s, requires_grad=True)
    lt = ref.masked_bce(st, torch.tensor(y), torch.tensor(g), torch.tensor(valid))
    lt.backward()
    np.testing.assert_allclose(float(lt.detach()), float(lj), rtol=1e-6)
    np.testing.assert_allclose(st.grad.numpy(), np.asarray(dj), rtol=1e-5, atol=1e-8)
    assert np.all(st.grad.numpy()[~(np.eye(G, dtype=bool)[g] & valid[:, None])] == 0)


def test_converter_rejects_other_shapes(ref):
    config = steps.TwoTowerConfig(TwoTower(n_groups=G, width=D))
    state = steps.init(jax.random.PRNGKey(0), config, U, I)
    with pytest.raises(ValueError, match="shape"):
        ref.load_from_flax(ref.TorchTwoTower(U, I, G, 2 * D), state.params)
    with pytest.raises(ValueError, match="expected"):
        ref.load_from_flax(ref.TorchTwoTower(U, I, 0, D), state.params)
