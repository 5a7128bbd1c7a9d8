"""Tests for tall_jax.two_tower.metrics against scikit-learn and hand-worked cases."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from tall_jax.two_tower.metrics import average_precision, average_precision_by_key, gain_table, relative_gain


@pytest.mark.parametrize("seed", range(5))
def test_ap_equals_sklearn_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < 0.2
    s = np.round(rng.random(n) + 0.5 * y, 1)  # rounding makes many ties
    assert len(np.unique(s)) < n / 5
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_ap_hand_case_and_degenerate_cases():
    # ranks: 0.9 (+), 0.8 (-), 0.7 (+): AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
    # a tie across a positive and a negative is one threshold: P = 1/2 at R = 1
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert np.isnan(average_precision([0, 0, 0], [0.1, 0.2, 0.3]))
    assert np.isnan(average_precision([], []))
    assert average_precision([1, 1], [0.1, 0.9]) == 1.0
    with pytest.raises(ValueError, match="labels but"):
        average_precision([1, 0], [0.5])


def test_ap_by_key_matches_per_key_sklearn_and_counts_undefined():
    rng = np.random.default_rng(9)
    n = 400
    key = rng.integers(0, 4, n)
    y = rng.random(n) < 0.3
    y[key == 3] = False  # key 3: no positives -> NaN
    s = rng.random(n)
    res = average_precision_by_key(y, s, key, 5)  # key 4: empty -> NaN
    for k in range(3):
        sel = key == k
        assert res["ap"][k] == pytest.approx(average_precision_score(y[sel], s[sel]))
        assert res["n_pos"][k] == y[sel].sum() and res["n"][k] == sel.sum()
    assert np.isnan(res["ap"][3]) and np.isnan(res["ap"][4]) and res["n_undefined"] == 2


def test_relative_gain_and_gain_table_average_days_then_seeds():
    assert relative_gain(0.6, 0.5) == pytest.approx(20.0)
    assert np.isnan(relative_gain(0.6, 0.0))
    ref = np.full((2, 3, 2), 0.5)  # seeds x days x cells
    new = ref.copy()
    new[0, :, 0] = [0.55, 0.6, 0.65]  # gains 10, 20, 30 -> 20
    new[1, :, 0] = [0.5, 0.5, 0.5]  # gain 0
    table = gain_table({"mtl": new, "base": ref}, [("mtl", "base")])["mtl vs base"]
    np.testing.assert_allclose(table["per_seed"][:, 0], [20.0, 0.0])
    assert table["mean"][0] == pytest.approx(10.0)
    assert table["std"][0] == pytest.approx(np.std([20.0, 0.0], ddof=1))
    assert table["mean"][1] == 0.0
