"""Data-parallel two-tower training over devices and processes (``--mesh data=N``, ``--distributed``).

One global program: the batch is split along its rows over the mesh axis ``"data"``
(:data:`tall_jax.sharding.DATA`); parameters, optimiser state, RNG, step and BatchNorm statistics are
replicated. ``jax.jit`` partitions the unchanged train step from these input shardings (GSPMD) and
inserts the all-reduces itself: of the gradients, of the loss and of BatchNorm's masked batch mean and
variance, which are therefore statistics of the global batch. N devices compute the one-device step up
to the order of float sums.

Several processes (``jax.distributed``): every process runs the same program on the same global
batch indices; each gathers the features of its own contiguous block of rows of each padded global
batch (the rows its devices hold, :func:`local_rows`) and :func:`put_rows` assembles the global array
with ``jax.make_array_from_process_local_data``. Step outputs are replicated, so every process can read
the loss and the scores.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tall_jax.sharding import DATA, make_mesh, parse_axes

# what --distributed reads when it starts jax.distributed (jax itself reads only the first)
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def parse_data_mesh(spec: str) -> int:
    """``"data=N"`` -> N. A bad spec (or an expert axis, which the two-tower has not) raises ValueError."""
    return parse_axes(spec, {DATA: None}, "data=N")[DATA]


def start_distributed(environ: dict | None = None) -> None:
    """``jax.distributed.initialize`` from ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, with gloo collectives on CPU. Must run before any
    other jax call. A missing or malformed variable raises ValueError."""
    env = os.environ if environ is None else environ
    missing = [k for k in DISTRIBUTED_ENV if not env.get(k)]
    if missing:
        raise ValueError(f"--distributed needs the environment variables {', '.join(DISTRIBUTED_ENV)}; "
                         f"missing: {', '.join(missing)}")
    n, pid = env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]
    if not (n.isdigit() and pid.isdigit() and int(pid) < int(n)):
        raise ValueError(f"--distributed: JAX_NUM_PROCESSES={n!r} and JAX_PROCESS_ID={pid!r} must be integers "
                         "with 0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(n),
                               process_id=int(pid))


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A 1 x N ``("data", "expert")`` mesh (:func:`tall_jax.sharding.make_mesh`) over which two-tower
    batches are split by rows; everything else is replicated on it."""

    mesh: Mesh

    @property
    def n_data(self) -> int:
        return self.mesh.shape[DATA]

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def rows(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(DATA))


def make_data_parallel(n_data: int | None = None) -> DataParallel:
    """A data-parallel placement over ``n_data`` devices (default: every device of every process).
    Under several processes the mesh must hold every device, or some process would hold none."""
    total = jax.device_count()
    n_data = total if n_data is None else n_data
    if n_data > total:
        raise ValueError(f"--mesh data={n_data}: only {total} device{'s' * (total > 1)} available")
    if jax.process_count() > 1 and n_data != total:
        raise ValueError(f"--mesh data={n_data}: with {jax.process_count()} processes the mesh must span all "
                         f"{total} devices (data={total})")
    return DataParallel(make_mesh(n_expert_shards=1, n_data_shards=n_data))


def check_batch_size(batch_size: int, n_data: int) -> None:
    """Raise ValueError unless ``batch_size`` splits evenly over ``n_data`` devices."""
    if batch_size % n_data:
        raise ValueError(f"--batch-size {batch_size} must be divisible by the {n_data} data shards of --mesh")


def local_rows(dp: DataParallel, n_rows: int) -> slice:
    """The contiguous block of a global ``n_rows`` batch that this process's devices hold."""
    check_batch_size(n_rows, dp.n_data)
    starts = sorted({idx[0].start or 0 for idx in dp.rows.addressable_devices_indices_map((n_rows,)).values()})
    block = n_rows // dp.n_data
    if starts != list(range(starts[0], starts[0] + block * len(starts), block)):
        raise ValueError("two-tower data parallel: this process's devices hold non-contiguous rows of the batch")
    return slice(starts[0], starts[0] + block * len(starts))


def put_rows(dp: DataParallel, local_tree: Any, n_rows: int) -> Any:
    """A pytree of this process's row blocks (numpy, leading axis = ``local_rows`` length) as global
    arrays of ``n_rows`` rows split over ``"data"``."""
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(dp.rows, np.asarray(a), (n_rows,) + a.shape[1:]),
        local_tree)


def replicate(dp: DataParallel, tree: Any) -> Any:
    """``tree`` (the same values on every process) replicated on every device of the mesh."""
    def one(a):
        if isinstance(a, jax.Array) and a.sharding == dp.replicated:
            return a
        if isinstance(a, jax.Array) and not a.is_fully_addressable:  # global already: reshard on device
            return jax.device_put(a, dp.replicated)
        host = np.asarray(jax.device_get(a))
        return jax.make_array_from_callback(host.shape, dp.replicated, lambda idx: host[idx])

    return jax.tree.map(one, tree)


@functools.lru_cache(maxsize=None)
def jit_replicated(fun: Callable, dp: DataParallel, **jit_kwargs) -> Callable:
    """``jax.jit(fun, **jit_kwargs)`` whose outputs are all replicated on ``dp``'s mesh (so every
    process reads them whole); built once per function, mesh and options."""
    return jax.jit(fun, out_shardings=dp.replicated, **jit_kwargs)


def is_main_process() -> bool:
    """True on process 0 (the one that writes files), and in a single-process run."""
    return jax.process_index() == 0
