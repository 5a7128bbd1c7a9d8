"""Mainstream scores and groups (spec §2) against a dense brute-force reference."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from tall_jax import protocol
from tall_jax.datasets.base import Dataset


def _random_binary(n, m, density, seed):
    rng = np.random.default_rng(seed)
    dense = (rng.random((n, m)) < density).astype(np.float32)
    dense[0] = 0.0  # a user with no train items
    return sp.csr_matrix(dense), dense


def _brute_ms(dense):
    n = dense.shape[0]
    sets = [set(np.flatnonzero(r)) for r in dense]
    ms = np.zeros(n)
    for u in range(n):
        tot = 0.0
        for v in range(n):
            if v == u:
                continue
            inter = len(sets[u] & sets[v])
            tot += inter / (len(sets[u]) + len(sets[v]) - inter + 1e-7)
        ms[u] = tot / (n - 1)
    return ms


@pytest.mark.parametrize("block_size", [1, 7, 2048])
def test_mainstream_scores_match_brute_force(block_size):
    csr, dense = _random_binary(37, 23, 0.25, seed=block_size)
    ms = protocol.mainstream_scores(csr, block_size=block_size)
    assert ms.dtype == np.float64 and ms.shape == (37,)
    np.testing.assert_allclose(ms, _brute_ms(dense), rtol=1e-12, atol=0)
    assert ms[0] == 0.0


def test_mainstream_scores_hand_worked():
    # T_0={0,1}, T_1={1,2}, T_2={0,1,2}: J01=1/3, J02=2/3, J12=2/3 (up to the 1e-7).
    x = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=np.float32))
    e = 1e-7
    j01, j02, j12 = 1 / (3 + e), 2 / (3 + e), 2 / (3 + e)
    expected = np.array([j01 + j02, j01 + j12, j02 + j12]) / 2
    np.testing.assert_allclose(protocol.mainstream_scores(x), expected, rtol=1e-15)


def test_user_groups_sizes_and_order():
    rng = np.random.default_rng(0)
    ms = rng.random(23)
    ms[5] = ms[6]  # a tie: the stable sort keeps id order
    groups = protocol.user_groups(ms)
    assert groups.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(groups), [5, 5, 5, 4, 4])
    order = np.argsort(ms, kind="stable")
    np.testing.assert_array_equal(groups[order], np.repeat(np.arange(5), [5, 5, 5, 4, 4]))
    for g in range(4):  # every user of a lower group has an MS <= every user of the next one
        assert ms[groups == g].max() <= ms[groups == g + 1].min()
    assert protocol.GROUP_NAMES == ("low", "med-low", "medium", "med-high", "high")


def test_user_groups_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        protocol.user_groups(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="n_groups"):
        protocol.user_groups(np.zeros(3), n_groups=4)


def _dataset(train, cache_dir):
    empty = sp.csr_matrix(train.shape, dtype=np.float32)
    return Dataset("toy", "random", 0, train, empty, empty, {}, cache_dir)


def test_dataset_groups_caches_and_detects_stale(tmp_path: Path):
    csr, dense = _random_binary(30, 12, 0.3, seed=1)
    ds = _dataset(csr, tmp_path / "split")
    ms, groups = protocol.dataset_groups(ds)
    np.testing.assert_allclose(ms, _brute_ms(dense), rtol=1e-12)
    np.testing.assert_array_equal(groups, protocol.user_groups(ms))
    cache = tmp_path / "split" / "mainstream_groups.npz"
    assert cache.is_file()
    ms2, _ = protocol.dataset_groups(ds)
    np.testing.assert_array_equal(ms, ms2)
    # Another train matrix in the same folder must not reuse the stale file.
    other, dense_other = _random_binary(30, 12, 0.3, seed=2)
    ms3, _ = protocol.dataset_groups(dataclasses.replace(ds, train=other))
    np.testing.assert_allclose(ms3, _brute_ms(dense_other), rtol=1e-12)
    # Without a cache dir nothing is written.
    ms4, _ = protocol.dataset_groups(_dataset(csr, None))
    np.testing.assert_array_equal(ms, ms4)


def test_protocol_imports_only_datasets_base():
    tree = ast.parse(Path(protocol.__file__).read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    datasets_mods = {m for m in mods if m.startswith("tall_jax.datasets")}
    assert datasets_mods == {"tall_jax.datasets.base"}
