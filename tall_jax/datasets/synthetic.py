"""A small synthetic dataset with a visible mainstream bias (the offline default).

Users belong to communities whose sizes follow a power law: a few large "mainstream" communities
and many small "niche" ones. Item popularity is Zipf-skewed. Every community has a set of home
items; large communities draw their home items from the popular head, small ones from the tail.
A user's items are sampled without replacement from a mix of the global popularity and the
community's home items, so niche users share few items with the rest (low mainstream score).
"""
from __future__ import annotations

import numpy as np

from .base import Dataset
from .split import random_split


def make_synthetic(
    n_users: int = 1500,
    n_items: int = 1000,
    seed: int = 0,
    *,
    n_communities: int = 24,
    community_exponent: float = 1.6,
    zipf_exponent: float = 0.9,
    home_items: int = 40,
    home_weight: float = 0.7,
    mean_interactions: float = 40.0,
    min_interactions: int = 10,
) -> Dataset:
    """Sample a user-item matrix as the module docstring says, then split it with ``random_split``.

    Community ``k`` has a size proportional to ``(k+1)^-community_exponent``; item ``j`` has global
    popularity proportional to ``(j+1)^-zipf_exponent``. User ``u`` in community ``k`` draws
    ``n_u = min_interactions + Geometric`` (mean ``mean_interactions``) distinct items with weights
    ``(1-home_weight)*pop + home_weight*home_k`` (Gumbel top-k). Deterministic per ``seed``.
    """
    if n_users < 2 or n_items <= min_interactions + 2:
        raise ValueError(
            f"synthetic: need n_users >= 2 and n_items > min_interactions + 2, got "
            f"n_users={n_users}, n_items={n_items}, min_interactions={min_interactions}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7]))
    n_communities = max(1, min(n_communities, n_users))
    size_w = (np.arange(n_communities) + 1.0) ** -community_exponent
    community_N = np.sort(rng.choice(n_communities, size=n_users, p=size_w / size_w.sum()))
    community_N = rng.permutation(community_N)

    pop_M = (np.arange(n_items) + 1.0) ** -zipf_exponent
    pop_M /= pop_M.sum()
    home_KxM = np.zeros((n_communities, n_items))
    n_home = min(home_items, n_items)
    for k in range(n_communities):
        # Rank of a community by size decides where its home items lie: head for the largest.
        head_bias = 1.0 - k / max(1, n_communities - 1)
        w = pop_M ** head_bias
        idx = rng.choice(n_items, size=n_home, replace=False, p=w / w.sum())
        home_KxM[k, idx] = 1.0 / n_home
    prob_KxM = (1.0 - home_weight) * pop_M + home_weight * home_KxM

    extra = max(mean_interactions - min_interactions, 1.0)
    n_N = min_interactions + rng.geometric(1.0 / (extra + 1.0), size=n_users) - 1
    n_N = np.minimum(n_N, n_items // 2)
    gumbel_NxM = rng.gumbel(size=(n_users, n_items))
    scores_NxM = np.log(prob_KxM[community_N]) + gumbel_NxM
    ranked_NxM = np.argsort(-scores_NxM, axis=1, kind="stable")
    take_NxM = np.arange(n_items)[None, :] < n_N[:, None]
    users = np.repeat(np.arange(n_users), n_N)
    items = ranked_NxM[take_NxM]

    train, valid, test = random_split(users, items, n_users, n_items, seed=seed)
    sizes = np.bincount(community_N, minlength=n_communities)
    info = {
        "source": "synthetic",
        "generator": {
            "n_users": n_users, "n_items": n_items, "seed": seed, "n_communities": n_communities,
            "community_exponent": community_exponent, "zipf_exponent": zipf_exponent,
            "home_items": home_items, "home_weight": home_weight,
            "mean_interactions": mean_interactions, "min_interactions": min_interactions,
        },
        "community_sizes": sizes.tolist(),
        "user_community": community_N.tolist(),
        "interactions": int(users.size),
    }
    return Dataset(name="synthetic", split="random", seed=seed, train=train, valid=valid,
                   test=test, info=info)
