"""Kill and resume: a run interrupted mid-way and resumed from the checkpoint as written ends bit for
bit like the run that was never interrupted (TALL through fit; LOCA through its local-model files)."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tall_jax import state as state_lib
from tall_jax import vae
from tall_jax.baselines import make_baseline_config, queue
from tall_jax.baselines.loca import run_loca
from tall_jax.batching import UserData
from tall_jax.configs import make_config
from tall_jax.fit import conform_history, fit

from helpers import tiny_dataset


class Killed(Exception):
    """Stands for the process dying."""


def _identical(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in zip(leaves_a, leaves_b))


def _no_seconds(history) -> str:
    """The history without wall times, as text (so NaN equals NaN)."""
    return json.dumps([{k: v for k, v in h.items() if k != "seconds"} for h in history])


def test_tall_killed_after_epoch_3_resumes_bit_identically(tmp_path):
    ds = tiny_dataset(n_users=60, n_items=40, seed=1)
    groups = np.arange(ds.n_users) % 5
    # adaptive weights from epoch 3 on (gap 2), a window of 3 loss changes, early stop with patience 2
    config = make_config("synthetic", "tall", n_experts=3, latent=4, batch_size=16, gap=2, window=3,
                         lr=2e-3, max_epochs=30, patience=2)
    run = lambda **kw: fit(ds, config, groups_N=groups, progress=False, **kw)  # noqa: E731
    straight = run()
    assert straight.epochs_run > 4 and straight.best_epoch > 2  # it stops early, after the kill

    def kill_at_3(record):
        if record["epoch"] == 3:
            raise Killed

    with pytest.raises(Killed):
        run(out_dir=tmp_path, checkpoint_every=2, on_epoch=kill_at_3)
    written = state_lib.load_checkpoint(tmp_path, straight.state)
    assert int(written.state.epoch) == 2 and len(written.history) == 2  # epoch 3 was never saved
    resumed = run(out_dir=tmp_path, checkpoint_every=2, resume=True)
    assert (resumed.best_epoch, resumed.epochs_run) == (straight.best_epoch, straight.epochs_run)
    assert _no_seconds(resumed.history) == _no_seconds(straight.history)
    for split in ("test", "valid"):
        a, b = getattr(resumed, split), getattr(straight, split)
        assert _identical(a.per_user, b.per_user) and np.array_equal(a.top_items, b.top_items)
    assert _identical(resumed.best_params, straight.best_params)
    assert _identical(jax.device_get(resumed.state), jax.device_get(straight.state))


@pytest.mark.parametrize("model, after_gap", [("tall", dict(kkt_mode="exact", weight_cap=1.5, weight_per_item=True)),
                                              ("lmoe", {})])
def test_a_variant_started_from_the_kept_gap_checkpoint_equals_it_trained_from_scratch(tmp_path, model,
                                                                                        after_gap):
    # TALL and a variant differing only after the gap (epochs 1..2 unweighted; LMoE's weights stay 1)
    # share their first 2 epochs: the variant forked from TALL's kept epoch-2 checkpoint ends bit for
    # bit like itself trained from epoch 1
    ds = tiny_dataset(n_users=60, n_items=40, seed=1)
    groups = np.arange(ds.n_users) % 5
    common = dict(n_experts=3, latent=4, batch_size=16, gap=2, window=3, lr=2e-3, max_epochs=6, patience=2)
    trunk_config = make_config("synthetic", "tall", **common)
    variant_config = make_config("synthetic", model, **common, **after_gap)
    trunk = fit(ds, trunk_config, groups_N=groups, progress=False, out_dir=tmp_path / "trunk", keep_epochs=(2,))
    kept = state_lib.load_checkpoint(state_lib.kept_dir(tmp_path / "trunk", 2), trunk.state)
    assert int(kept.state.epoch) == 2 and len(kept.history) == 2
    assert state_lib.fork_checkpoint(tmp_path / "trunk", 2, tmp_path / "fork")
    assert not state_lib.fork_checkpoint(tmp_path / "trunk", 3, tmp_path / "other")  # none kept at 3
    forked = fit(ds, variant_config, groups_N=groups, progress=False, out_dir=tmp_path / "fork", resume=True)
    straight = fit(ds, variant_config, groups_N=groups, progress=False)
    assert straight.epochs_run > 4
    assert _no_seconds(forked.history) == _no_seconds(straight.history)
    assert _no_seconds(straight.history[:2]) == _no_seconds(conform_history(trunk.history[:2], variant_config))
    assert _no_seconds(straight.history) != _no_seconds(trunk.history)  # the variant does differ after the gap
    assert (forked.best_epoch, forked.epochs_run) == (straight.best_epoch, straight.epochs_run)
    assert _identical(forked.test.per_user, straight.test.per_user)
    assert _identical(forked.best_params, straight.best_params)
    assert _identical(jax.device_get(forked.state), jax.device_get(straight.state))


def test_loca_killed_after_two_local_models_resumes_bit_identically(tmp_path, monkeypatch):
    ds = tiny_dataset(n_users=60, n_items=40, seed=2)
    data = UserData.from_dataset(ds)
    global_params = jax.tree.map(lambda a: a[0], vae.init_experts(jax.random.PRNGKey(3), 1, ds.n_items, 4))
    config = make_baseline_config("loca", n_local=4, latent=4, anchor_stride=3, loca_batch=8, patience=2,
                                  max_epochs=8, chunk=2, eval_batch=16, loca_lr=0.02)
    straight_evals, straight_info = run_loca(data, ds.train, global_params, config, progress=False)

    save = queue._save_model
    saved = []

    def save_then_die_after_two(*args):
        save(*args)
        saved.append(args[0])
        if len(saved) == 2:
            raise Killed

    monkeypatch.setattr(queue, "_save_model", save_then_die_after_two)
    with pytest.raises(Killed):
        run_loca(data, ds.train, global_params, config, progress=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(queue, "_save_model", save)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in saved)
    evals, info = run_loca(data, ds.train, global_params, config, progress=False, checkpoint_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 4
    assert info == straight_info
    assert len(set(info["epochs_run_per_model"])) > 1  # models stopped at different epochs
    assert _identical(evals, straight_evals)
