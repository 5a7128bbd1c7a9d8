import numpy as np

from tall_jax import state as state_lib
from tall_jax.configs import make_config
from tall_jax.fit import fit

from helpers import tiny_dataset


def config(**kw):
    return make_config("synthetic", "tall", n_experts=2, latent=4, batch_size=8, gap=1, **kw)


def test_early_stopping_follows_the_spec_rule():
    ds = tiny_dataset()
    result = fit(ds, config(max_epochs=40, patience=2, lr=3e-2), progress=False)
    scores = [h["valid_score"] for h in result.history]
    # replay spec §3: first epoch improves; later only strictly better ones; stop after `patience`
    best, best_epoch, since = -np.inf, 0, 0
    for epoch, s in enumerate(scores, start=1):
        if epoch == 1 or s > best:
            best, best_epoch, since = s, epoch, 0
        else:
            since += 1
    assert result.best_epoch == best_epoch
    assert result.epochs_run == len(scores)
    assert since == 2 or result.epochs_run == 40
    assert np.isclose(np.nanmean(result.test.per_user["ndcg@20"]),
                      result.history[best_epoch - 1]["test_ndcg@20"])


def test_resume_continues_where_the_checkpoint_left(tmp_path):
    ds = tiny_dataset()
    groups = np.arange(ds.n_users) % 5
    first = fit(ds, config(max_epochs=3, patience=50), groups_N=groups, out_dir=tmp_path,
                progress=False, checkpoint_every=1)
    assert first.epochs_run == 3 and state_lib.checkpoint_progress(tmp_path) == (3, first.best_epoch)
    resumed = fit(ds, config(max_epochs=5, patience=50), groups_N=groups, out_dir=tmp_path,
                  progress=False, resume=True)
    straight = fit(ds, config(max_epochs=5, patience=50), groups_N=groups, progress=False)
    assert resumed.epochs_run == 5 and len(resumed.history) == 5
    np.testing.assert_allclose([h["loss"] for h in resumed.history],
                               [h["loss"] for h in straight.history], rtol=1e-5)
    assert state_lib.checkpoint_progress(tmp_path) == (5, resumed.best_epoch)
    assert set(resumed.history[-1]["valid_ndcg@20_by_group"]) == {"low", "med-low", "medium",
                                                                  "med-high", "high"}
