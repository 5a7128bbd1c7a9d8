"""K local MultVAEs trained together (vmapped) equal each trained alone (spec §6.2.4)."""
from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np

from tall_jax import vae
from tall_jax.baselines import local, queue, scoring

from helpers import split_user_data

N, M, D = 40, 24, 4


def tiny_data(seed: int = 0):
    return split_user_data(N, M, seed)


def _train(data, params_K, rng_K, lists, weights, cands, cfg):
    sets = local.LocalSets.from_lists(lists, N, weights, multiple=cfg.batch_size)
    cand_sets = local.LocalSets.from_lists(cands, N, multiple=cfg.eval_batch)
    state = local.init(rng_K, cfg, params_K)
    return local.train_local(state, data, sets, cfg, cand_sets)


def test_vmapped_local_training_equals_training_each_alone():
    data = tiny_data()
    rng = np.random.default_rng(5)
    sizes = [5, 13, 29]  # different neighbourhoods: 2, 4 and 8 batches of 4 (last ones partial)
    lists = [np.sort(rng.choice(N, s, replace=False)) for s in sizes]
    weights = [rng.uniform(0.1, 0.75, s).astype(np.float32) for s in sizes]
    cands = [np.sort(rng.choice(N, s, replace=False)) for s in (7, 20, 35)]
    cfg = local.LocalTrainConfig(batch_size=4, lr=0.05, weight_decay=1e-3, patience=2, max_epochs=25,
                                 eval_batch=8)
    params = vae.init_experts(jax.random.PRNGKey(0), 3, M, D)
    rng_K = jax.random.split(jax.random.PRNGKey(1), 3)
    together = _train(data, params, rng_K, lists, weights, cands, cfg)
    stopped = np.asarray(together.epochs_run_K)
    assert len(set(stopped.tolist())) > 1, f"models should stop at different epochs, got {stopped}"
    assert (stopped < cfg.max_epochs).all()
    for k in range(3):
        one = jax.tree.map(lambda a: a[k:k + 1], params)
        alone = _train(data, one, rng_K[k:k + 1], lists[k:k + 1], weights[k:k + 1], cands[k:k + 1], cfg)
        assert int(alone.epochs_run_K[0]) == stopped[k]
        assert int(alone.best_epoch_K[0]) == int(together.best_epoch_K[k])
        np.testing.assert_allclose(alone.best_score_K[0], together.best_score_K[k], rtol=1e-5)
        for leaf_t, leaf_a in zip(jax.tree.leaves(together.best_params), jax.tree.leaves(alone.best_params)):
            np.testing.assert_allclose(leaf_t[k], leaf_a[0], rtol=1e-4, atol=1e-5)
        for leaf_t, leaf_a in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(leaf_t[k], leaf_a[0], rtol=1e-4, atol=1e-5)
    # the best state is the state of the best epoch, not the final one
    assert not np.allclose(together.best_params["dec_b"], together.params["dec_b"])


def test_one_local_step_matches_a_hand_written_weighted_loss():
    data = tiny_data(1)
    users = np.array([3, 8, 11])
    w = np.array([0.5, 0.2, 0.7], np.float32)
    cfg = local.LocalTrainConfig(batch_size=4, lr=1e-2, weight_decay=0.0, noise_std=0.0)
    params = vae.init_experts(jax.random.PRNGKey(2), 1, M, D)
    state = local.init(jax.random.split(jax.random.PRNGKey(3), 1), cfg, params)
    sets = local.LocalSets.from_lists([users], N, [w], multiple=4)
    state, _ = local.train_epoch(state, data, sets, cfg)
    # reference: one Adam step on mean over the 3 real users of w_u * CE_u (unnormalised, beta 0)
    x = np.zeros((3, M), np.float32)
    idx = np.asarray(data.train_idx)[users]
    for r, row in enumerate(idx):
        x[r, row[row < M]] = 1

    def loss(p):
        logits, _ = vae.expert_forward(p, vae.normalise(jnp.asarray(x)), jax.random.PRNGKey(0),
                                       train=False, noise_std=0.0)
        ce = -jnp.sum(x * jax.nn.log_softmax(logits, -1), -1)
        return jnp.sum(w * ce) / 3

    p0 = jax.tree.map(lambda a: a[0], params)
    g = jax.grad(loss)(p0)
    want = jax.tree.map(lambda a, b: a - 1e-2 * b / (jnp.abs(b) + 1e-8), p0, g)  # Adam's first step
    for name in ("enc_w", "dec_b"):
        np.testing.assert_allclose(state.params[name][0], want[name], atol=2e-5)


def test_mixture_logits_is_weighted_logit_average():
    data = tiny_data(2)
    params = vae.init_experts(jax.random.PRNGKey(4), 3, M, D)
    x = jnp.asarray(np.random.default_rng(0).random((5, M)) < 0.3, jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).random((5, 3)), jnp.float32)
    got = scoring.mixture_logits(params, x, w)
    per = [scoring.eval_logits(jax.tree.map(lambda a: a[k], params), x) for k in range(3)]
    want = sum(w[:, k:k + 1] * per[k] for k in range(3)) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    del data


def _queue_problem(n_models: int, seed: int = 7):
    data = tiny_data()
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 35, n_models)
    lists = [np.sort(rng.choice(N, s, replace=False)) for s in sizes]
    weights = [rng.uniform(0.1, 0.75, len(ell)).astype(np.float32) for ell in lists]
    cands = [np.sort(rng.choice(N, rng.integers(6, 30), replace=False)) for _ in lists]
    params = vae.init_experts(jax.random.PRNGKey(0), n_models, M, D)
    rng_K = jax.random.split(jax.random.PRNGKey(1), n_models)
    return data, lists, weights, cands, params, rng_K


def test_slot_queue_refills_stopped_slots_and_each_model_equals_training_alone():
    data, lists, weights, cands, params, rng_K = _queue_problem(5)
    cfg = local.LocalTrainConfig(batch_size=4, lr=0.05, patience=2, max_epochs=14, eval_batch=8)
    finished = []
    got = queue.train_queue(data, params, rng_K, lists, weights, cands, cfg, 2, order=[3, 0, 4, 1, 2],
                            on_done=lambda k, *rest: finished.append(k))
    assert sorted(got) == [0, 1, 2, 3, 4] and sorted(finished) == [0, 1, 2, 3, 4]
    runs = [got[k][2] for k in range(5)]
    assert len(set(runs)) > 1, f"models should stop at different epochs, got {runs}"
    for k in range(5):
        one = jax.tree.map(lambda a: a[k:k + 1], params)
        alone = _train(data, one, rng_K[k:k + 1], lists[k:k + 1], weights[k:k + 1], cands[k:k + 1], cfg)
        assert got[k][1] == int(alone.best_epoch_K[0]) and got[k][2] == int(alone.epochs_run_K[0])
        for a, b in zip(jax.tree.leaves(got[k][0]), jax.tree.leaves(alone.best_params)):
            np.testing.assert_allclose(a, b[0], rtol=1e-4, atol=1e-5)


def test_slot_queue_without_patience_runs_every_model_for_max_epochs_with_shuffles():
    data, lists, weights, _, params, rng_K = _queue_problem(3, seed=3)
    cfg = local.LocalTrainConfig(batch_size=4, lr=0.05, patience=0, max_epochs=3, shuffle=True,
                                 dropout=0.2, beta=0.2)
    got = queue.train_queue(data, params, rng_K, lists, None, None, cfg, 2)
    for k in range(3):
        assert got[k][1:] == (3, 3)
        one = jax.tree.map(lambda a: a[k:k + 1], params)
        sets = local.LocalSets.from_lists(lists[k:k + 1], N, multiple=4)
        alone = local.train_local(local.init(rng_K[k:k + 1], cfg, one), data, sets, cfg)
        for a, b in zip(jax.tree.leaves(got[k][0]), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(a, b[0], rtol=1e-4, atol=1e-5)


def test_train_models_resumes_from_model_checkpoints(tmp_path, caplog):
    data, lists, weights, cands, params, rng_K = _queue_problem(4)
    cfg = local.LocalTrainConfig(batch_size=4, lr=0.05, patience=2, max_epochs=12, eval_batch=8)
    run = lambda c, **kw: queue.train_models(data, params, rng_K, lists, weights, c, cfg, 2, progress=False,
                                       desc="t", **kw)
    ref = run(cands)
    first = run(cands, checkpoint_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"model{k:04d}" for k in range(4)]
    shutil.rmtree(tmp_path / "model0002")  # a run killed before model 2 finished
    with caplog.at_level("INFO", logger="tall_jax.baselines"):
        resumed = run(cands, checkpoint_dir=tmp_path)
    assert "3 of 4 models loaded" in caplog.text
    for got in (first, resumed):
        for a, b in zip(jax.tree.leaves(ref[0]), jax.tree.leaves(got[0])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ref[1], got[1])
        np.testing.assert_array_equal(ref[2], got[2])
    # other inputs (model 1's candidates changed) retrain that model instead of reusing a stale file
    cands2 = [c.copy() for c in cands]
    cands2[1] = np.arange(10)
    caplog.clear()
    with caplog.at_level("INFO", logger="tall_jax.baselines"):
        run(cands2, checkpoint_dir=tmp_path)
    assert "other inputs" in caplog.text and "3 of 4 models loaded" in caplog.text


def test_loca_batches_are_windows_of_consecutive_ids_filtered_to_the_neighbourhood():
    """Spec §6.2.4 / the original LOCA loop: batches of `batch_size` consecutive user ids, each keeping
    only the anchor's neighbourhood (kernel > 0); an empty window is skipped."""
    from tall_jax.baselines.loca import loca_batch_rows
    data = tiny_data(3)
    rng = np.random.default_rng(11)
    kernel = np.where(rng.random((N, 1)) < 0.45, rng.uniform(0.1, 0.75, (N, 1)), 0.0)
    kernel[8:16] = 0.0  # windows 2 and 3 (ids 8-11, 12-15) have no member
    rows, weights = loca_batch_rows(kernel)
    np.testing.assert_array_equal(rows[0], np.where(kernel[:, 0] > 0, np.arange(N), N))
    # noise 0: a hole shifts which noise row a user draws, the one legitimate difference
    cfg = local.LocalTrainConfig(batch_size=4, lr=0.02, weight_decay=1e-3, noise_std=0.0)
    params = vae.init_experts(jax.random.PRNGKey(5), 1, M, D)
    rng_K = jax.random.split(jax.random.PRNGKey(6), 1)
    state = local.init(rng_K, cfg, params)
    state, _ = local.train_epoch(state, data, local.LocalSets.from_lists(rows, N, weights, multiple=4), cfg)
    # reference: the original's loop, one model, window by window
    p = jax.tree.map(lambda a: a[0], params)
    opt = local.make_optimizer(cfg).init(p)
    step = jax.jit(lambda *a: local._one_step(*a, config=cfg))
    steps = 0
    for b in range(N // 4):
        ids = np.arange(4 * b, 4 * b + 4)
        keep = ids[kernel[ids, 0] > 0]
        if not keep.size:
            continue
        users = np.full(4, N, np.int32)
        users[:keep.size] = keep
        w = np.zeros(4, np.float32)
        w[:keep.size] = kernel[keep, 0]
        key = jax.random.fold_in(jax.random.fold_in(rng_K[0], 0), b)
        p, opt, _ = step(p, opt, jnp.asarray(users), jnp.asarray(w), key, jnp.asarray(True), data)
        steps += 1
    assert steps <= N // 4 - 2  # at least the two empty windows were skipped
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p)):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6)
