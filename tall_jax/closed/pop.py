"""Most popular (docs/closed_forms.md#pop): every user gets the items' train popularity as scores,
pop(i) = |{u : x_ui = 1}| / N (:func:`tall_jax.ranking.item_popularity`); train items are then
excluded by the ranking, so each user sees the most popular items she has not interacted with."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tall_jax.ranking import item_popularity


def popularity(train: sp.spmatrix) -> np.ndarray:
    """pop_M = item train counts / N, float32 [M]."""
    return item_popularity(train)
