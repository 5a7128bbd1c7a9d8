"""Local-learning baselines of TALL's Table 2 (docs/fidelity.md#loca, #lft, #enlft): LOCA, LFT and EnLFT, with all local
models stacked on a leading axis and trained together (``local``)."""
from tall_jax.baselines.config import BASELINES, LOCA_ORIGINAL, BaselineConfig, make_baseline_config
from tall_jax.baselines.neighbours import (
    Neighbourhoods,
    enlft_anchors,
    enlft_weights,
    epanechnikov,
    jaccard_dense,
    lft_neighbourhoods,
    loca_anchors,
    loca_distances,
    loca_kernel,
)

__all__ = [
    "BASELINES", "LOCA_ORIGINAL", "BaselineConfig", "Neighbourhoods", "enlft_anchors", "enlft_weights",
    "epanechnikov", "jaccard_dense", "lft_neighbourhoods", "loca_anchors", "loca_distances",
    "loca_kernel", "make_baseline_config",
]

