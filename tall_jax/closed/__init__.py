"""Closed-form and neighbourhood recommenders (docs/closed_forms.md): EASE and its user-weighted
forms (WL, mainstream-score and TALL-KKT weights), LOCA-EASE, ItemKNN, RP3beta and most-popular,
each with a hyper-parameter grid searched on validation. The experiment (``run_closed``) lives in
:mod:`tall_jax.closed.experiment`."""
from tall_jax.closed.config import (
    CLOSED_MODELS,
    EXECUTION_FIELDS,
    GRIDS,
    ClosedConfig,
    grid_points,
    make_closed_config,
    parse_hp,
)
from tall_jax.closed.ease import ease_from_gram, gram
from tall_jax.closed.itemknn import itemknn_weights
from tall_jax.closed.rp3beta import rp3beta_weights
from tall_jax.closed.scoring import Fitted, evaluate_fitted, gathered_scores

__all__ = [
    "CLOSED_MODELS", "EXECUTION_FIELDS", "GRIDS", "ClosedConfig", "Fitted", "ease_from_gram",
    "evaluate_fitted", "gathered_scores", "grid_points", "gram", "itemknn_weights", "make_closed_config",
    "parse_hp", "rp3beta_weights",
]
