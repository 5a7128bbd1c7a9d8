"""Checkpoints: orbax steps written whole, leaves checked against the template, the last N kept,
interrupted swaps, runs written before orbax, and a sharded state written without a gather."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tall_jax import checkpoint
from tall_jax import state as state_lib
from tall_jax.configs import make_config

REPO = Path(__file__).resolve().parents[1]


def _state(n_experts=3, latent=4, n_users=10, n_items=30):
    config = make_config("synthetic", "tall", n_experts=n_experts, latent=latent)
    return state_lib.init(jax.random.PRNGKey(0), config, n_users, n_items)


def _ckpt(state, epoch=3):
    evals = {"test/ndcg@20": np.linspace(0, 1, 10).astype(np.float32),
             "test/item@1": np.arange(10, dtype=np.int32)}
    history = [{"epoch": e, "loss": 1.0 / e, "by_group": {"low": 0.1 * e}, "nan": float("nan")}
               for e in range(1, epoch + 1)]
    return state_lib.RunCheckpoint(state=state.replace(epoch=jnp.asarray(epoch, jnp.int32)),
                                   best_params=jax.device_get(state.params), best_evals=evals,
                                   history=history, best_score=0.25, best_epoch=2)


def _same(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _text(history) -> str:
    return json.dumps(history)  # NaN equals NaN as text


def test_run_checkpoint_round_trip_is_exact(tmp_path):
    state = _state()
    saved = _ckpt(state)
    folder = state_lib.save_checkpoint(tmp_path, saved)
    assert folder == tmp_path / "checkpoint" / "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["1"]  # no temporary left
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["best_evals", "best_params", "progress",
                                                                       "state"]
    got = state_lib.load_checkpoint(tmp_path, state)
    assert _same(got.state, saved.state) and _same(got.best_params, saved.best_params)
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(got.best_params))  # a host copy, as saved
    assert _same(got.best_evals, saved.best_evals)
    assert (_text(got.history), got.best_score, got.best_epoch) == (_text(saved.history), 0.25, 2)
    assert state_lib.checkpoint_progress(tmp_path) == (3, 2) and state_lib.has_checkpoint(tmp_path)
    assert json.loads((folder / "progress" / "progress.json").read_text())["epoch"] == 3
    assert state_lib.load_checkpoint(tmp_path / "elsewhere", state) is None
    assert not state_lib.has_checkpoint(tmp_path / "elsewhere")
    assert state_lib.checkpoint_progress(tmp_path / "elsewhere") is None


def test_the_last_checkpoints_are_kept_and_the_newest_is_read(tmp_path):
    state = _state()
    for epoch in (1, 2, 3):
        state_lib.save_checkpoint(tmp_path, _ckpt(state, epoch))  # default: the last one only
    assert checkpoint.steps(tmp_path / "checkpoint") == [3]
    for epoch in (4, 5, 6):
        state_lib.save_checkpoint(tmp_path, _ckpt(state, epoch), max_to_keep=2)
    assert checkpoint.steps(tmp_path / "checkpoint") == [6, 5]
    assert int(state_lib.load_checkpoint(tmp_path, state).state.epoch) == 6
    # saving the same epoch again (a finished run resumed and saved at its end) is a new step
    state_lib.save_checkpoint(tmp_path, _ckpt(state, 6))
    assert checkpoint.steps(tmp_path / "checkpoint") == [7]
    assert int(state_lib.load_checkpoint(tmp_path, state).state.epoch) == 6


def test_a_leaf_of_another_shape_fails_naming_the_leaves_and_both_shapes(tmp_path):
    state_lib.save_checkpoint(tmp_path, _ckpt(_state(n_experts=2)))
    with pytest.raises(ValueError) as err:
        state_lib.load_checkpoint(tmp_path, _state(n_experts=3))
    msg = str(err.value)
    assert "params/experts/dec_b: saved float32[2, 30], expected float32[3, 30]" in msg
    assert "opt_state" in msg  # Adam's moments too
    assert not isinstance(err.value, checkpoint.CorruptCheckpointError)  # not a file to fall back from
    state_lib.save_state(tmp_path / "s", _state(latent=5))
    with pytest.raises(ValueError, match=r"enc_w: saved float32\[3, 30, 10\], expected float32\[3, 30, 8\]"):
        state_lib.load_state(tmp_path / "s", _state(latent=4))
    with pytest.raises(ValueError, match="missing"):
        checkpoint.restore({"a": np.zeros(2), "b": np.zeros(1)}, {"a": np.zeros(2)})
    with pytest.raises(ValueError, match=r"a: saved int32\[2\], expected float32\[2\]"):
        checkpoint.restore({"a": np.zeros(2, np.float32)}, {"a": np.zeros(2, np.int32)})


def test_state_and_params_files_round_trip_and_replace_atomically(tmp_path):
    state, other = _state(), _state().replace(step=jnp.asarray(7, jnp.int32))
    state_lib.save_state(tmp_path / "s", state)
    state_lib.save_state(tmp_path / "s", other)  # replaces it (two renames, no leftover)
    assert _same(state_lib.load_state(tmp_path / "s", state), other)
    state_lib.save_params(tmp_path / "p", state.params)
    assert _same(state_lib.load_params(tmp_path / "p", state.params), jax.device_get(state.params))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "s"]


def test_an_interrupted_swap_leaves_a_complete_checkpoint(tmp_path):
    # the swap of a stand-alone folder (state files, LOCA's models, msgpack checkpoints before orbax)
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
    # the same for an orbax folder: a swap interrupted after its first rename reads the .old one
    state = _state()
    state_lib.save_state(tmp_path / "s", state)
    (tmp_path / "s").rename(tmp_path / "s.old")
    assert _same(state_lib.load_state(tmp_path / "s", state), state)
    state_lib.save_state(tmp_path / "s", state)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s")) == ["s"]


def _write_msgpack_checkpoint(run_dir, saved):
    """A run checkpoint as written before orbax: checkpoint/{state,best}.msgpack + progress.json."""
    best = {"params": saved.best_params, "evals": saved.best_evals}
    progress = {"history": saved.history, "best_score": saved.best_score, "best_epoch": saved.best_epoch}
    return checkpoint.write_folder(run_dir / "checkpoint", {
        "state.msgpack": checkpoint.to_bytes(saved.state), "best.msgpack": checkpoint.to_bytes(best),
        "progress.json": json.dumps(progress).encode()})


def _write_legacy_files(run_dir, saved):
    """A run as written before the checkpoint folder: side-by-side msgpack, JSON and npz files."""
    (run_dir / "last_state.msgpack").write_bytes(checkpoint.to_bytes(saved.state))
    (run_dir / "best_params.msgpack").write_bytes(checkpoint.to_bytes(saved.best_params))
    np.savez(run_dir / "best_evals.npz", **saved.best_evals)
    (run_dir / "last_state.json").write_text(json.dumps(
        {"history": saved.history, "best_score": saved.best_score, "best_epoch": saved.best_epoch}))


@pytest.mark.parametrize("layout", ["msgpack_folder", "legacy_files"])
def test_runs_written_before_orbax_still_resume(tmp_path, layout):
    state = _state()
    saved = _ckpt(state)
    (_write_msgpack_checkpoint if layout == "msgpack_folder" else _write_legacy_files)(tmp_path, saved)
    assert state_lib.has_checkpoint(tmp_path) and state_lib.checkpoint_progress(tmp_path) == (3, 2)
    got = state_lib.load_checkpoint(tmp_path, state)
    assert _same(got.state, saved.state) and _same(got.best_params, saved.best_params)
    assert _same(got.best_evals, saved.best_evals) and _text(got.history) == _text(saved.history)
    assert (got.best_score, got.best_epoch) == (0.25, 2)
    state_lib.save_checkpoint(tmp_path, _ckpt(state, epoch=5))  # the orbax checkpoint wins
    assert int(state_lib.load_checkpoint(tmp_path, state).state.epoch) == 5
    if layout == "msgpack_folder":  # the superseded msgpack files are gone
        assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["1"]


SHARDED_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
from jax._src import array as jax_array
from tall_jax import sharding, state as state_lib
from tall_jax.configs import make_config
assert jax.device_count() == 4, jax.devices()
run_dir = sys.argv[1]
cfg = make_config("synthetic", "tall", n_experts=8, latent=4)
mesh = sharding.make_mesh(*sharding.parse_mesh("expert=4"))
state = sharding.shard_state(state_lib.init(jax.random.PRNGKey(0), cfg, 10, 30), mesh)
state = state.replace(params=jax.tree.map(lambda a: a + 1.5, state.params))  # not the template's values
best = jax.tree.map(lambda a: np.asarray(a) * 2, jax.device_get(state.params))
gathered = []  # every gather of an array split over several devices, while saving
real_get, real_allgather, real_value = jax.device_get, multihost_utils.process_allgather, jax_array.ArrayImpl._value

def multi(tree):
    return [a.shape for a in jax.tree.leaves(tree) if isinstance(a, jax.Array) and not a.sharding.is_fully_replicated]

def spy_get(tree, *a, **k):
    gathered.extend(("device_get", s) for s in multi(tree))
    return real_get(tree, *a, **k)

def spy_allgather(tree, *a, **k):
    gathered.append(("process_allgather", multi(tree)))
    return real_allgather(tree, *a, **k)

def spy_value(self):
    if not self.sharding.is_fully_replicated:  # reading a replicated scalar (the epoch) gathers nothing
        gathered.append(("np.asarray", self.shape))
    return real_value.fget(self)

jax.device_get, multihost_utils.process_allgather = spy_get, spy_allgather
jax_array.ArrayImpl._value = property(spy_value)
ckpt = state_lib.RunCheckpoint(state=state, best_params=best, best_evals={"v": np.arange(3.0)},
                               history=[{"epoch": 1}], best_score=0.5, best_epoch=1)
state_lib.save_checkpoint(run_dir, ckpt)
state_lib.save_state(run_dir + "/state_file", state)
on_save = list(gathered)
jax.device_get, multihost_utils.process_allgather = real_get, real_allgather
jax_array.ArrayImpl._value = real_value
template = sharding.shard_state(state_lib.init(jax.random.PRNGKey(1), cfg, 10, 30), mesh)
got = state_lib.load_checkpoint(run_dir, template)
from_file = state_lib.load_state(run_dir + "/state_file", template)
pairs = list(zip(jax.tree.leaves(got.state), jax.tree.leaves(state)))
pairs += list(zip(jax.tree.leaves(from_file), jax.tree.leaves(state)))
same_sharding = [bool(a.sharding == b.sharding) for a, b in pairs]
equal = [bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in pairs]
equal += [bool(np.array_equal(a, b)) for a, b in zip(jax.tree.leaves(got.best_params), jax.tree.leaves(best))]
enc = got.state.params["experts"]["enc_w"]
print("RESULT" + json.dumps(dict(gathered=[str(g) for g in on_save], same_sharding=same_sharding, equal=equal,
    n_shards=len(enc.sharding.device_set), shard_rows=enc.addressable_shards[0].data.shape[0],
    spec=str(enc.sharding.spec))))
"""


def test_a_sharded_state_is_saved_and_restored_shard_by_shard(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][len("RESULT"):])
    assert out["gathered"] == []  # no array split over several devices was gathered while saving
    assert out["n_shards"] == 4 and out["shard_rows"] == 2 and "expert" in out["spec"]
    assert all(out["same_sharding"]) and len(out["same_sharding"]) > 20
    assert all(out["equal"])
