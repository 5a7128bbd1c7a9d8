"""The optimizer every MultVAE-family model and every local model trains with.

torch.optim.Adam(lr, weight_decay=wd) is coupled L2: the decay is added to the gradient before Adam
scales it (docs/fidelity.md#implementation), unlike AdamW. Explicit arguments, so TALL configs and
the baselines' local configs build the same transformation.
"""
from __future__ import annotations

import optax


def adam_l2(lr: float, weight_decay: float) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, weight_decay): g + wd * p, then Adam(0.9, 0.999, eps 1e-8), then -lr."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
        optax.scale(-lr),
    )
