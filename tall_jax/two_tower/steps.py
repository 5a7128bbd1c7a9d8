"""Explicit training state, the jitted train / eval steps and a small epoch loop for the two-tower models.

State is a pytree in the one state convention (:mod:`tall_jax.train_state`: params, Adam state,
RNG, step, then batch-norm statistics); the model and the optimiser's settings are the static
:class:`TwoTowerConfig`; steps are pure functions ``state, batch, config -> state, metrics`` jitted
once per config (static shapes: the last batch is padded and
carries a validity mask that zeroes its loss and its batch-statistics contribution).
The epoch loop and the scorer take an optional :class:`~tall_jax.two_tower.parallel.DataParallel`
placement (``--mesh data=N``, ``--distributed``): the same steps, batches split over devices.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from tall_jax.two_tower.model import TwoTower, masked_bce_loss, own_group_scores
from tall_jax.two_tower.parallel import DataParallel, jit_replicated, local_rows, put_rows, replicate


@struct.dataclass
class TwoTowerBatch:
    """One padded batch: ``user_x[B, U]``, ``item_x[B, I]`` float32, ``label[B]`` in {0,1},
    ``group[B]`` int32 in 0..G-1, ``valid[B]`` bool (False on padding rows)."""

    user_x: jax.Array
    item_x: jax.Array
    label: jax.Array
    group: jax.Array
    valid: jax.Array


@struct.dataclass
class TwoTowerState:
    """Everything a step changes, in the one state convention (:mod:`tall_jax.train_state`):
    ``params``, Adam ``opt_state``, ``rng`` (folded with ``step`` for any stochastic op), ``step``,
    then ``batch_stats`` (BatchNorm running mean / var). The model and the optimiser are static:
    :class:`TwoTowerConfig`."""

    params: Any
    opt_state: Any
    rng: jax.Array
    step: jax.Array
    batch_stats: Any


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
    """What a train step needs besides the state: the model and its optimiser's settings
    (docs/fidelity.md#two-tower-model: Adam lr 1e-3). Hashable: a static argument of the jitted step.

    ``weight_decay > 0`` (an option, not the paper's) makes the optimiser AdamW with decoupled decay
    on the shared towers' Dense kernels only (``shared_tower_kernels``): heads, biases, BatchNorm and
    the logit affine are not decayed."""

    model: TwoTower
    learning_rate: float = 1e-3
    weight_decay: float = 0.0


def shared_tower_kernels(params) -> Any:
    """Mask: True on the Dense kernels of the shared user and title towers (what ``weight_decay`` decays)."""
    def mark(path, _):
        keys = [getattr(k, "key", None) for k in path]
        return bool(keys) and keys[0] in ("user_tower", "item_tower") and keys[-1] == "kernel"

    return jax.tree_util.tree_map_with_path(mark, params)


def make_optimizer(config: TwoTowerConfig) -> optax.GradientTransformation:
    """Adam(lr), or AdamW on the shared towers' kernels when ``config.weight_decay > 0``."""
    if config.weight_decay > 0:
        return optax.adamw(config.learning_rate, weight_decay=config.weight_decay, mask=shared_tower_kernels)
    return optax.adam(config.learning_rate)


def init(key: jax.Array, config: TwoTowerConfig, user_dim: int, item_dim: int) -> TwoTowerState:
    """A fresh state: parameters and BatchNorm statistics of ``config.model`` for features of
    widths ``user_dim`` / ``item_dim``, and the optimiser's state."""
    init_rng, state_rng = jax.random.split(key)
    variables = config.model.init(
        init_rng, jnp.zeros((2, user_dim), jnp.float32), jnp.zeros((2, item_dim), jnp.float32), train=False
    )
    params = variables["params"]
    return TwoTowerState(
        params=params,
        opt_state=make_optimizer(config).init(params),
        rng=state_rng,
        step=jnp.zeros((), jnp.int32),
        batch_stats=variables["batch_stats"],
    )


def two_tower_loss(params, batch_stats, batch: TwoTowerBatch, *, model: TwoTower, rng: jax.Array | None = None):
    """Masked per-group BCE (docs/fidelity.md#two-tower-model) in train mode; returns ``(loss, new_batch_stats)``. ``rng`` feeds
    head dropout (default key 0 when the model has dropout and none is given)."""
    rngs = {"dropout": jax.random.PRNGKey(0) if rng is None else rng} if model.head_dropout > 0 else None
    scores_BxG, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        batch.user_x,
        batch.item_x,
        train=True,
        valid_B=batch.valid,
        mutable=["batch_stats"],
        rngs=rngs,
    )
    loss = masked_bce_loss(scores_BxG, batch.label, model.group_mask(batch.group), batch.valid)
    return loss, updates["batch_stats"]


def _train_step(state: TwoTowerState, batch: TwoTowerBatch, config: TwoTowerConfig):
    """One Adam step on the masked BCE; batch statistics updated from the real rows only."""
    grad_fn = jax.value_and_grad(two_tower_loss, has_aux=True)
    (loss, batch_stats), grads = grad_fn(state.params, state.batch_stats, batch, model=config.model,
                                         rng=jax.random.fold_in(state.rng, state.step))
    updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.params)
    new_state = state.replace(
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        step=state.step + 1,
    )
    return new_state, {"loss": loss, "n_real": jnp.sum(batch.valid.astype(jnp.int32))}


_TRAIN_JIT = dict(static_argnames=("config",), donate_argnames=("state",))
two_tower_train_step = jax.jit(_train_step, **_TRAIN_JIT)


def _eval_step(state: TwoTowerState, batch: TwoTowerBatch, *, model: TwoTower) -> jax.Array:
    """Propensity ``sigmoid(score)`` of each example's own group head, BatchNorm in eval mode."""
    scores_BxG = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch.user_x, batch.item_x, train=False
    )
    return jax.nn.sigmoid(own_group_scores(scores_BxG, batch.group))


two_tower_eval_step = jax.jit(_eval_step, static_argnames=("model",))


def make_batch(
    user_x_NxU: np.ndarray, item_x_NxI: np.ndarray, label_N: np.ndarray, group_N: np.ndarray, batch_size: int
) -> TwoTowerBatch:
    """Pad ``N <= batch_size`` rows to ``batch_size`` (zero features, ``valid=False``)."""
    n = len(label_N)
    if n == 0 or n > batch_size:
        raise ValueError(f"make_batch: need 1..{batch_size} rows, got {n}")
    return _padded(user_x_NxU, item_x_NxI, label_N, group_N, batch_size)


def _padded(user_x_NxU, item_x_NxI, label_N, group_N, n_rows: int) -> TwoTowerBatch:
    """``N <= n_rows`` rows (none allowed) padded to ``n_rows``."""
    n = len(label_N)
    pad = n_rows - n

    def _pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))

    return TwoTowerBatch(
        user_x=_pad(np.asarray(user_x_NxU, np.float32)),
        item_x=_pad(np.asarray(item_x_NxI, np.float32)),
        label=_pad(np.asarray(label_N, np.float32)),
        group=_pad(np.asarray(group_N, np.int32)),
        valid=_pad(np.ones(n, bool)),
    )


def place_batch(gather, idx: np.ndarray, batch_size: int, dp: DataParallel | None) -> TwoTowerBatch:
    """The padded batch of examples ``idx``: on the default device, or split by rows over ``dp``'s
    mesh with this process gathering only the block of rows its devices hold."""
    if dp is None:
        return make_batch(*gather(idx), batch_size)
    rows = local_rows(dp, batch_size)
    return put_rows(dp, _padded(*gather(idx[rows]), rows.stop - rows.start), batch_size)


def iterate_batches(n: int, batch_size: int, rng: np.random.Generator | None):
    """Index arrays of consecutive batches over a permutation (or 0..n-1 when ``rng`` is None)."""
    order = np.arange(n) if rng is None else rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def prefetch(items: Iterable, depth: int) -> Iterator:
    """``items`` produced ``depth`` ahead by a background thread (the same items, in order); an error
    of the producer is raised here. ``depth == 0``: ``items`` itself."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer
            put((end, e))

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, err = q.get()
            if item is end:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        worker.join()


def train_two_tower(
    config: TwoTowerConfig,
    state: TwoTowerState,
    gather: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    n_examples: int,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    dp: DataParallel | None = None,
    order: Callable[[int, int, np.random.Generator], Iterable[np.ndarray]] = iterate_batches,
    prefetch_depth: int = 0,
) -> tuple[TwoTowerState, list[float]]:
    """Run ``epochs`` shuffled passes; ``gather(idx) -> (user_x, item_x, label, group)`` builds a batch.

    ``order(n, batch_size, rng)`` gives each epoch's index batches (default: a full permutation);
    ``prefetch_depth > 0`` assembles that many batches ahead in a thread. Returns the final state and
    the mean training loss per epoch. Per-step metrics are read one step late so host-side batch
    assembly overlaps device compute. Raises if the loss becomes non-finite. With ``dp`` every batch
    is split over its mesh and the returned state is replicated on it.
    """
    step = two_tower_train_step
    if dp is not None:
        step, state = jit_replicated(_train_step, dp, **_TRAIN_JIT), replicate(dp, state)
    rng = np.random.default_rng(seed)
    epoch_losses: list[float] = []
    n_batches = -(-n_examples // batch_size)
    for epoch in range(epochs):
        total, count, pending = 0.0, 0, None
        batches = prefetch((place_batch(gather, idx, batch_size, dp) for idx in order(n_examples, batch_size, rng)),
                           prefetch_depth)
        bar = tqdm(batches, total=n_batches, disable=not progress, desc=f"{desc} ep{epoch + 1}/{epochs}", leave=False)
        for batch in bar:
            state, metrics = step(state, batch, config)
            if pending is not None:
                total, count = total + float(pending["loss"]) * int(pending["n_real"]), count + int(pending["n_real"])
            pending = metrics
        total, count = total + float(pending["loss"]) * int(pending["n_real"]), count + int(pending["n_real"])
        mean = total / max(count, 1)
        if not np.isfinite(mean):
            raise FloatingPointError(f"{desc}: non-finite training loss in epoch {epoch + 1} (step <= {int(state.step)})")
        epoch_losses.append(mean)
    return state, epoch_losses


def predict_two_tower(
    model: TwoTower,
    state: TwoTowerState,
    gather: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    n_examples: int,
    *,
    batch_size: int,
    dp: DataParallel | None = None,
) -> np.ndarray:
    """Eval-mode propensities for examples ``0..n-1`` in order (float32 ``[N]``). With ``dp`` each
    batch (``batch_size`` rounded up to a multiple of the data shards) is split over its mesh."""
    step = two_tower_eval_step
    if dp is not None:
        step, state = jit_replicated(_eval_step, dp, static_argnames=("model",)), replicate(dp, state)
        batch_size = -(-batch_size // dp.n_data) * dp.n_data
    out = []
    for idx in iterate_batches(n_examples, batch_size, None):
        batch = place_batch(gather, idx, batch_size, dp)
        out.append(np.asarray(step(state, batch, model=model))[: len(idx)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)
