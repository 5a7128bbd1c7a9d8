"""Datasets by name: ml-1m (authors' split or a seeded re-split), yelp, cds, synthetic (docs/fidelity.md#data).

Raw files are looked up, in order, in an explicit ``data_dir``, in ``$TALL_JAX_DATA`` (a folder laid
out like ``ml-1m/tall_split/...``, ``ml-1m/raw/ratings.dat``, ``yelp/yelp.rating``,
``cds/CDs_and_Vinyl.csv``), then in the user cache (``$TALL_JAX_CACHE`` or ``~/.cache/tall_jax``),
and are otherwise downloaded there with a pinned checksum (never with ``download=False`` or
``$TALL_JAX_OFFLINE=1``). Processed splits are cached as ``.npz``, keyed by the size and sha256 of the
raw files and the split settings. Your own ``.csv``/``.tsv``/``.dat`` file is a dataset too: pass its
path, or :func:`register_dataset` it (see :mod:`tall_jax.datasets.own`).
"""
from .base import Dataset
from .download import DownloadError, fetch
from .load import KNOWN_DATASETS, SPLITS, load_dataset
from .own import OwnData, read_interactions, register_dataset
from .readers import (
    read_amazon_csv,
    read_ml1m_movies,
    read_ml1m_ratings,
    read_ml1m_users,
    read_split_csv,
    read_yelp,
)
from .split import (
    KCORE_THRESHOLDS, kcore_filter, kcore_iterative, random_split, reindex_first_appearance, to_csr,
)
from .synthetic import make_synthetic

__all__ = [
    "Dataset", "DownloadError", "KCORE_THRESHOLDS", "KNOWN_DATASETS", "OwnData", "SPLITS", "fetch",
    "kcore_filter", "kcore_iterative", "load_dataset", "make_synthetic", "random_split", "read_amazon_csv",
    "read_interactions", "register_dataset",
    "read_ml1m_movies", "read_ml1m_ratings", "read_ml1m_users", "read_split_csv", "read_yelp",
    "reindex_first_appearance", "to_csr",
]
