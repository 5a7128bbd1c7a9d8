"""The one training-state convention of TALL, the local baselines and the two-tower (docs/api.md#one-state-convention).

Every trainable model here has

- a ``flax.struct`` state whose first four fields are ``params``, ``opt_state``, ``rng`` and
  ``step`` (the model's own fields follow: TALL's epoch and loss window, the local models'
  early-stopping bookkeeping, the two-tower's BatchNorm statistics) and which holds arrays only;
- a hashable config that is a static argument of every jitted function; the optimiser is built
  from it by the model's ``make_optimizer(config)``, never stored in the state (so a state is a
  plain pytree of arrays: donated whole, checkpointed whole, and equal-structured for every run of
  one config, which therefore compiles once);
- one ``init(key, config, ...) -> state`` and a jitted ``train_step(state, batch, config, ...)
  -> (state, metrics)``.

A hand-written loop is then the same for every model (examples/custom_loop.py)::

    state = init(key, config, ...)
    for batch in batches:
        state, metrics = step(state, batch)   # step = functools.partial(train_step, config=config)
"""
from __future__ import annotations

import dataclasses
from typing import Any

CORE_FIELDS = ("params", "opt_state", "rng", "step")


def check_state(state: Any) -> None:
    """Raise TypeError unless ``state`` follows the convention: a ``flax.struct`` dataclass whose
    first fields are :data:`CORE_FIELDS` and which has no static (non-pytree) field."""
    if not dataclasses.is_dataclass(state) or not hasattr(state, "replace"):
        raise TypeError(f"{type(state).__name__} is not a flax.struct dataclass")
    fields = dataclasses.fields(state)
    names = tuple(f.name for f in fields[:len(CORE_FIELDS)])
    if names != CORE_FIELDS:
        raise TypeError(f"{type(state).__name__} starts with fields {names}, not {CORE_FIELDS}")
    static = [f.name for f in fields if not f.metadata.get("pytree_node", True)]
    if static:
        raise TypeError(f"{type(state).__name__} has static fields {static}: put them in the config")
