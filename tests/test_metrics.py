"""rank_metrics against a brute-force Python ranking, hand-worked cases, and RankingResult bookkeeping."""
from __future__ import annotations

import json
import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from tall_jax.metrics import (
    GROUP_NAMES,
    METRIC_DEFINITIONS,
    RankingResult,
    RankingSummary,
    dense_mask_from_padded,
    evaluate_scores,
    metric_names,
    rank_metrics,
    rank_metrics_padded,
)

KS = (1, 5, 10, 20)


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


def brute_force(scores, exclude, target, ks):
    """Independent per-user loop: stable sort on -score (lowest index first among ties), skip excluded."""
    out = {f"{m}@{k}": [] for k in ks for m in ("ndcg", "recall")}
    for s, ex, tg in zip(scores, exclude, target):
        order = [i for i in sorted(range(len(s)), key=lambda i: -float(s[i])) if not ex[i]]
        g = {i for i in range(len(s)) if tg[i]}
        for k in ks:
            if not g:
                out[f"ndcg@{k}"].append(math.nan)
                out[f"recall@{k}"].append(math.nan)
                continue
            hits = [p for p, i in enumerate(order[:k], start=1) if i in g]
            dcg = sum(1 / math.log2(p + 1) for p in hits)
            idcg = sum(1 / math.log2(p + 1) for p in range(1, min(len(g), k) + 1))
            out[f"ndcg@{k}"].append(dcg / idcg)
            out[f"recall@{k}"].append(len(hits) / len(g))
    return {k: np.array(v) for k, v in out.items()}


def _random_case(seed, b=16, m=40, ties=False):
    rng = np.random.default_rng(seed)
    # Few distinct values => many ties, resolved by index in both implementations.
    scores = rng.integers(0, 4, (b, m)).astype(np.float32) if ties else rng.normal(size=(b, m)).astype(np.float32)
    exclude = rng.random((b, m)) < 0.3
    target = (rng.random((b, m)) < 0.2) & ~exclude
    target[0] = False  # one user with an empty target set
    target[1] = False
    free = np.flatnonzero(~exclude[1])
    target[1, rng.choice(free, min(25, len(free)), replace=False)] = True  # |G| > K = 20 when m allows
    return scores, exclude, target


@pytest.mark.parametrize("ties", [False, True])
def test_matches_brute_force(ties):
    scores, exclude, target = _random_case(0 if not ties else 1, ties=ties)
    got = rank_metrics(jnp.asarray(scores), jnp.asarray(exclude), jnp.asarray(target), KS)
    want = brute_force(scores, exclude, target, KS)
    assert set(got) == set(metric_names(KS))
    for k in want:
        chex.assert_shape(got[k], (scores.shape[0],))
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_tie_rule_lowest_index_first():
    # All scores equal: top-K is items 0..K-1; target at item 2 is at rank 3.
    scores = jnp.zeros((1, 10))
    target = jnp.zeros((1, 10), bool).at[0, 2].set(True)
    got = rank_metrics(scores, jnp.zeros((1, 10), bool), target, (1, 5))
    assert float(got["ndcg@1"][0]) == 0.0
    np.testing.assert_allclose(float(got["ndcg@5"][0]), 1 / math.log2(4), rtol=1e-6)


def test_hand_worked():
    scores = jnp.array([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]])
    exclude = jnp.zeros((1, 8), bool)
    # one target at rank 3 -> NDCG@5 = 1/log2(4) = 0.5; recall@5 = 1; @1 both 0
    got = rank_metrics(scores, exclude, jnp.zeros((1, 8), bool).at[0, 2].set(True), (1, 5))
    np.testing.assert_allclose([float(got[k][0]) for k in ("ndcg@1", "recall@1", "ndcg@5", "recall@5")],
                               [0.0, 0.0, 0.5, 1.0], rtol=1e-6)
    # |G| = 3 > K = 2, hits at ranks 1 and 2 -> NDCG@2 = 1 (IDCG over min(K,|G|) = 2), recall@2 = 2/3
    tgt = jnp.zeros((1, 8), bool).at[0, jnp.array([0, 1, 5])].set(True)
    got = rank_metrics(scores, exclude, tgt, (2, 5))
    np.testing.assert_allclose(float(got["ndcg@2"][0]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(got["recall@2"][0]), 2 / 3, rtol=1e-6)
    # @5: hits at 1, 2 (item 5 is rank 6): DCG = 1 + 1/log2 3, IDCG = 1 + 1/log2 3 + 1/log2 4
    idcg = 1 + 1 / math.log2(3) + 0.5
    np.testing.assert_allclose(float(got["ndcg@5"][0]), (1 + 1 / math.log2(3)) / idcg, rtol=1e-6)


def test_excluded_items_never_ranked():
    # The highest-scored items are train items; they must be skipped, even if they are also "targets".
    scores = jnp.array([[10.0, 9.0, 1.0, 0.5, 0.2]])
    exclude = jnp.array([[True, True, False, False, False]])
    target = jnp.array([[True, False, True, False, False]])
    got = rank_metrics(scores, exclude, target, (1,))
    # item 2 is now rank 1 -> hit; item 0 can never be hit but counts in |G| = 2
    np.testing.assert_allclose(float(got["ndcg@1"][0]), 1.0)
    np.testing.assert_allclose(float(got["recall@1"][0]), 0.5)
    # fewer unexcluded items than K: the -inf fillers never count as hits
    got = rank_metrics(scores, exclude, target, (5,))
    np.testing.assert_allclose(float(got["recall@5"][0]), 0.5)


def test_empty_targets_nan_without_warning():
    scores = jnp.ones((2, 6))
    target = jnp.zeros((2, 6), bool).at[1, 0].set(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = rank_metrics(scores, jnp.zeros((2, 6), bool), target, KS)  # K = 20 > M = 6 too
    for k in metric_names(KS):
        assert math.isnan(float(got[k][0])), k
        assert float(got[k][1]) == 1.0, k


def test_padded_targets_and_dense_mask():
    scores, exclude, target = _random_case(2, b=6, m=30)
    m = scores.shape[1]
    p = int(target.sum(1).max()) + 2
    idx = np.full((6, p), m, np.int32)
    for u in range(6):
        items = np.flatnonzero(target[u])
        idx[u, : len(items)] = items
    mask = dense_mask_from_padded(jnp.asarray(idx), m)
    chex.assert_shape(mask, (6, m))
    np.testing.assert_array_equal(np.asarray(mask), target)
    a = rank_metrics_padded(jnp.asarray(scores), jnp.asarray(exclude), jnp.asarray(idx), KS)
    b = rank_metrics(jnp.asarray(scores), jnp.asarray(exclude), jnp.asarray(target), KS)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def _result(seed=0, n=23):
    rng = np.random.default_rng(seed)
    per_user = {"ndcg@20": rng.random(n), "recall@20": rng.random(n)}
    per_user["ndcg@20"][[3, 7]] = np.nan
    per_user["recall@20"][[3, 7]] = np.nan
    groups = np.array_split(np.argsort(rng.random(n), kind="stable"), 5)
    g = np.empty(n, np.int64)
    for i, members in enumerate(groups):
        g[members] = i
    return RankingResult(per_user, g)


def test_ranking_result_means_vs_numpy():
    res = _result()
    ov = res.overall()
    bg = res.by_group()
    for k, v in res.per_user.items():
        np.testing.assert_allclose(ov[k], np.nanmean(v))
        for gi, name in enumerate(GROUP_NAMES):
            np.testing.assert_allclose(bg[name][k], np.nanmean(v[res.groups == gi]))
    assert res.n_undefined == 2
    assert list(bg) == list(GROUP_NAMES)
    s = res.summary()
    assert sum(s.group_sizes.values()) == 23
    text = res.table(("ndcg@20", "recall@20"), reference={c: 0.1 for c in ("overall", *GROUP_NAMES)})
    lines = text.splitlines()
    assert len(lines) == 5 and lines[2].split()[0] == "paper" and lines[3].split()[0] == "diff"
    assert f"{ov['ndcg@20'] - 0.1:+.4f}" in lines[3]


def test_all_nan_group_is_nan():
    res = RankingResult({"ndcg@20": np.array([np.nan, 0.5])}, np.array([0, 1]), ("a", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bg = res.by_group()
    assert math.isnan(bg["a"]["ndcg@20"]) and bg["b"]["ndcg@20"] == 0.5


def test_bad_groups_rejected():
    with pytest.raises(ValueError, match="group ids"):
        RankingResult({"ndcg@20": np.zeros(3)}, np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="groups must be"):
        RankingResult({"ndcg@20": np.zeros(3)}, np.array([0, 1]))


def test_json_round_trip(tmp_path):
    res = _result(1)
    res.save(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())  # strict JSON: no NaN tokens
    assert d["n_undefined"] == 2 and d["definitions"] == METRIC_DEFINITIONS
    back = RankingSummary.from_json(d)
    assert back.to_json() == res.to_json()
    assert back.overall == res.overall() and back.groups == res.by_group()
    res.save_per_user(tmp_path / "r.npz")
    again = RankingResult.load_per_user(tmp_path / "r.npz")
    np.testing.assert_array_equal(again.groups, res.groups)
    for k in res.per_user:
        np.testing.assert_array_equal(again.per_user[k], res.per_user[k])
    with pytest.raises(ValueError, match="n_users"):
        RankingSummary.from_json({k: v for k, v in d.items() if k != "n_users"})


def test_nan_group_mean_is_null_in_json():
    res = RankingResult({"ndcg@20": np.array([np.nan, 0.5])}, np.array([0, 1]), ("a", "b"))
    text = json.dumps(res.to_json(), allow_nan=False)
    back = RankingSummary.from_json(json.loads(text))
    assert math.isnan(back.groups["a"]["ndcg@20"])


def test_evaluate_scores_batches():
    scores, exclude, target = _random_case(3, b=11, m=25)
    scores_j = jnp.asarray(scores)
    calls = []

    def score_fn(users_B):
        calls.append(users_B.shape)
        return scores_j[users_B]

    res = evaluate_scores(score_fn, 11, sp.csr_matrix(exclude.astype(np.float32)), target, KS, batch_size=4)
    assert calls == [(4,)] * 3  # fixed batch shape, last batch padded
    want = brute_force(scores, exclude, target, KS)
    for k in want:
        np.testing.assert_allclose(res.per_user[k], want[k], rtol=1e-6, atol=1e-7)
    assert res.n_undefined == int((target.sum(1) == 0).sum()) >= 1
