"""One seed of the paper's protocol (docs/fidelity.md#two-tower-data, #two-tower-evaluation): train baseline (plain data), baseline (upsampled data) and
MTL (upsampled data), score every test day, and compute AP per territory / group / case title."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from tall_jax.two_tower.data import PairSet, TwoTowerData
from tall_jax.two_tower.metrics import average_precision, average_precision_by_key
from tall_jax.two_tower.model import TwoTower
from tall_jax.two_tower.steps import init_two_tower_state, predict_two_tower, train_two_tower

MODELS = ("baseline", "baseline_up", "mtl")  # + optional "mtl_1head": one shared head (depth control)
COMPARISONS = [("mtl", "baseline"), ("mtl", "baseline_up"), ("baseline_up", "baseline")]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training knobs (docs/fidelity.md#two-tower-model: Adam lr 1e-3, batch 8192, width 512)."""

    width: int = 512  # d, tower / head width
    batch_size: int = 8192  # examples per step (the last batch is padded)
    epochs: int = 3
    learning_rate: float = 1e-3
    eval_batch_size: int = 8192
    hist_bins: int = 20  # score-histogram bins in [0, 1] (paper Fig. 2)


def _model_spec(name: str, data: TwoTowerData) -> tuple[TwoTower, PairSet, np.ndarray | None]:
    if name == "baseline":
        return TwoTower(n_groups=0), data.train_plain, None
    if name == "baseline_up":
        return TwoTower(n_groups=0), data.train_upsampled, None
    if name == "mtl":
        return TwoTower(n_groups=data.n_groups), data.train_upsampled, None
    if name == "mtl_1head":
        return TwoTower(n_groups=1), data.train_upsampled, np.zeros(len(data.user_territory), np.int64)
    raise ValueError(f"unknown two-tower model {name!r}; choose from {MODELS + ('mtl_1head',)}")


def _gather(data: TwoTowerData, pairs: PairSet, group_U: np.ndarray | None):
    if group_U is None:
        return data.gather(pairs)
    base = data.gather(pairs)

    def g(idx):
        ux, ix, y, _ = base(idx)
        return ux, ix, y, group_U[pairs.user[idx]]

    return g


def run_seed(data: TwoTowerData, cfg: TrainConfig, seed: int, *, models=MODELS, progress: bool = True) -> dict[str, Any]:
    """Train each model once with ``seed`` and evaluate it; returns plain-Python / NumPy results:
    ``ap_territory[model] [D, T]``, ``ap_group[model] [D, G]``, ``ap_all[model] [D]``, ``title_ap[model] [C]``,
    ``title_hist[model] [C, bins]``, ``losses[model]`` and the evaluation counts."""
    out: dict[str, Any] = {k: {} for k in ("ap_territory", "ap_group", "ap_all", "title_ap", "title_hist", "losses")}
    terr_U, group_U = data.user_territory, data.user_group
    t_n, g_n = len(data.territory_names), data.n_groups
    edges = np.linspace(0.0, 1.0, cfg.hist_bins + 1)
    case_pairs = [data.title_pairs(c["title"], c["territory"]) for c in data.case_titles]
    for m_i, name in enumerate(models):
        model, train_pairs, head_of_user = _model_spec(name, data)
        model = dataclasses.replace(model, width=cfg.width)
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), m_i)
        state = init_two_tower_state(model, rng, data.user_x.shape[1], data.item_x.shape[1],
                                     learning_rate=cfg.learning_rate)
        state, losses = train_two_tower(model, state, _gather(data, train_pairs, head_of_user), len(train_pairs),
                                        epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed * 1000 + m_i,
                                        desc=f"seed {seed} {name}", progress=progress)
        out["losses"][name] = losses

        def score(pairs: PairSet) -> np.ndarray:
            return predict_two_tower(model, state, _gather(data, pairs, head_of_user), len(pairs),
                                     batch_size=cfg.eval_batch_size)

        ap_t, ap_g, ap_a = [], [], []
        for day in data.test_days:
            s = score(day)
            ap_t.append(average_precision_by_key(day.label, s, terr_U[day.user], t_n)["ap"])
            ap_g.append(average_precision_by_key(day.label, s, group_U[day.user], g_n)["ap"])
            ap_a.append(average_precision(day.label, s))
        out["ap_territory"][name], out["ap_group"][name], out["ap_all"][name] = map(np.asarray, (ap_t, ap_g, ap_a))
        t_ap, t_hist = [], []
        for pairs in case_pairs:
            s = score(pairs)
            t_ap.append(average_precision(pairs.label, s))
            t_hist.append(np.histogram(s, bins=edges)[0] / max(len(s), 1))
        out["title_ap"][name], out["title_hist"][name] = np.asarray(t_ap), np.asarray(t_hist)
    out["eval_counts"] = {
        "territory_pos_per_day": [np.bincount(terr_U[d.user[d.label > 0]], minlength=t_n).tolist() for d in data.test_days],
        "territory_undefined_ap": int(sum(np.isnan(v).sum() for v in out["ap_territory"].values())),
        "title_n_pos": [p.n_pos for p in case_pairs], "title_n": [len(p) for p in case_pairs],
    }
    return out
