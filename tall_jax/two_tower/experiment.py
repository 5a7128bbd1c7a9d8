"""One seed of the paper's protocol (docs/fidelity.md#two-tower-data, #two-tower-evaluation): train baseline (plain data), baseline (upsampled data) and
MTL (upsampled data), optionally the one-shared-head control, score every test day, and compute AP per
territory / group / case title.

Protocols (``TrainConfig.protocol``):

- ``"incremental"`` (default, paper §4.2): fit on the training days before the first test day ``f``
  (early stopping on the held-out validation users of day ``f-1``), evaluate on day ``f``; then for every
  later test day ``i`` continue training the same state on day ``i-1``'s training examples (early stopping
  on day ``i-1``'s validation users; the un-updated model is a candidate too) and evaluate on day ``i``.
  The model scored on day ``i`` has seen labels of days ``< i`` only.
- ``"oneshot"``: the first fit only; that one model scores every test day.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tall_jax.two_tower import steps
from tall_jax.two_tower.data import PairSet, TwoTowerData, concat_pairs
from tall_jax.two_tower.metrics import average_precision, average_precision_by_key
from tall_jax.two_tower.model import TwoTower
from tall_jax.two_tower.parallel import DataParallel
from tall_jax.two_tower.resume import DayCheckpoints, digest
from tall_jax.two_tower.shards import block_order
from tall_jax.two_tower.steps import TwoTowerState, predict_two_tower, train_two_tower

MODELS = ("baseline", "baseline_up", "mtl")  # + optional "mtl_1head": one shared head (depth control)
ALL_MODELS = MODELS + ("mtl_1head",)
COMPARISONS = [("mtl", "baseline"), ("mtl", "baseline_up"), ("baseline_up", "baseline")]
PROTOCOLS = ("incremental", "oneshot")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training knobs (docs/fidelity.md#two-tower-model: Adam lr 1e-3, batch 8192, width 512) and the protocol."""

    width: int = 512  # d, tower / head width
    batch_size: int = 8192  # examples per step (the last batch is padded)
    epochs: int = 3  # most epochs of the first fit (early stopping may stop it sooner)
    learning_rate: float = 1e-3
    eval_batch_size: int = 8192
    hist_bins: int = 20  # score-histogram bins in [0, 1] (paper Fig. 2)
    protocol: str = "incremental"
    patience: int = 2  # epochs without a better validation AP before stopping
    inc_epochs: int = 2  # most epochs of each daily incremental update
    weight_decay: float = 0.0  # decoupled decay on the shared towers' kernels (option; paper: none)
    head_dropout: float = 0.0  # dropout on the task-block outputs (option)
    head_rank: int = 0  # low-rank task blocks (option; 0 = full D x D)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


def model_spec(name: str, data: TwoTowerData, cfg: TrainConfig) -> tuple[TwoTower, str, np.ndarray | None]:
    """``(model, training set "plain" | "upsampled", head-of-user override or None)`` of a model name."""
    ids = dict(user_vocab=data.user_vocab, item_vocab=data.item_vocab)
    mtl = dict(width=cfg.width, head_rank=cfg.head_rank, head_dropout=cfg.head_dropout, **ids)
    if name == "baseline":
        return TwoTower(n_groups=0, width=cfg.width, **ids), "plain", None
    if name == "baseline_up":
        return TwoTower(n_groups=0, width=cfg.width, **ids), "upsampled", None
    if name == "mtl":
        return TwoTower(n_groups=data.n_groups, **mtl), "upsampled", None
    if name == "mtl_1head":  # the same depth as MTL, one task block shared by every group
        return TwoTower(n_groups=1, **mtl), "upsampled", np.zeros(len(data.user_territory), np.int64)
    raise ValueError(f"unknown two-tower model {name!r}; choose from {ALL_MODELS}")


def step_config_of(model: TwoTower, cfg: TrainConfig) -> steps.TwoTowerConfig:
    """The static config of ``model``'s train step under ``cfg`` (its optimiser settings)."""
    return steps.TwoTowerConfig(model, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _gather(data: TwoTowerData, pairs: PairSet, group_U: np.ndarray | None):
    if group_U is None:
        return data.gather(pairs)
    base = data.gather(pairs)

    def g(idx):
        ux, ix, y, _ = base(idx)
        return ux, ix, y, group_U[pairs.user[idx]]

    return g


def _copy(state: TwoTowerState) -> TwoTowerState:
    """A copy whose buffers survive the donation of ``state`` to the next train step."""
    return jax.tree.map(jnp.copy, state)


def fit_early_stopping(model, state, data, train: PairSet, valid: PairSet, head_of_user, cfg: TrainConfig, *,
                       max_epochs: int, seed: int, start_is_candidate: bool, desc: str, progress: bool,
                       dp: DataParallel | None = None):
    """Train epoch by epoch on ``train``; after each epoch score ``valid`` (overall AP); keep the best
    state; stop after ``cfg.patience`` epochs without improvement. With ``start_is_candidate`` the
    incoming state competes too (an update that makes validation worse is not kept). Without validation
    positives it trains ``max_epochs`` epochs. With ``dp`` training and scoring are split over its
    mesh. Returns ``(state, history)``."""
    def val_ap(s):
        if valid.n_pos == 0:
            return float("nan")
        scores = predict_two_tower(model, s, _gather(data, valid, head_of_user), len(valid),
                                   batch_size=cfg.eval_batch_size, dp=dp)
        return average_precision(np.asarray(valid.label), scores)

    step_config = step_config_of(model, cfg)
    history: list[dict[str, Any]] = []
    if len(train) == 0:
        return state, history
    best_state, best, since = None, -np.inf, 0
    if start_is_candidate and valid.n_pos > 0:
        best_state, best = _copy(state), val_ap(state)
        history.append({"epoch": 0, "loss": None, "valid_ap": best})
    # examples kept on disk are shuffled window by window and read ahead by a thread (shards.block_order)
    stream = {} if isinstance(train.label, np.ndarray) else {"order": block_order, "prefetch_depth": 2}
    for ep in range(1, max_epochs + 1):
        state, losses = train_two_tower(step_config, state, _gather(data, train, head_of_user), len(train), epochs=1,
                                        batch_size=cfg.batch_size, seed=seed * 7919 + ep, desc=desc, progress=progress,
                                        dp=dp, **stream)
        ap = val_ap(state)
        history.append({"epoch": ep, "loss": losses[0], "valid_ap": ap})
        if not np.isfinite(ap):
            best_state, since = None, 0
            continue
        if ap > best:
            best_state, best, since = _copy(state), ap, 0
        else:
            since += 1
            if since >= cfg.patience:
                break
    return (best_state if best_state is not None else state), history


def train_schedule(data: TwoTowerData, protocol: str) -> list[tuple[list[int], int, list[int]]]:
    """The fits of a protocol: ``(training days, validation day, test days scored after this fit)``."""
    f, n = data.first_test_day, len(data.days)
    if f < 1:
        raise ValueError("two-tower protocol: need at least one training day before the first test day")
    if protocol == "oneshot":
        return [(list(range(f)), f - 1, list(range(f, n)))]
    return [(list(range(f)), f - 1, [f])] + [([i - 1], i - 1, [i]) for i in range(f + 1, n)]


def run_seed(data: TwoTowerData, cfg: TrainConfig, seed: int, *, models=MODELS, progress: bool = True,
             keep_scores: bool = False, dp: DataParallel | None = None,
             checkpoints: str | Path | None = None) -> dict[str, Any]:
    """Train each model with ``seed`` under ``cfg.protocol`` and evaluate it; returns plain-Python / NumPy
    results: ``ap_territory[model] [D, T]``, ``ap_group[model] [D, G]``, ``ap_all[model] [D]``,
    ``title_ap[model] [C]``, ``title_hist[model] [C, bins]``, ``title_mean[model] [C]`` (mean score), ``losses[model]`` (first fit's epoch losses),
    ``history[model]`` (every fit's days and epochs), ``trained_days[model] [D]`` (the days whose labels the
    model scored on each test day had seen), and the evaluation counts. Title-level scores come from the
    model of each title pair's own test day. ``keep_scores`` adds ``scores[model] [D]`` (test-day scores).
    ``dp`` (``--mesh data=N``, ``--distributed``) splits every batch over its mesh. ``checkpoints``: a
    folder where the state and the results so far are saved after every fit, and from whose newest
    save a rerun continues (:mod:`tall_jax.two_tower.resume`; the same results as one uninterrupted run)."""
    out: dict[str, Any] = {k: {} for k in ("ap_territory", "ap_group", "ap_all", "title_ap", "title_hist", "title_mean",
                                           "losses", "history", "trained_days", "best_epochs")}
    if keep_scores:
        out["scores"] = {}
    terr_U, group_U = data.user_territory, data.user_group
    t_n, g_n = len(data.territory_names), data.n_groups
    f = data.first_test_day
    edges = np.linspace(0.0, 1.0, cfg.hist_bins + 1)
    # title-level populations, split by test day so each part is scored by that day's model
    case_parts = []
    for c in data.case_titles:
        pairs = data.title_pairs(c["title"], c["territory"])
        day_of = np.full(len(data.user_territory), -1)
        for j, us in enumerate(data.test_users):
            day_of[us] = j
        case_parts.append((pairs, day_of[pairs.user]))
    schedule = train_schedule(data, cfg.protocol)
    saves = DayCheckpoints(checkpoints, {"train": dataclasses.asdict(cfg), "seed": seed, "models": list(models),
                                         "keep_scores": keep_scores, "data": digest(data) if checkpoints else None})

    def init_state(m_i: int) -> TwoTowerState:
        model = model_spec(models[m_i], data, cfg)[0]
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), m_i)
        return steps.init(rng, step_config_of(model, cfg), data.user_x.shape[1], data.item_x.shape[1])

    resumed = saves.latest(init_state)
    if resumed is not None:
        out = resumed.progress["out"]
    for m_i, name in enumerate(models):
        if resumed is not None and m_i < resumed.model:
            continue  # finished before the interruption: its results are in ``out``
        model, which, head_of_user = model_spec(name, data, cfg)
        state = init_state(m_i)
        ap_t, ap_g, ap_a, seen, hist, best_ep, scores = {}, {}, {}, {}, [], [], {}
        seen_days: list[int] = []
        case_scores = [np.zeros(len(p), np.float32) for p, _ in case_parts]
        first_fit = 0
        if resumed is not None and m_i == resumed.model:
            state, first_fit = resumed.state, resumed.fit + 1
            ap_t, ap_g, ap_a, seen, hist, best_ep, scores, seen_days, case_scores = resumed.progress["model"]
        for k, (train_days, valid_day, test_days) in enumerate(schedule):
            if k < first_fit:
                continue
            train = concat_pairs([getattr(data.days[d], f"train_{which}") for d in train_days])
            state, h = fit_early_stopping(
                model, state, data, train, data.days[valid_day].valid, head_of_user, cfg,
                max_epochs=cfg.epochs if k == 0 else cfg.inc_epochs, seed=seed * 1000 + m_i * 10 + k,
                start_is_candidate=k > 0, desc=f"seed {seed} {name} fit {k + 1}", progress=progress, dp=dp)
            if len(train):
                seen_days = sorted(set(seen_days) | set(train_days) | {valid_day})
            valid_aps = [e["valid_ap"] for e in h]
            best_ep.append(int(h[int(np.nanargmax(valid_aps))]["epoch"]) if h and np.isfinite(valid_aps).any() else len(h))
            hist.append({"train_days": train_days, "valid_day": valid_day, "epochs": h})
            if k == 0:
                out["losses"][name] = [e["loss"] for e in h if e["loss"] is not None]

            def score(pairs: PairSet, state=state) -> np.ndarray:
                return predict_two_tower(model, state, _gather(data, pairs, head_of_user), len(pairs),
                                         batch_size=cfg.eval_batch_size, dp=dp)

            for d in test_days:
                test = data.days[d].test.in_memory()  # a log's test examples stay on disk until scored
                s = score(test)
                ap_t[d] = average_precision_by_key(test.label, s, terr_U[test.user], t_n)["ap"]
                ap_g[d] = average_precision_by_key(test.label, s, group_U[test.user], g_n)["ap"]
                ap_a[d] = average_precision(test.label, s)
                seen[d] = list(seen_days)
                for (pairs, day_of), cs in zip(case_parts, case_scores):  # this day's part of each case title
                    sel = np.nonzero(day_of == d - f)[0]
                    if len(sel):
                        cs[sel] = score(PairSet(pairs.user[sel], pairs.item[sel], pairs.label[sel]))
                if keep_scores:
                    scores[d] = s
            saves.save(m_i, k, state, {"out": out, "model": (ap_t, ap_g, ap_a, seen, hist, best_ep, scores,
                                                             seen_days, case_scores)})
        days = sorted(ap_t)
        out["ap_territory"][name] = np.asarray([ap_t[d] for d in days])
        out["ap_group"][name] = np.asarray([ap_g[d] for d in days])
        out["ap_all"][name] = np.asarray([ap_a[d] for d in days])
        out["trained_days"][name] = [seen[d] for d in days]
        out["history"][name], out["best_epochs"][name] = hist, best_ep
        if keep_scores:
            out["scores"][name] = [scores[d] for d in days]
        t_ap, t_hist, t_mean = [], [], []
        for (pairs, _), s in zip(case_parts, case_scores):
            t_ap.append(average_precision(pairs.label, s))
            t_mean.append(float(s.mean()) if len(s) else float("nan"))
            t_hist.append(np.histogram(s, bins=edges)[0] / max(len(s), 1))
        out["title_ap"][name], out["title_hist"][name] = np.asarray(t_ap), np.asarray(t_hist)
        out["title_mean"][name] = np.asarray(t_mean)
    out["eval_counts"] = {
        "territory_pos_per_day": [np.bincount(terr_U[d.user[d.label > 0]], minlength=t_n).tolist()
                                  for d in (t.in_memory() for t in data.test_days)],
        "territory_undefined_ap": int(sum(np.isnan(v).sum() for v in out["ap_territory"].values())),
        "title_n_pos": [p.n_pos for p, _ in case_parts], "title_n": [len(p) for p, _ in case_parts],
    }
    return out
