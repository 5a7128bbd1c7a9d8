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
    "loca_kernel", "make_baseline_config", "run_baseline",
]


def run_baseline(*args, **kwargs):
    """See :func:`tall_jax.baselines.experiment.run_baseline` (imported lazily: it pulls in fit)."""
    from tall_jax.baselines.experiment import run_baseline as run
    return run(*args, **kwargs)
