"""Trained user embeddings for the ML-1M two-tower data: the MultVAE mu of every user.

This is experiment code (it trains a MultVAE with :func:`tall_jax.fit.fit`); the data builders of
:mod:`tall_jax.two_tower.ml1m` receive its output and train nothing themselves.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tall_jax.configs import make_config
from tall_jax.datasets.base import Dataset
from tall_jax.fit import fit
from tall_jax.vae import user_embeddings


def multvae_user_embedding(dataset: Dataset, *, max_epochs: int = 50, progress: bool = True) -> np.ndarray:
    """MultVAE mu of every user, trained on ``dataset``'s train split (early stopping on validation)."""
    result = fit(dataset, make_config("ml-1m", "multvae", max_epochs=max_epochs), progress=progress)
    return user_embeddings(result.best_params, dataset.train)


def multvae_history_embedding(history: sp.csr_matrix, *, vae_epochs: int = 50,
                              progress: bool = True) -> tuple[np.ndarray, str]:
    """``(mu[U, d], name)``: a MultVAE trained on the history matrix only, a seeded tenth of each
    user's history items held out as validation (no test split)."""
    rng = np.random.default_rng(0)
    coo = history.tocoo()
    hold = rng.random(coo.nnz) < 0.1
    part = lambda m: sp.csr_matrix((np.ones(int(m.sum()), np.float32), (coo.row[m], coo.col[m])),  # noqa: E731
                                   shape=history.shape)
    ds = Dataset("ml-1m-history", "history", 0, part(~hold), part(hold), sp.csr_matrix(history.shape, dtype=np.float32))
    return multvae_user_embedding(ds, max_epochs=vae_epochs, progress=progress), "multvae_mu of the history"
