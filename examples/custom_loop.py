"""One hand-written JAX training loop for TALL, a local baseline and the two-tower model.

    python examples/custom_loop.py [--model tall|local|two_tower] [--epochs 15] [--experts 10]

All three follow one state convention (docs/api.md#one-state-convention): ``init(key, config, ...)``
returns a ``flax.struct`` state whose fields start with ``params, opt_state, rng, step``, and a
jitted ``train_step(state, batch, config)`` returns ``(state, metrics)`` (compiled once: every batch
has the same shape, the last one padded). So :func:`train` below is the same for every model; each
``setup_*`` says what a batch is, what happens around an epoch, and what to print after it.
"""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import tall_jax
from tall_jax import two_tower, vae
from tall_jax.baselines import local, scoring
from tall_jax.batching import epoch_order
from tall_jax.datasets import load_dataset
from tall_jax.protocol import dataset_groups
from tall_jax.two_tower.data import concat_pairs
from tall_jax.two_tower.steps import iterate_batches


class Setup(NamedTuple):
    """What the loop needs of one model."""

    state: Any  # from the model's init(key, config, ...)
    step: functools.partial  # the model's jitted train_step with its config bound: state, batch -> state, metrics
    batches: Callable[[Any, int], Iterable]  # (state, epoch) -> this epoch's batches
    begin_epoch: Callable[[Any], Any] = lambda state: state
    end_epoch: Callable[[Any], Any] = lambda state: state
    report: Callable[[Any], str] = lambda state: ""


def train(setup: Setup, epochs: int) -> Any:
    """The loop: it owns the epochs and the batches; the library gives the state and the step."""
    state = setup.state
    for epoch in range(1, epochs + 1):
        state = setup.begin_epoch(state)
        losses = []
        for batch in setup.batches(state, epoch):  # your own batching, sampling, logging, ... goes here
            state, metrics = setup.step(state, batch)
            losses.append(metrics["loss"])
        state = setup.end_epoch(state)
        print(f"epoch {epoch:2d}  loss {np.nanmean(jax.device_get(losses)):8.3f}  {setup.report(state)}")
    return state


def setup_tall(args) -> Setup:
    """TALL (docs/fidelity.md#loss): the epoch hooks set the adaptive weights w_u (Eq. 3) and push
    l^{t-1} - l^t into the loss-change window."""
    dataset = load_dataset("synthetic", seed=0)
    _, groups_N = dataset_groups(dataset)
    config = tall_jax.make_config("synthetic", "tall", n_experts=args.experts, gap=5)
    data = tall_jax.UserData.from_dataset(dataset)  # padded item indices on the device
    n_valid_N = jnp.asarray(np.diff(dataset.valid.indptr), jnp.float32)

    def report(state) -> str:
        ndcg = np.asarray(tall_jax.evaluate(state.params, data, config)["test/ndcg@20"])
        by_group = "  ".join(f"{np.nanmean(ndcg[groups_N == g]):.3f}" for g in range(5))
        w = np.asarray(state.weights_N)
        return f"test NDCG@20 {np.nanmean(ndcg):.4f}  low..high {by_group}  w in [{w.min():.2f}, {w.max():.2f}]"

    return Setup(
        state=tall_jax.init(jax.random.PRNGKey(0), config, dataset.n_users, dataset.n_items),
        step=functools.partial(tall_jax.train_step, config=config),
        batches=lambda state, epoch: (tall_jax.make_batch(data, users_B) for users_B in
                                      epoch_order(jax.random.PRNGKey(epoch), dataset.n_users, config.batch_size)),
        begin_epoch=lambda state: tall_jax.begin_epoch(state, config, n_valid_N),
        end_epoch=lambda state: tall_jax.end_epoch(state, config),
        report=report)


def setup_local(args) -> Setup:
    """Local MultVAEs trained together, stacked on a leading axis K, each on its own user list with
    LFT's step (docs/fidelity.md#lft): here one model per activity group, from scratch; each user is
    scored by the model of its group."""
    dataset = load_dataset("synthetic", seed=0)
    _, groups_N = dataset_groups(dataset)
    data = tall_jax.UserData.from_dataset(dataset)
    config = local.LocalTrainConfig(batch_size=128, dropout=0.2, beta=0.2, shuffle=True)
    lists = [np.flatnonzero(groups_N == g) for g in range(5)]
    sets = local.LocalSets.from_lists(lists, dataset.n_users, multiple=config.batch_size)
    key_params, key_run = jax.random.split(jax.random.PRNGKey(0))
    params_K = vae.init_experts(key_params, len(lists), dataset.n_items, 64)
    weights_NxK = jnp.asarray(np.eye(len(lists), dtype=np.float32)[groups_N])

    def report(state) -> str:
        evals = scoring.evaluate_users(scoring.enlft_scores, {"local": state.params, "weights_NxK": weights_NxK},
                                       data, np.arange(dataset.n_users), 256)
        ndcg = evals["test/ndcg@20"]
        by_group = "  ".join(f"{np.nanmean(ndcg[groups_N == g]):.3f}" for g in range(5))
        return f"test NDCG@20 {np.nanmean(ndcg):.4f}  low..high {by_group}"

    return Setup(
        state=local.init(jax.random.split(key_run, len(lists)), config, params_K),
        step=functools.partial(local.train_step, data=data, config=config),
        batches=lambda state, epoch: local.epoch_batches(state, data, sets, config),
        end_epoch=local.end_epoch,  # each model's epoch count keys its next shuffle
        report=report)


def setup_two_tower(args) -> Setup:
    """The multi-task two-tower (docs/fidelity.md#two-tower-model) on small synthetic days: the
    training days' upsampled examples, validation AP on the last training day's held-out users."""
    data = two_tower.make_synthetic_two_tower(two_tower.SyntheticConfig(n_users=4000), seed=0)
    config = two_tower.TwoTowerConfig(two_tower.TwoTower(n_groups=data.n_groups, width=64))
    first = data.first_test_day
    pairs = concat_pairs([day.train_upsampled for day in data.days[:first]])
    valid, gather, batch_size = data.days[first - 1].valid, data.gather(pairs), 512

    def report(state) -> str:
        p = two_tower.predict_two_tower(config.model, state, data.gather(valid), len(valid), batch_size=4096)
        return f"valid AP {two_tower.average_precision(valid.label, p):.4f}"

    return Setup(
        state=two_tower.init(jax.random.PRNGKey(0), config, data.user_x.shape[1], data.item_x.shape[1]),
        step=functools.partial(two_tower.two_tower_train_step, config=config),
        batches=lambda state, epoch: (two_tower.make_batch(*gather(idx), batch_size) for idx in
                                      iterate_batches(len(pairs), batch_size, np.random.default_rng(epoch))),
        report=report)


SETUPS = {"tall": setup_tall, "local": setup_local, "two_tower": setup_two_tower}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=SETUPS, default="tall")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--experts", type=int, default=10, help="TALL's number of experts")
    args = p.parse_args(argv)

    setup = SETUPS[args.model](args)
    compiled = setup.step.func._cache_size()
    train(setup, args.epochs)
    print(f"train_step compiled {setup.step.func._cache_size() - compiled} time(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
