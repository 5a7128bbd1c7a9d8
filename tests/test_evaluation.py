"""The one evaluator (tall_jax.evaluation) against brute-force rankings, its fixed batch shape and
padding, the catalogue metrics, and the baselines' scorers against direct computations."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from tall_jax import evaluation, vae
from tall_jax.baselines import scoring
from tall_jax.batching import UserData, padded_rows
from tall_jax.metrics import coverage, popularity_per_user
from tall_jax.protocol import GROUP_NAMES
from tall_jax.ranking import item_popularity, metric_names, valid_test_metrics

from helpers import brute_force, brute_force_items, random_case, tiny_user_data

KS = (1, 5, 10, 20)


def table_scores(scores_NxM, batch):
    """A scorer that looks the users' scores up in a table (padding users get zeros)."""
    return scores_NxM.at[batch.users].get(mode="fill", fill_value=0.0), {}


def _data(exclude, target):
    csr = lambda a: sp.csr_matrix(np.asarray(a, np.float32))  # noqa: E731
    n, m = exclude.shape
    return UserData(jnp.asarray(padded_rows(csr(exclude))), jnp.asarray(padded_rows(csr(target))),
                    jnp.asarray(padded_rows(csr(target))), n, m)


def test_evaluate_batches_with_one_compilation_and_matches_brute_force():
    scores, exclude, target = random_case(3, b=11, m=25)
    data = _data(exclude, target)
    order = evaluation.user_batches(11, 4)
    assert order.shape == (3, 4) and (order[-1, -1:] == 11).all()  # the tail is padded with user N
    before = evaluation.evaluate_batch._cache_size()
    out = jax.device_get(evaluation.evaluate(table_scores, jnp.asarray(scores), data, batch_size=4, ks=KS))
    assert evaluation.evaluate_batch._cache_size() - before == 1
    res = evaluation.ranking_results(out)["test"]
    assert set(res.per_user) == set(metric_names(KS)) and res.top_items.shape == (11, 20)
    want = brute_force(scores, exclude, target, KS)
    for k in want:
        np.testing.assert_allclose(res.per_user[k], want[k], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(out[f"valid/{k}"], out[f"test/{k}"])
    assert res.n_undefined == int((target.sum(1) == 0).sum()) >= 1
    # a subset of users, in the given order
    sub = jax.device_get(evaluation.evaluate(table_scores, jnp.asarray(scores), data, batch_size=4,
                                             users=np.array([7, 2, 9]), ks=KS))
    np.testing.assert_array_equal(sub["test/ndcg@10"], out["test/ndcg@10"][[7, 2, 9]])


def test_catalogue_metrics_vs_numpy():
    scores, exclude, target = random_case(7, b=10, m=30)
    exclude[9, :] = True  # a user without any candidate: no item, popularity NaN
    exclude[9, :2] = False  # ... except two: only two slots filled
    target &= ~exclude
    train = exclude.astype(np.float32)
    pop = item_popularity(sp.csr_matrix(train))
    np.testing.assert_allclose(pop, train.sum(0) / 10, rtol=1e-6)
    np.testing.assert_allclose(item_popularity(train), pop)
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    out = evaluation.evaluate(table_scores, jnp.asarray(scores), _data(exclude, target), batch_size=4,
                              ks=(1, 5, 10), popularity_M=pop)
    res = evaluation.ranking_results(out, groups, n_items=30)["test"]
    top = brute_force_items(scores, exclude, 10)
    np.testing.assert_array_equal(res.top_items, top)
    ov, bg = res.overall(), res.by_group()
    for k in (1, 5, 10):
        rec = {i for row in top[:, :k] for i in row if i >= 0}
        assert ov[f"coverage@{k}"] == pytest.approx(len(rec) / 30)
        for g, name in enumerate(GROUP_NAMES):
            rec_g = {i for row in top[groups == g, :k] for i in row if i >= 0}
            assert bg[name][f"coverage@{k}"] == pytest.approx(len(rec_g) / 30)
        # average popularity@K: mean over users of the mean popularity of their top K
        want = [np.mean(pop[[i for i in row[:k] if i >= 0]]) for row in top]
        np.testing.assert_allclose(res.per_user[f"popularity@{k}"], want, rtol=1e-6)
        assert ov[f"popularity@{k}"] == pytest.approx(np.mean(want), rel=1e-6)
    assert res.per_user["popularity@10"][9] == pytest.approx(np.mean(pop[:2]))
    # the host path (ranked items from a path without the popularity vector) agrees with the kernel
    plain = dataclasses.replace(res, per_user={k: v for k, v in res.per_user.items()
                                               if not k.startswith("popularity")}, n_items=None)
    assert "coverage@5" not in plain.overall()  # n_items unknown
    cat = plain.with_catalogue(sp.csr_matrix(train))
    for k in (1, 5, 10):
        np.testing.assert_allclose(cat.per_user[f"popularity@{k}"], res.per_user[f"popularity@{k}"], rtol=1e-6)
    assert cat.overall() == pytest.approx(res.overall(), nan_ok=True)
    assert coverage(np.array([[0, 1], [1, -1]]), 4, (1, 2)) == {"coverage@1": 0.5, "coverage@2": 0.5}
    np.testing.assert_allclose(popularity_per_user(np.array([[0, 1], [-1, -1]]), np.array([0.2, 0.4]),
                                                   (2,))["popularity@2"], [0.3, np.nan])


def _dense(idx, m):
    idx = np.asarray(idx)[:-1]
    out = np.zeros((idx.shape[0], m), np.float32)
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    keep = idx.ravel() < m
    out[rows[keep], idx.ravel()[keep]] = 1
    return out


def _whole(data, logits_NxM):
    """valid_test_metrics of all users at once (no batches, no padding)."""
    m = data.n_items
    return jax.device_get(valid_test_metrics(jnp.asarray(logits_NxM), jnp.asarray(_dense(data.train_idx, m)),
                                             jnp.asarray(_dense(data.valid_idx, m)),
                                             jnp.asarray(_dense(data.test_idx, m))))


def test_baseline_scorers_equal_direct_scores_of_all_users():
    data = tiny_user_data(n_users=13, n_items=30)
    n, m = data.n_users, data.n_items
    x = jnp.asarray(_dense(data.train_idx, m))
    local_K = vae.init_experts(jax.random.PRNGKey(1), 3, m, 4)
    glob = jax.tree.map(lambda a: a[0], vae.init_experts(jax.random.PRNGKey(2), 1, m, 4))
    rng = np.random.default_rng(0)
    kernel = np.where(rng.random((n, 3)) < 0.5, rng.random((n, 3)), 0.0).astype(np.float32)
    kernel[:3] = 0.0  # uncovered users: the global model's scores
    per_model = np.stack([np.asarray(scoring.eval_logits(jax.tree.map(lambda a: a[k], local_K), x))
                          for k in range(3)])
    mix = np.einsum("nk,knm->nm", kernel, per_model) / np.maximum(kernel.sum(1, keepdims=True), 1e-30)
    want_loca = np.where(kernel.sum(1, keepdims=True) > 0, mix, np.asarray(scoring.eval_logits(glob, x)))
    got = scoring.evaluate_users(scoring.loca_scores, {"local": local_K, "kernel_NxK": jnp.asarray(kernel),
                                                       "global": glob}, data, np.arange(n), 4)
    want = _whole(data, want_loca)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # LFT: copy k scores its own user only
    users = np.array([5, 0, 11])
    got = scoring.evaluate_users(scoring.own_user_scores, local_K, data, users, len(users))
    for r, u in enumerate(users):
        want = _whole(data, np.broadcast_to(per_model[r, u], (n, m)))
        for k in ("valid/ndcg@20", "test/recall@10", "test/item@3"):
            np.testing.assert_allclose(got[k][r], want[k][u], rtol=1e-5, err_msg=k)


def test_mixture_evaluation_reads_only_the_scoring_fields():
    """steps.evaluate compiles for config.for_scoring(); the full config (every training-only field
    changed) gives the same per-user metrics, so LMoE / TALL / ... share one compiled evaluation."""
    from tall_jax import state as state_lib
    from tall_jax import steps
    from tall_jax.configs import make_config
    data = tiny_user_data(n_users=12, n_items=30)
    for model, gate in (("tall", "loss"), ("moe", "mlp"), ("multvae", "none"), ("tall", "route")):
        extra = {} if model == "multvae" else dict(n_experts=3)
        cfg = make_config("synthetic", model, latent=4, batch_size=8, gate_hidden=5, gate=gate,
                          dropout=0.5, noise_std=1.0, lr=0.5, reg=0.3, alpha=2.0, gap=0, kkt_mode="exact",
                          weight_cap=3.0, kl_reduction="per_user", anneal_cap=0.9, seed=7, **extra)
        params = state_lib.init(jax.random.PRNGKey(1), cfg, data.n_users, data.n_items).params
        full = evaluation.evaluate(steps.MixtureScorer(cfg), params, data, batch_size=8)
        shared = steps.evaluate(params, data, cfg)
        assert set(full) == set(shared)
        for k in full:
            np.testing.assert_array_equal(np.asarray(full[k]), np.asarray(shared[k]), err_msg=f"{model} {k}")
    assert (make_config("ml-1m", "lmoe", n_experts=10).for_scoring()
            == make_config("ml-1m", "tall", n_experts=10).for_scoring())
