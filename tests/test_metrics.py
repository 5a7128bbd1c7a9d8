"""rank_metrics against a brute-force Python ranking, hand-worked cases, the group-fairness summary, and
RankingResult bookkeeping."""
from __future__ import annotations

import json
import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tall_jax.metrics import METRIC_DEFINITIONS, RankingResult, RankingSummary, group_fairness
from tall_jax.protocol import GROUP_NAMES
from tall_jax.ranking import (dense_mask_from_padded, metric_names, normalise_ks, rank_metrics, rank_metrics_padded,
                              valid_test_metrics)

from helpers import brute_force, brute_force_items, random_case

KS = (1, 5, 10, 20)
valid_test_jit = jax.jit(valid_test_metrics, static_argnames=("ks", "return_items"))  # eager is slow


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


def old_rank_metrics(scores_BxM, exclude_BxM, target_BxM, ks):
    """The NDCG/Recall kernel as it was before Precision/HR/MRR/MAP were added (verbatim maths): the new
    kernel must reproduce it bit for bit."""
    n_items = scores_BxM.shape[-1]
    exclude_BxM = exclude_BxM.astype(bool)
    target_BxM = target_BxM.astype(bool)
    kmax = min(max(ks), n_items)
    scores_BxM = jnp.where(exclude_BxM, -jnp.inf, scores_BxM.astype(jnp.float32))
    _, top_BxK = jax.lax.top_k(scores_BxM, kmax)
    hit_BxK = jnp.take_along_axis(target_BxM & ~exclude_BxM, top_BxK, axis=-1).astype(jnp.float32)
    discount_K = 1.0 / jnp.log2(jnp.arange(2, kmax + 2, dtype=jnp.float32))
    dcg_BxK = jnp.cumsum(hit_BxK * discount_K[None, :], axis=-1)
    nhit_BxK = jnp.cumsum(hit_BxK, axis=-1)
    idcg_table = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(discount_K)])
    n_target_B = target_BxM.sum(-1)
    defined_B = n_target_B > 0
    safe_n_B = jnp.where(defined_B, n_target_B, 1).astype(jnp.float32)
    out = {}
    for k in ks:
        kk = min(k, kmax)
        idcg_B = idcg_table[jnp.clip(jnp.minimum(n_target_B, kk), 1, kmax)]
        out[f"ndcg@{k}"] = jnp.where(defined_B, dcg_BxK[:, kk - 1] / idcg_B, jnp.nan)
        out[f"recall@{k}"] = jnp.where(defined_B, nhit_BxK[:, kk - 1] / safe_n_B, jnp.nan)
    return out


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("ks", [KS, (3, 10, 50)])
def test_matches_brute_force(ties, ks):
    scores, exclude, target = random_case(0 if not ties else 1, ties=ties)
    pop = np.random.default_rng(5).random(scores.shape[1]).astype(np.float32)
    got = rank_metrics(jnp.asarray(scores), jnp.asarray(exclude), jnp.asarray(target), ks,
                       jnp.asarray(pop), return_items=True)
    want = brute_force(scores, exclude, target, ks, pop)
    kmax = min(max(ks), scores.shape[1])  # K = 50 > M = 40: every candidate is ranked
    items = [f"item@{r}" for r in range(1, kmax + 1)]
    assert set(got) == set(metric_names(ks, popularity=True)) | set(items)
    for k in want:
        chex.assert_shape(got[k], (scores.shape[0],))
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    np.testing.assert_array_equal(np.stack([np.asarray(got[i]) for i in items], 1),
                                  brute_force_items(scores, exclude, kmax))


@pytest.mark.parametrize("ties", [False, True])
def test_ndcg_recall_bit_identical_to_previous_kernel(ties):
    scores, exclude, target = random_case(4, b=32, m=60, ties=ties)
    args = (jnp.asarray(scores), jnp.asarray(exclude), jnp.asarray(target))
    old = jax.jit(old_rank_metrics, static_argnames=("ks",))(*args, ks=KS)
    new = rank_metrics(*args, KS, jnp.ones(60), return_items=True)
    both = valid_test_jit(args[0], args[1], jnp.zeros_like(args[2]), args[2], KS)
    for k in old:
        np.testing.assert_array_equal(np.asarray(new[k]), np.asarray(old[k]), err_msg=k)
        np.testing.assert_array_equal(np.asarray(both[f"test/{k}"]), np.asarray(old[k]), err_msg=k)


def test_valid_test_metrics_one_ranking_for_both():
    scores, exclude, target = random_case(6, b=12, m=30)
    rng = np.random.default_rng(6)
    valid = (rng.random(target.shape) < 0.1) & ~exclude & ~target
    args = [jnp.asarray(a) for a in (scores, exclude.astype(np.float32), valid.astype(np.float32),
                                     target.astype(np.float32))]
    got = valid_test_jit(*args, ks=(20, 5, 5, 1))  # normalised to (1, 5, 20)
    for prefix, tgt in (("valid", valid), ("test", target)):
        want = rank_metrics(jnp.asarray(scores), jnp.asarray(exclude), jnp.asarray(tgt), (1, 5, 20),
                            return_items=True)
        assert {k[len(prefix) + 1:] for k in got if k.startswith(prefix + "/")} == set(want)
        for k, v in want.items():
            np.testing.assert_array_equal(np.asarray(got[f"{prefix}/{k}"]), np.asarray(v), err_msg=k)
    assert not any(k.startswith(("valid/item", "test/item"))
                   for k in valid_test_jit(*args, ks=(5,), return_items=False))
    assert normalise_ks([20, 10, 50, 10]) == (10, 20, 50)
    with pytest.raises(ValueError, match="positive"):
        normalise_ks((0, 5))


def test_new_metrics_hand_worked():
    # ranking 0 > 1 > ... > 7; targets {1, 3, 7}: hits at ranks 2 and 4 within the top 5
    scores = jnp.array([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]])
    tgt = jnp.zeros((1, 8), bool).at[0, jnp.array([1, 3, 7])].set(True)
    pop = jnp.arange(8, dtype=jnp.float32) / 10
    got = {k: float(v[0]) for k, v in rank_metrics(scores, jnp.zeros((1, 8), bool), tgt, (1, 2, 5),
                                                   pop).items()}
    assert got["precision@1"] == 0.0 and got["hr@1"] == 0.0 and got["mrr@1"] == 0.0 and got["map@1"] == 0.0
    np.testing.assert_allclose([got["precision@2"], got["hr@2"], got["mrr@2"], got["map@2"]],
                               [0.5, 1.0, 0.5, (1 / 2) / 2], rtol=1e-6)
    # @5: P = 2/5; MRR = 1/2; AP = (1/2 + 2/4) / min(5, 3) = 1/3
    np.testing.assert_allclose([got["precision@5"], got["hr@5"], got["mrr@5"], got["map@5"]],
                               [0.4, 1.0, 0.5, 1 / 3], rtol=1e-6)
    # popularity@5 = mean(0, .1, .2, .3, .4) = .2
    np.testing.assert_allclose([got["popularity@1"], got["popularity@5"]], [0.0, 0.2], atol=1e-7)


def test_item_columns_become_top_items(tmp_path):
    per_user = {"ndcg@2": np.array([0.5, np.nan, 1.0]), "item@1": np.array([3, 1, 0], np.int32),
                "item@2": np.array([0, -1, 2.0], np.float32)}  # float: as reloaded from an npz
    res = RankingResult(per_user, np.array([0, 1, 4]), n_items=4)
    assert set(res.per_user) == {"ndcg@2"} and res.ks == (2,)
    np.testing.assert_array_equal(res.top_items, [[3, 0], [1, -1], [0, 2]])
    assert res.overall()["coverage@2"] == 1.0 and res.by_group()["med-low"]["coverage@2"] == 0.25
    assert math.isnan(res.by_group()["medium"]["coverage@2"])  # an empty group
    res.save_per_user(tmp_path / "u.npz")
    back = RankingResult.load_per_user(tmp_path / "u.npz")
    np.testing.assert_array_equal(back.top_items, res.top_items)
    assert back.n_items == 4 and back.overall() == pytest.approx(res.overall(), nan_ok=True)
    with pytest.raises(ValueError, match="ranks 1..R"):
        RankingResult({"item@2": np.zeros(3)})


def test_group_fairness_hand_worked():
    groups = {"low": {"ndcg@20": 0.2, "recall@20": 0.0, "hr@20": np.nan},
              "med": {"ndcg@20": 0.3, "recall@20": 0.5, "hr@20": 0.5},
              "high": {"ndcg@20": 0.4, "recall@20": 0.0, "hr@20": 0.7}}
    f = group_fairness(groups)
    # ndcg: max - min = 0.4 - 0.2; low/high = 0.5; std (ddof 0) of (.2, .3, .4) = sqrt(2/3) * 0.1
    assert f["ndcg@20"]["max_minus_min"] == pytest.approx(0.2)
    assert f["ndcg@20"]["low_over_high"] == pytest.approx(0.5)
    assert f["ndcg@20"]["std"] == pytest.approx(math.sqrt(((0.1) ** 2 + 0 + 0.1 ** 2) / 3))
    assert math.isnan(f["recall@20"]["low_over_high"])  # high = 0
    assert f["recall@20"]["max_minus_min"] == 0.5
    # a NaN group is left out of the spread; low/high needs the low group
    assert f["hr@20"]["max_minus_min"] == pytest.approx(0.2) and f["hr@20"]["std"] == pytest.approx(0.1)
    assert math.isnan(f["hr@20"]["low_over_high"])
    assert group_fairness({}) == {}
    # on a RankingResult: per-user values -> group means -> spread
    res = RankingResult({"ndcg@20": np.array([0.1, 0.3, 0.4, 0.6, 0.2, 0.2, 1.0, 1.0, 0.0, 0.8])},
                        np.repeat(np.arange(5), 2))
    # group means .2, .5, .2, 1.0, .4
    fr = res.fairness()["ndcg@20"]
    assert fr["max_minus_min"] == pytest.approx(0.8) and fr["low_over_high"] == pytest.approx(0.5)
    assert fr["std"] == pytest.approx(np.std([0.2, 0.5, 0.2, 1.0, 0.4]))
    d = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert d["fairness"]["ndcg@20"]["max_minus_min"] == pytest.approx(0.8)
    assert "ddof=0" in d["definitions"]["fairness"]
    text = res.table(("ndcg@20",), reference={"overall": 0.5, "low": 0.2, "med-low": 0.4, "medium": 0.4,
                                              "med-high": 0.4, "high": 0.4})
    header, ours, paper = (line.split() for line in text.splitlines()[:3])
    assert header[-3:] == ["max-min", "low/high", "std"]
    assert ours[-3:] == ["0.8000", "0.500", f"{fr['std']:.4f}"]
    assert paper[-3:-1] == ["0.2000", "0.500"]  # the reference's own spread
    assert "max-min" not in res.table(fairness=False)
    assert "max-min" not in RankingResult({"ndcg@20": np.ones(2)}).table()  # no groups, no spread


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
        # one target at rank 1 of 6 ranked items: every metric is 1 but precision@K = 1/K
        want = 1.0 / int(k.split("@")[1]) if k.startswith("precision") else 1.0
        assert float(got[k][1]) == pytest.approx(want), k


def test_padded_targets_and_dense_mask():
    scores, exclude, target = random_case(2, b=6, m=30)
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
    assert back.to_json() == res.to_json()  # the fairness entry is recomputed from the group means
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


def test_eval_step_ranks_at_config_ks_and_keeps_early_stopping_cutoffs():
    """steps.evaluate ranks at the faithful cut-offs plus a config's ``ks``; the ranked items come out
    per user and become ``top_items``."""
    import sys
    from pathlib import Path

    from tall_jax import steps
    from tall_jax.batching import UserData
    from tall_jax.configs import make_config
    from tall_jax.state import init

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import tiny_dataset

    ds = tiny_dataset(n_users=12, n_items=30)
    config = make_config("synthetic", "multvae", latent=4, batch_size=8, ks=(3, 10))
    state = init(jax.random.PRNGKey(0), config, ds.n_users, ds.n_items)
    out = jax.device_get(steps.evaluate(state.params, UserData.from_dataset(ds), config))
    assert steps.KS == (1, 5, 10, 20)  # early stopping: mean validation NDCG at these
    for k in (1, 3, 5, 10, 20):
        assert f"valid/ndcg@{k}" in out and f"test/map@{k}" in out
    res = RankingResult({k[5:]: v for k, v in out.items() if k.startswith("test/")})
    assert res.top_items.shape == (12, 20) and res.ks == (1, 3, 5, 10, 20)
