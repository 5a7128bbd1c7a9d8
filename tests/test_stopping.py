"""The one early-stopping rule (tall_jax.stopping) on hand-worked sequences, host and [K] arrays alike."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from tall_jax.stopping import EarlyStopping, exhausted, improves, validation_score

# epoch:    1    2    3    4    5     6     7     8
SCORES = [0.1, 0.3, 0.3, 0.2, 0.35, 0.34, 0.34, 0.34]
# by hand, patience 3: 1 improves (first), 2 improves, 3 ties (not strictly better), 4 worse,
# 5 improves, 6-8 do not: after epoch 8 three epochs have passed since 5, so training stops there.
IMPROVED = [True, True, False, False, True, False, False, False]


def _run(scores, patience):
    stop, improved = EarlyStopping(patience), []
    for epoch, score in enumerate(scores, start=1):
        stop, better = stop.update(epoch, score)
        improved.append(better)
        if stop.should_stop(epoch):
            return stop, improved, epoch
    return stop, improved, len(scores)


def test_hand_worked_sequence():
    stop, improved, last = _run(SCORES, patience=3)
    assert improved == IMPROVED and last == 8
    assert stop.best_epoch == 5 and stop.best_score == 0.35 and stop.since_best(8) == 3
    stop, improved, last = _run(SCORES, patience=2)
    assert last == 4 and stop.best_epoch == 2  # 3 ties and 4 is worse: two epochs without a gain
    stop, _, last = _run(SCORES, patience=1)
    assert last == 3 and stop.best_epoch == 2  # epoch 3 ties epoch 2: not an improvement
    assert not EarlyStopping(1).should_stop(0)  # nothing stops a run before its first epoch


def test_first_epoch_always_improves_even_when_worse_or_nan():
    stop, better = EarlyStopping(5, best_score=10.0).update(1, -1.0)  # no best epoch yet: improves
    assert better and stop.best_epoch == 1 and stop.best_score == -1.0
    stop, better = EarlyStopping(5).update(1, float("nan"))
    assert better and stop.best_epoch == 1
    # a NaN best is never beaten (NaN comparisons are false), as in the loop this rule came from
    assert not stop.update(2, 0.5)[1]


def test_vectorised_rule_equals_host_rule_per_model():
    rng = np.random.default_rng(0)
    scores_TxK = np.round(rng.random((12, 4)), 1).astype(np.float32)  # ties happen
    scores_TxK[:, 0] = SCORES + [0.1] * 4
    patience = 3
    best_score, best_epoch = jnp.full(4, -jnp.inf), jnp.zeros(4, jnp.int32)
    active = jnp.ones(4, bool)
    stopped_at = np.zeros(4, int)
    for epoch, score in enumerate(scores_TxK, start=1):
        better = active & improves(jnp.asarray(score), best_score, best_epoch)
        best_score = jnp.where(better, score, best_score)
        best_epoch = jnp.where(better, epoch, best_epoch)
        now = active & exhausted(epoch, best_epoch, patience)
        stopped_at[np.asarray(now)] = epoch
        active = active & ~now
    for k in range(4):
        stop, _, last = _run(scores_TxK[:, k].tolist(), patience)
        assert int(best_epoch[k]) == stop.best_epoch
        assert (stopped_at[k] or len(scores_TxK)) == last
    assert stopped_at[0] == 8 and int(best_epoch[0]) == 5


def test_validation_score_is_mean_of_the_four_nanmeans():
    evals = {f"valid/ndcg@{k}": np.array([k / 100, np.nan, 3 * k / 100]) for k in (1, 5, 10, 20)}
    evals["valid/ndcg@50"] = np.array([9.0, 9.0, 9.0])  # other cut-offs never count
    assert np.isclose(validation_score(evals), np.mean([2 * k / 100 for k in (1, 5, 10, 20)]))
