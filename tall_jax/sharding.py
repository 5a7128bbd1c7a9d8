"""Multi-device execution: the expert axis (and optionally the user batch) over a device mesh.

TALL's E experts are independent apart from the gate and the mixture, so the stacked expert parameters
``[E, ...]`` and their Adam moments are split along E over the mesh axis ``"expert"``; everything else
(per-user buffers, counters, the MLP gate) is replicated. The batch is replicated, or split along its
user axis over ``"data"``. Nothing in :mod:`tall_jax.steps` changes: ``jax.jit`` partitions
``train_step`` / ``train_epoch`` / ``evaluate`` from the input shardings (GSPMD), inserting the
all-reduces of the gate's softmax over experts and of the mixture sum. The result is the single-device
result up to float reduction order.

Multi-host: call ``jax.distributed.initialize()`` on every host first; :func:`make_mesh` then spans
``jax.devices()`` (all hosts' devices). :func:`tall_jax.fit.fit` (``--mesh`` on the command line)
shards the expert axis; its checkpoints (orbax, :mod:`tall_jax.checkpoint`) write the state shard by
shard, never gathered to one host. (``fit`` still keeps a host copy of the best parameters, so a
multi-host run would need that copy changed.)
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

EXPERT, DATA = "expert", "data"


def make_mesh(n_expert_shards: int | None = None, n_data_shards: int = 1,
              devices: list | None = None) -> Mesh:
    """A ``("data", "expert")`` mesh over ``devices`` (default: all; expert shards default to all
    devices / n_data_shards)."""
    devices = list(jax.devices() if devices is None else devices)
    if n_expert_shards is None:
        n_expert_shards = len(devices) // n_data_shards
    need = n_expert_shards * n_data_shards
    if n_expert_shards < 1 or n_data_shards < 1 or need > len(devices):
        raise ValueError(f"make_mesh: {n_data_shards} data x {n_expert_shards} expert shards need "
                         f"{need} devices, {len(devices)} available")
    grid = np.array(devices[:need]).reshape(n_data_shards, n_expert_shards)
    return Mesh(grid, (DATA, EXPERT))


def _is_expert_leaf(path) -> bool:
    return any(isinstance(k, jax.tree_util.DictKey) and k.key == "experts" for k in path)


def state_shardings(state, mesh: Mesh):
    """A pytree of NamedShardings for ``state``: leaves under an ``"experts"`` key split along their
    leading E axis, all other leaves replicated."""
    n_shards = mesh.shape[EXPERT]

    def one(path, leaf):
        if _is_expert_leaf(path) and getattr(leaf, "ndim", 0) >= 1:
            if leaf.shape[0] % n_shards:
                raise ValueError(f"shard_state: n_experts={leaf.shape[0]} is not divisible by the "
                                 f"{n_shards} expert shards of the mesh")
            return NamedSharding(mesh, PartitionSpec(EXPERT))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, state)


def shard_state(state, mesh: Mesh):
    """``state`` (a TrainState, or any pytree with an ``"experts"`` subtree) placed on ``mesh``."""
    return jax.device_put(state, state_shardings(state, mesh))


def shard_batch(batch, mesh: Mesh):
    """A Batch with its user axis split over ``"data"`` (replicated when the mesh has 1 data shard)."""
    n_shards = mesh.shape[DATA]
    if batch.users.shape[0] % n_shards:
        raise ValueError(f"shard_batch: batch size {batch.users.shape[0]} is not divisible by the "
                         f"{n_shards} data shards of the mesh")
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(DATA)))


def replicate(tree, mesh: Mesh):
    """Any pytree (e.g. :class:`tall_jax.batching.UserData`) replicated on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def parse_axes(spec: str, sizes: dict, expected: str) -> dict:
    """``"name=N,..."`` -> ``sizes`` updated with each named axis (only the names ``sizes`` holds);
    an axis left None is required. A bad spec raises ValueError naming the ``expected`` form."""
    sizes = dict(sizes)
    for part in spec.split(","):
        name, eq, value = part.strip().partition("=")
        if name not in sizes or not eq or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--mesh {spec!r}: expected {expected} with positive integers")
        sizes[name] = int(value)
    for name, size in sizes.items():
        if size is None:
            raise ValueError(f"--mesh {spec!r}: the {name}=N part is required")
    return sizes


def parse_mesh(spec: str) -> tuple[int, int]:
    """``"expert=N[,data=M]"`` -> (N, M); ``data`` defaults to 1. A bad spec raises ValueError."""
    sizes = parse_axes(spec, {EXPERT: None, DATA: 1}, "expert=N[,data=M]")
    return sizes[EXPERT], sizes[DATA]
