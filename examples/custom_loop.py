"""TALL's pieces inside a hand-written JAX training loop.

    python examples/custom_loop.py [--epochs 15] [--experts 10]

The loop owns the epochs and the batches; the library provides the state pytree, the jitted
``train_step`` (compiled once: the last batch is padded with dummy users), the epoch hooks that set
TALL's adaptive weights, and the evaluation pass.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import tall_jax
from tall_jax.batching import epoch_order
from tall_jax.datasets import load_dataset
from tall_jax.protocol import dataset_groups


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--experts", type=int, default=10)
    args = p.parse_args(argv)

    dataset = load_dataset("synthetic", seed=0)
    _, groups_N = dataset_groups(dataset)
    config = tall_jax.make_config("synthetic", "tall", n_experts=args.experts, gap=5)
    data = tall_jax.UserData.from_dataset(dataset)  # padded item indices on the device
    n_valid_N = jnp.asarray(np.diff(dataset.valid.indptr), jnp.float32)
    state = tall_jax.init(jax.random.PRNGKey(0), config, dataset.n_users, dataset.n_items)

    for epoch in range(1, args.epochs + 1):
        state = tall_jax.begin_epoch(state, config, n_valid_N)  # w_u for this epoch (Eq. 3)
        order = epoch_order(jax.random.PRNGKey(epoch), dataset.n_users, config.batch_size)
        losses = []
        for users_B in order:  # your own batching, sampling, logging, ... goes here
            batch = tall_jax.make_batch(data, users_B)
            state, metrics = tall_jax.train_step(state, batch, config)
            losses.append(metrics["loss"])
        state = tall_jax.end_epoch(state, config)  # push l^{t-1} - l^t into the window
        evals = tall_jax.evaluate(state.params, data, config)
        ndcg = np.asarray(evals["test/ndcg@20"])
        by_group = "  ".join(f"{np.nanmean(ndcg[groups_N == g]):.3f}" for g in range(5))
        w = np.asarray(state.weights_N)
        print(f"epoch {epoch:2d}  loss {float(np.mean(jax.device_get(losses))):7.2f}  "
              f"test NDCG@20 {np.nanmean(ndcg):.4f}  low..high {by_group}  w in [{w.min():.2f}, {w.max():.2f}]")
    print(f"train_step compiled {tall_jax.train_step._cache_size()} time(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
