"""tall_jax: TALL (Pan et al., ECIR 2024), its baselines and a multi-task two-tower model, in JAX.

The pieces a custom training loop needs are exported here::

    import tall_jax
    config = tall_jax.make_config("ml-1m", "tall")
    state = tall_jax.init(key, config, n_users, n_items)
    state, metrics = tall_jax.train_step(state, batch, config)
"""
from tall_jax.batching import Batch, UserData, make_batch
from tall_jax.configs import TALLConfig, make_config
from tall_jax.state import TrainState, init, load_state, save_state
from tall_jax.steps import begin_epoch, end_epoch, eval_step, evaluate, train_epoch, train_step
from tall_jax.two_tower import two_tower_train_step

__version__ = "0.1.0"

__all__ = [
    "Batch", "TALLConfig", "TrainState", "UserData", "begin_epoch", "end_epoch", "eval_step",
    "evaluate", "init", "load_state", "make_batch", "make_config", "save_state", "train_epoch",
    "train_step", "two_tower_train_step",
]
