"""Multi-task two-tower model with hard parameter sharing and masked per-group BCE
(docs/fidelity.md#two-tower; Gampa et al. 2023)."""
from tall_jax.two_tower.data import Day, PairSet, TwoTowerData, sample_negatives, upsample_active_users
from tall_jax.two_tower.log_cache import LogCache, build_log_cache
from tall_jax.two_tower.log_days import LogProtocol, groups_by_size, make_log_two_tower
from tall_jax.two_tower.metrics import average_precision, average_precision_by_key, gain_table, relative_gain
from tall_jax.two_tower.model import TwoTower, Tower, masked_bce_loss, own_group_scores
from tall_jax.two_tower.steps import (
    TwoTowerBatch, TwoTowerConfig, TwoTowerState, init, make_batch, make_optimizer, predict_two_tower,
    train_two_tower, two_tower_eval_step, two_tower_train_step,
)

__all__ = [
    "Day", "PairSet", "SyntheticConfig", "TwoTowerData", "make_synthetic_two_tower", "sample_negatives",
    "upsample_active_users", "average_precision", "average_precision_by_key", "gain_table", "relative_gain",
    "TwoTower", "Tower", "masked_bce_loss", "own_group_scores", "TwoTowerBatch", "TwoTowerConfig",
    "TwoTowerState", "init", "make_batch", "make_optimizer", "predict_two_tower", "train_two_tower",
    "two_tower_eval_step", "two_tower_train_step", "LogCache", "build_log_cache", "LogProtocol", "groups_by_size",
    "make_log_two_tower",
]


def __getattr__(name: str):
    """``SyntheticConfig`` and ``make_synthetic_two_tower``, imported on first use: importing the
    synthetic module with the package would make ``python -m tall_jax.two_tower.synthetic`` (the
    log generator's command) warn that the module was imported before it ran."""
    if name in ("SyntheticConfig", "make_synthetic_two_tower"):
        # why: see the docstring; the facade's names stay the same
        from tall_jax.two_tower import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'tall_jax.two_tower' has no attribute {name!r}")
