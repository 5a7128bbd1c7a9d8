"""tall_jax.fit_seeds: seeds trained as one vmapped program equal the same seeds trained one by one
(history, stopping, best epoch, test metrics, best parameters) to float32 rounding."""
import numpy as np
import pytest

from tall_jax.configs import make_config
from tall_jax.fit import fit
from tall_jax.fit_seeds import fit_seeds

from helpers import tiny_dataset


@pytest.mark.parametrize("model", ["tall"])  # multvae shares every code path but the gate
def test_vmapped_seeds_equal_one_by_one(model):
    ds = tiny_dataset(empty_valid_users=(3,))
    groups = np.arange(ds.n_users) % 5
    extra = {} if model == "multvae" else dict(n_experts=3, gap=2)
    config = make_config("synthetic", model, latent=4, batch_size=8, max_epochs=12, patience=3,
                         lr=3e-2, **extra)
    seeds = [0, 5]
    together = fit_seeds(ds, config, seeds, groups_N=groups, progress=False)
    assert [r.config.seed for r in together] == seeds
    for seed, run in zip(seeds, together):
        alone = fit(ds, config.replace(seed=seed), groups_N=groups, progress=False)
        assert (run.best_epoch, run.epochs_run) == (alone.best_epoch, alone.epochs_run)
        for a, b in zip(run.history, alone.history):
            np.testing.assert_allclose([a["loss"], a["valid_score"], a["test_ndcg@20"]],
                                       [b["loss"], b["valid_score"], b["test_ndcg@20"]], rtol=2e-5)
            if "weights" in b:
                np.testing.assert_allclose(a["weights"]["w_max"], b["weights"]["w_max"], rtol=1e-4)
        np.testing.assert_allclose(run.test.per_user["ndcg@20"], alone.test.per_user["ndcg@20"],
                                   rtol=1e-5, atol=1e-6)
        for x, y in zip(np.asarray(run.best_params["experts"]["dec_w"]).ravel()[:50],
                        np.asarray(alone.best_params["experts"]["dec_w"]).ravel()[:50]):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    # the seeds really differ
    assert together[0].history[0]["loss"] != together[1].history[0]["loss"]


def test_bad_seeds():
    with pytest.raises(ValueError, match="distinct seeds"):
        fit_seeds(tiny_dataset(), make_config("synthetic", "multvae"), [1, 1], progress=False)


def test_run_seeds_together_writes_each_seed(tmp_path, monkeypatch):
    import json

    import dataclasses

    from tall_jax import experiment
    from tall_jax.models import resolve_run

    tiny = dict(max_epochs=2, latent=4, batch_size=8)
    plans = [resolve_run("synthetic", "multvae", seed=s, overrides=tiny) for s in (0, 1)]
    fixed = dataclasses.replace(tiny_dataset(), seed=None)  # one split for every seed (like ml-1m's)
    monkeypatch.setattr(experiment, "load_dataset", lambda *a, **k: fixed)
    outs = [tmp_path / "s0", tmp_path / "s1"]
    res = experiment.run_seeds_together(plans, out_dirs=outs, progress=False)
    assert [r["seed"] for r in res] == [0, 1] and res[0]["trained_together"] == 2
    for out in outs:
        assert json.loads((out / "results.json").read_text())["epochs_run"] == 2
        assert (out / "settings.json").exists() and (out / "per_user_test.npz").exists()
    monkeypatch.setattr(experiment, "load_dataset", lambda *a, **k: tiny_dataset())
    with pytest.raises(ValueError, match="depends on the seed"):
        experiment.run_seeds_together(plans, out_dirs=outs, progress=False)
    with pytest.raises(ValueError, match="differ only in their seed"):
        experiment.run_seeds_together([plans[0], resolve_run("synthetic", "multvae", seed=1)],
                                      out_dirs=outs, progress=False)
