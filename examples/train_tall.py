"""Train TALL (or any model of the model table) and print the per-group NDCG@20 table.

The same program as the ``tall-jax-train`` command (:mod:`tall_jax.commands.train`); run it with
``--help`` for every flag:

    python examples/train_tall.py                                  # TALL, 10 experts, synthetic data
    python examples/train_tall.py --model multvae tall             # two models side by side
    python examples/train_tall.py --dataset ml-1m --model ease --hp lambda=800 --data-dir /path/to/data
"""
import sys

from tall_jax.commands.train import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
