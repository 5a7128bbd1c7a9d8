"""The one state convention (tall_jax.train_state): TALL, the local baselines and the two-tower have
states with the same core fields, built by one ``init`` each, and one generic loop drives each."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

import tall_jax
from tall_jax import train_state, vae
from tall_jax.baselines import local
from tall_jax.batching import epoch_order
from tall_jax.two_tower import TwoTower, TwoTowerConfig, two_tower_train_step
from tall_jax.two_tower import init as two_tower_init
from tall_jax.two_tower import make_batch as two_tower_batch

from helpers import split_user_data

N, M = 40, 24


def loop(step, state, batches):
    """The hand-written loop of docs/api.md#one-state-convention, the same for every model."""
    history = []
    for batch in batches:
        state, metrics = step(state, batch)
        history.append(metrics)
    return state, history


def _tall():
    data = split_user_data(N, M)
    config = tall_jax.make_config("synthetic", "tall", n_experts=2, latent=4, batch_size=16)
    state = tall_jax.init(jax.random.PRNGKey(0), config, N, M)
    batches = [tall_jax.make_batch(data, users_B) for users_B in epoch_order(jax.random.PRNGKey(1), N, 16)]
    return state, functools.partial(tall_jax.train_step, config=config), batches


def _local():
    data = split_user_data(N, M)
    config = local.LocalTrainConfig(batch_size=8, lr=0.01)
    params_K = vae.init_experts(jax.random.PRNGKey(0), 3, M, 4)
    state = local.init(jax.random.split(jax.random.PRNGKey(1), 3), config, params_K)
    sets = local.LocalSets.from_lists([np.arange(0, 20), np.arange(10, 35), np.arange(30, 40)], N,
                                      multiple=config.batch_size)
    batches = local.epoch_batches(state, data, sets, config)
    return state, functools.partial(local.train_step, data=data, config=config), batches


def _two_tower():
    config = TwoTowerConfig(TwoTower(n_groups=2, width=8))
    state = two_tower_init(jax.random.PRNGKey(0), config, 5, 4)
    rng = np.random.default_rng(0)
    batches = [two_tower_batch(rng.normal(size=(10, 5)), rng.normal(size=(10, 4)),
                               rng.integers(0, 2, 10).astype(np.float32), rng.integers(0, 2, 10), 16)
               for _ in range(3)]
    return state, functools.partial(two_tower_train_step, config=config), batches


MODELS = {"tall": _tall, "local": _local, "two_tower": _two_tower}


@pytest.mark.parametrize("name", MODELS)
def test_state_follows_the_convention_and_the_generic_loop_drives_it(name):
    state, step, batches = MODELS[name]()
    train_state.check_state(state)
    assert tuple(f.name for f in dataclasses.fields(state))[:4] == train_state.CORE_FIELDS
    before = jax.tree.map(np.array, state.params)
    state, history = loop(step, state, batches)
    assert int(state.step) == len(batches) > 1
    assert all(np.isfinite(np.asarray(m["loss"])).any() for m in history)
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params, before)
    assert any(jax.tree.leaves(moved))


def test_the_three_states_share_the_core_fields():
    names = {name: tuple(f.name for f in dataclasses.fields(MODELS[name]()[0]))[:4] for name in MODELS}
    assert set(names.values()) == {("params", "opt_state", "rng", "step")}


def test_check_state_names_what_breaks_the_convention():
    @struct.dataclass
    class WithOptimiser:
        params: dict
        opt_state: tuple
        rng: jax.Array
        step: jax.Array
        tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @struct.dataclass
    class OtherOrder:
        params: dict
        step: jax.Array
        opt_state: tuple
        rng: jax.Array

    key, zero = jax.random.PRNGKey(0), jnp.zeros((), jnp.int32)
    with pytest.raises(TypeError, match="static fields.*tx"):
        train_state.check_state(WithOptimiser({}, (), key, zero, optax.adam(1e-3)))
    with pytest.raises(TypeError, match="starts with fields"):
        train_state.check_state(OtherOrder({}, zero, (), key))
    with pytest.raises(TypeError, match="not a flax.struct"):
        train_state.check_state({"params": {}})


def test_local_hand_written_epoch_is_train_epoch():
    """train_step over epoch_batches, closed by end_epoch, is train_epoch bit for bit (two epochs,
    shuffled, one model's list exhausted early)."""
    data = split_user_data(N, M)
    config = local.LocalTrainConfig(batch_size=8, lr=0.01, dropout=0.2, beta=0.2, shuffle=True)
    params_K = vae.init_experts(jax.random.PRNGKey(0), 2, M, 4)
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    sets = local.LocalSets.from_lists([np.arange(0, 30), np.arange(25, 33)], N, multiple=config.batch_size)
    by_epoch = local.init(keys, config, params_K)
    by_step = local.init(keys, config, params_K)
    for _ in range(2):
        by_epoch, _ = local.train_epoch(by_epoch, data, sets, config)
        by_step, _ = loop(functools.partial(local.train_step, data=data, config=config), by_step,
                          local.epoch_batches(by_step, data, sets, config))
        by_step = local.end_epoch(by_step)
    for a, b in zip(jax.tree.leaves(by_epoch), jax.tree.leaves(by_step)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
