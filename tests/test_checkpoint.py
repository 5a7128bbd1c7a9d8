"""Checkpoints: one atomic folder, leaves checked against the template, interrupted swaps, old runs."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tall_jax import checkpoint
from tall_jax import state as state_lib
from tall_jax.configs import make_config


def _state(n_experts=3, latent=4, n_users=10, n_items=30):
    config = make_config("synthetic", "tall", n_experts=n_experts, latent=latent)
    return state_lib.init(jax.random.PRNGKey(0), config, n_users, n_items)


def _ckpt(state, epoch=3):
    evals = {"test/ndcg@20": np.linspace(0, 1, 10).astype(np.float32),
             "test/item@1": np.arange(10, dtype=np.int32)}
    history = [{"epoch": e, "loss": 1.0 / e, "by_group": {"low": 0.1 * e}} for e in range(1, epoch + 1)]
    return state_lib.RunCheckpoint(state=state.replace(epoch=jnp.asarray(epoch, jnp.int32)),
                                   best_params=jax.device_get(state.params), best_evals=evals,
                                   history=history, best_score=0.25, best_epoch=2)


def _same(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_run_checkpoint_round_trip_is_exact(tmp_path):
    state = _state()
    saved = _ckpt(state)
    state_lib.save_checkpoint(tmp_path, saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no .tmp / .old left behind
    got = state_lib.load_checkpoint(tmp_path, state)
    assert _same(got.state, saved.state) and _same(got.best_params, saved.best_params)
    assert _same(got.best_evals, saved.best_evals)
    assert (got.history, got.best_score, got.best_epoch) == (saved.history, 0.25, 2)
    assert state_lib.load_checkpoint(tmp_path / "elsewhere", state) is None


def test_a_leaf_of_another_shape_fails_naming_the_leaves_and_both_shapes(tmp_path):
    state_lib.save_checkpoint(tmp_path, _ckpt(_state(n_experts=2)))
    with pytest.raises(ValueError) as err:
        state_lib.load_checkpoint(tmp_path, _state(n_experts=3))
    msg = str(err.value)
    assert "params/experts/dec_b: saved float32[2, 30], expected float32[3, 30]" in msg
    assert "opt_state" in msg  # Adam's moments too
    state_lib.save_state(tmp_path / "s.msgpack", _state(latent=5))
    with pytest.raises(ValueError, match=r"enc_w: saved float32\[3, 30, 10\], expected float32\[3, 30, 8\]"):
        state_lib.load_state(tmp_path / "s.msgpack", _state(latent=4))
    with pytest.raises(ValueError, match="missing"):
        checkpoint.restore({"a": np.zeros(2), "b": np.zeros(1)}, {"a": np.zeros(2)})
    with pytest.raises(ValueError, match=r"a: saved int32\[2\], expected float32\[2\]"):
        checkpoint.restore({"a": np.zeros(2, np.float32)}, {"a": np.zeros(2, np.int32)})


def test_an_interrupted_swap_leaves_a_complete_checkpoint(tmp_path):
    folder = tmp_path / "ck"
    checkpoint.write_folder(folder, {"a": b"one"})
    checkpoint.write_folder(folder, {"a": b"two"})
    assert (folder / "a").read_bytes() == b"two" and checkpoint.complete_folder(folder) == folder
    # killed between the two renames: only the previous checkpoint (.old) and a finished .tmp exist
    folder.rename(tmp_path / "ck.old")
    (tmp_path / "ck.tmp").mkdir()
    (tmp_path / "ck.tmp" / "a").write_bytes(b"half")
    assert checkpoint.complete_folder(folder) == tmp_path / "ck.old"  # the .tmp is never trusted
    checkpoint.write_folder(folder, {"a": b"three"})  # the next save recovers
    assert (folder / "a").read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    # killed while writing the .tmp: the current checkpoint is untouched
    (tmp_path / "ck.tmp").mkdir()
    assert checkpoint.complete_folder(folder) == folder and (folder / "a").read_bytes() == b"three"


def test_a_run_written_before_the_checkpoint_folder_still_resumes(tmp_path):
    state = _state()
    saved = _ckpt(state)
    state_lib.save_state(tmp_path / "last_state.msgpack", saved.state)
    state_lib.save_params(tmp_path / "best_params.msgpack", saved.best_params)
    np.savez(tmp_path / "best_evals.npz", **saved.best_evals)
    (tmp_path / "last_state.json").write_text(json.dumps(
        {"history": saved.history, "best_score": 0.25, "best_epoch": 2}))
    got = state_lib.load_checkpoint(tmp_path, state)
    assert _same(got.state, saved.state) and _same(got.best_params, saved.best_params)
    assert _same(got.best_evals, saved.best_evals) and got.history == saved.history
    state_lib.save_checkpoint(tmp_path, _ckpt(state, epoch=5))  # the folder wins over old files
    assert int(state_lib.load_checkpoint(tmp_path, state).state.epoch) == 5
