"""LFT neighbourhoods (spec §6.3) against a NumPy loop, and chunked fine-tuning against one by one."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from tall_jax import vae
from tall_jax.baselines import lft_neighbourhoods, make_baseline_config
from tall_jax.baselines import scoring
from tall_jax.baselines.lft import finetune_chunk, finetune_config, select_users, user_keys

from helpers import split_user_data

N, M = 40, 24


def _ref_neighbourhoods(x: np.ndarray, sim_t, cos_t, min_size, max_size, alpha=0.7):
    n = len(x)
    sets = [set(np.flatnonzero(r)) for r in x]
    J = np.zeros((n, n), np.float32)
    for u in range(n):
        for v in range(n):
            if u != v:
                union = len(sets[u] | sets[v])
                J[u, v] = np.float32(len(sets[u] & sets[v])) / np.float32(union if union else 1)

    def pick(row, t, cap):
        chosen = [v for v in range(n) if row[v] > t]
        top = sorted(range(n), key=lambda v: (-row[v], v))
        if len(chosen) < min_size:
            chosen = top[:min_size]
        elif cap is not None and len(chosen) > cap:
            chosen = top[:cap]
        return sorted(chosen)

    prof = np.stack([alpha * x[u] + (1 - alpha) * x[pick(J[u], sim_t, None)].mean(0) for u in range(n)])
    unit = prof / np.linalg.norm(prof, axis=1, keepdims=True)
    S = unit @ unit.T
    return prof, S, [pick(S[u], cos_t, max_size) for u in range(n)]


def test_lft_neighbourhoods_match_numpy_loop():
    rng = np.random.default_rng(0)
    x = (rng.random((60, 30)) < rng.uniform(0.05, 0.4, (60, 1))).astype(np.float32)
    x[np.arange(60), rng.integers(0, 30, 60)] = 1
    got = lft_neighbourhoods(sp.csr_matrix(x), 0.1, 0.5, 10, 25)
    prof, S, lists = _ref_neighbourhoods(x, 0.1, 0.5, 10, 25)
    np.testing.assert_allclose(got.profiles_NxM, prof, atol=1e-6)
    np.testing.assert_allclose(got.sim_NxN, S, atol=1e-5)
    lens = np.array([len(ell) for ell in lists])
    np.testing.assert_array_equal(got.len_N, lens)
    assert (lens == 10).any() and (lens == 25).any() and ((lens > 10) & (lens < 25)).any()
    assert got.idx_NxL.shape == (60, 25)
    for u in range(60):
        np.testing.assert_array_equal(got.idx_NxL[u, :lens[u]], lists[u])
        assert (got.idx_NxL[u, lens[u]:] == 60).all()
    # no cap (EnLFT)
    uncapped = lft_neighbourhoods(sp.csr_matrix(x), 0.1, 0.5, 10, None)
    _, _, lists_nc = _ref_neighbourhoods(x, 0.1, 0.5, 10, None)
    np.testing.assert_array_equal(uncapped.len_N, [len(ell) for ell in lists_nc])


def test_lft_chunk_equals_one_by_one():
    data = split_user_data(N, M, 3)
    cfg = make_baseline_config("lft", ft_epochs=3, ft_batch=4)
    lcfg = finetune_config(cfg)
    global_params = jax.tree.map(lambda a: a[0], vae.init_experts(jax.random.PRNGKey(0), 1, M, 4))
    rng = np.random.default_rng(1)
    users = np.array([4, 17, 30])
    lists = [np.sort(rng.choice(N, s, replace=False)) for s in (6, 19, 11)]
    keys = user_keys(0, users)
    together = finetune_chunk(data, global_params, users, lists, keys, lcfg)
    x = np.zeros((3, M), np.float32)
    idx = np.asarray(data.train_idx)[users]
    for r, row in enumerate(idx):
        x[r, row[row < M]] = 1
    logits = np.asarray(scoring.own_user_logits(together.params, jnp.asarray(x)))
    for k in range(3):
        alone = finetune_chunk(data, global_params, users[k:k + 1], lists[k:k + 1], keys[k:k + 1], lcfg)
        assert int(alone.epochs_run_K[0]) == 3
        for leaf_t, leaf_a in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(leaf_t[k], leaf_a[0], rtol=1e-4, atol=1e-5)
        own = scoring.own_user_logits(alone.params, jnp.asarray(x[k:k + 1]))
        np.testing.assert_allclose(logits[k], own[0], rtol=1e-4, atol=1e-5)
    # copies really moved away from the global model, each differently
    assert not np.allclose(together.params["dec_b"][0], together.params["dec_b"][1])


def test_select_users_is_seeded_subset():
    a, b = select_users(100, 10, 0), select_users(100, 10, 0)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 10 and (np.diff(a) > 0).all()
    np.testing.assert_array_equal(select_users(100, 0, 0), np.arange(100))
