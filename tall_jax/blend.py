"""Score blends: a MultVAE-family model and a closed form, mixed per user with a weight chosen on
validation (docs/closed_forms.md#blends).

    s_u = (1 − β) · z(c_u) + β · z(v_u),     z(s) = (s − mean_M s) / std_M s

c_u are a closed form's item scores of user u (x_u B for EASE), v_u the neural model's eval-mode
logits (TALL's gate mixture), both standardised over the M items of the user's row so that neither
scale dominates; β ∈ :data:`BETAS` (β = 0 is the closed form alone, β = 1 the neural model alone).
The neural part trains exactly as its own run would (same config, same seed, its checkpoint in
``<run>/neural``, resumable). Each closed candidate of the blend (EASE, EASE with WL weights, EASE
with MS weights) takes its validation-chosen grid point (or the fixed ``hp``); then every
(candidate, β) pair is evaluated once and the best mean validation NDCG@{1,5,10,20} is kept. So a
blend is chosen on validation only, and β = 0 / 1 keep each part's own result in reach. The closed
searches are deterministic and do not depend on the seed: within one process they are done once per
split (:func:`closed_candidate`), so ``--seed 0 1 2 3 4`` solves them once.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tall_jax import evaluation
from tall_jax import results as results_lib
from tall_jax.batching import UserData, make_batch
from tall_jax.closed.config import GRIDS, check_hp, make_closed_config, parse_hp
from tall_jax.closed.ease import binary
from tall_jax.closed.grid import fit_points, search
from tall_jax.closed.scoring import Fitted, evaluate_fitted
from tall_jax.configs import MODEL_PRESETS, TALLConfig, make_config
from tall_jax.datasets.base import Dataset
from tall_jax.evaluation import ranking_results
from tall_jax.fit import fit
from tall_jax.flags import finite, flag
from tall_jax.protocol import GROUP_NAMES, dataset_groups
from tall_jax.stopping import improves, validation_score
from tall_jax.steps import MixtureScorer
from tall_jax.tensorboard import epoch_writer

log = logging.getLogger("tall_jax.blend")

CLOSED_CANDIDATES = ("ease", "ease_wl", "ease_ms")
# name -> (neural model, closed candidates)
BLENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tall_ease": ("tall", CLOSED_CANDIDATES),
    "lmoe_ease": ("lmoe", CLOSED_CANDIDATES),
    "multvae_ease": ("multvae", CLOSED_CANDIDATES),
    "tall_plus_ease": ("tall_plus", CLOSED_CANDIDATES),
}
BLEND_BY = ("all", "group")  # one (candidate, β) for every user, or one per mainstream group
BETAS = tuple(round(0.1 * i, 1) for i in range(11))
EXECUTION_FIELDS = ("eval_batch",)
MAX_CELLS = 200_000_000  # users x items of a blend's score arrays (800 MB each in float32)


@dataclasses.dataclass(frozen=True)
class BlendConfig:
    """A blend's settings: which neural and closed parts, the neural part's E, the closed part's
    fixed hyper-parameters (empty: chosen on validation over its grid) and β (< 0: chosen on
    validation over :data:`BETAS`)."""

    model: str = "tall_ease"  # a name of BLENDS
    seed: int = 0  # the neural part's seed (init, shuffles); the closed part is deterministic
    # E of a mixture's neural part (E = 100 costs ~2 h a run on a 2-core CPU)
    n_experts: int = flag(10, "blends with a mixture (tall_ease, lmoe_ease): E of the neural part",
                          name="--experts")
    # fixed hyper-parameters of the closed candidates that have them
    hp: tuple[tuple[str, float], ...] = flag((), "", parse=parse_hp, metavar="NAME=VALUE", repeat=True)
    # the neural share; < 0: chosen on validation over BETAS
    beta: float = flag(-1.0, "blends (tall_ease, lmoe_ease, multvae_ease): the neural share of the mixed scores, "
                             "in [0, 1] (default: chosen on validation over 0, 0.1, ..., 1)", parse=finite)
    # where the (closed candidate, β) pair is chosen: over all validation users, or per group
    blend_by: str = flag("all", "blends: choose the closed candidate and beta on the validation users of "
                                "all groups at once (all), or separately for each mainstream group, each "
                                "user then scored with its group's choice (group) (default: all)",
                         choices=BLEND_BY)
    eval_batch: int = 256  # users per evaluation call (execution only)

    def __post_init__(self) -> None:
        if self.model not in BLENDS:
            raise ValueError(f"blend model must be one of {', '.join(BLENDS)}, got {self.model!r}")
        names = {n for c in self.closed for n in GRIDS[c]}
        unknown = sorted(n for n, _ in self.hp if n not in names)
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {', '.join(unknown)} for {self.model}; known: "
                             f"{', '.join(sorted(names))}")
        for c in self.closed:
            check_hp(c, self.hp_for(c))
        object.__setattr__(self, "hp", tuple(sorted((str(n), float(v)) for n, v in self.hp)))
        if not (isinstance(self.n_experts, int) and self.n_experts >= 1):
            raise ValueError(f"blend config field 'n_experts' must be an integer >= 1, got {self.n_experts!r}")
        if not (math.isfinite(self.beta) and self.beta <= 1.0):
            raise ValueError(f"blend config field 'beta' must be in [0, 1] (or < 0: chosen on validation), "
                             f"got {self.beta!r}")
        if self.blend_by not in BLEND_BY:
            raise ValueError(f"blend config field 'blend_by' must be one of {BLEND_BY}, got {self.blend_by!r}")
        if not (isinstance(self.eval_batch, int) and self.eval_batch >= 1):
            raise ValueError(f"blend config field 'eval_batch' must be an integer >= 1, got {self.eval_batch!r}")

    @property
    def neural(self) -> str:
        return BLENDS[self.model][0]

    @property
    def closed(self) -> tuple[str, ...]:
        return BLENDS[self.model][1]

    def hp_for(self, closed: str) -> tuple[tuple[str, float], ...]:
        """The fixed hyper-parameters the closed candidate ``closed`` has."""
        return tuple((n, v) for n, v in self.hp if n in GRIDS[closed])

    def neural_config(self, dataset: str) -> TALLConfig:
        """The neural part's config: its model's preset on ``dataset``, this seed and E."""
        single = MODEL_PRESETS[self.neural].get("n_experts") == 1
        return make_config(dataset, self.neural, seed=self.seed,
                           **({} if single else {"n_experts": self.n_experts}))

    def replace(self, **changes: Any) -> "BlendConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reads(model: str, field: str) -> bool:
    """Whether the blend ``model`` reads ``field`` ("hp.NAME": its closed part's grid has NAME;
    n_experts: only a mixture's neural part has experts)."""
    if field.startswith("hp."):
        return any(field[3:] in GRIDS[c] for c in BLENDS[model][1])
    if field == "n_experts":
        return MODEL_PRESETS[BLENDS[model][0]].get("n_experts") != 1
    return field != "model"


def make_blend_config(model: str, seed: int = 0, dataset: str | None = None, **overrides: Any) -> BlendConfig:
    """The config of the blend ``model`` with ``overrides`` (None values ignored)."""
    if model not in BLENDS:
        raise ValueError(f"unknown blend {model!r}; known: {', '.join(BLENDS)}")
    return BlendConfig(model=model, seed=seed, **{k: v for k, v in overrides.items() if v is not None})


def standardise(s_BxM: jax.Array) -> jax.Array:
    """z(s) = (s − mean) / std over the items of each row (std floored at 1e-12)."""
    mean = jnp.mean(s_BxM, axis=1, keepdims=True)
    std = jnp.std(s_BxM, axis=1, keepdims=True)
    return (s_BxM - mean) / jnp.maximum(std, 1e-12)


def neural_rows(params: Any, data: UserData, config: TALLConfig, batch_size: int) -> np.ndarray:
    """z-standardised eval-mode logits of every user, float32 [N, M] on the host."""
    scorer = MixtureScorer(config.for_scoring())
    score = jax.jit(lambda p, users: standardise(scorer(p, make_batch(data, users))[0]))
    out = np.empty((data.n_users, data.n_items), np.float32)
    for users_B in evaluation.user_batches(data.n_users, batch_size):
        real = users_B[users_B < data.n_users]
        out[real] = np.asarray(score(params, jnp.asarray(users_B)))[:len(real)]
    return out


def closed_rows(fitted: Fitted, train, batch_size: int = 2048) -> np.ndarray:
    """z-standardised closed-form scores of every user, float32 [N, M] on the host."""
    x = binary(train)
    n = x.shape[0]
    out = np.empty(x.shape, np.float32)
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        out[lo:hi] = np.asarray(standardise(jnp.asarray(fitted.rows(x, lo, hi))))
    return out


_CANDIDATES: dict[tuple, tuple] = {}


def closed_candidate(closed: str, hp, ds: Dataset, data: UserData, ms_N: np.ndarray):
    """(grid search, chosen point, z-standardised score rows [N, M]) of the closed model ``closed``
    with ``hp`` fixed, on ``ds``'s train matrix; memoised per split within the process (the
    closed forms are deterministic: every seed of a blend on one split gets the same)."""
    digest = (ds.info.get("fingerprint") or {}).get("digest")
    key = (closed, hp, ds.name, ds.split, ds.seed, digest, ds.train.nnz)
    if digest is None or key not in _CANDIDATES:
        ccfg = make_closed_config(closed, hp=hp or None)
        found = search(ccfg, ds.train, data, ms_N=ms_N)
        chosen = found.records[found.best]["hp"]
        (_, fitted, _), = fit_points(ccfg.replace(hp=check_hp(closed, chosen)), ds.train, ms_N)
        value = (found, chosen, closed_rows(fitted, ds.train))
        if digest is None:
            return value
        for other in [k for k in _CANDIDATES if k[2:] != key[2:]]:
            del _CANDIDATES[other]  # one split's candidates at a time: three [N, M] arrays
        _CANDIDATES[key] = value
    return _CANDIDATES[key]


def _argmax(scores: list[float]) -> int:
    """The index of the best score, the first on ties (the rule of :func:`tall_jax.stopping.improves`)."""
    best, best_score = -1, -np.inf
    for i, score in enumerate(scores):
        if improves(score, best_score, best + 1):
            best, best_score = i, score
    return best


def compose_by_group(evals: list[dict[str, np.ndarray]], choice_G: list[int], groups_N: np.ndarray
                     ) -> dict[str, np.ndarray]:
    """Per-user metrics of the blend that scores each user u with the choice ``choice_G[g(u)]``.

    A user's metrics depend on that user's score row only, so they are those of the chosen
    evaluation: out[k][u] = evals[choice_G[groups_N[u]]][k][u] (users of no group, -1, take group 0's:
    no such user exists once the groups are formed)."""
    pick_N = np.asarray(choice_G)[np.maximum(groups_N, 0)]
    return {k: np.stack([e[k] for e in evals])[pick_N, np.arange(len(pick_N))] for k in evals[0]}


def run_blend(config: BlendConfig, ds: Dataset, *, dataset: str, out_dir: Path, settings: dict,
              progress: bool = True, resume: bool = False,
              tensorboard: str | Path | None = None) -> dict[str, Any]:
    """Train the neural part (checkpointed in ``out_dir/neural``), choose the closed part's grid point
    on validation, then β, and write results.json / per_user_test.npz like every other family.
    ``tensorboard``: a folder whose ``neural`` subfolder gets the neural part's per-epoch scalars
    (:mod:`tall_jax.tensorboard`)."""
    if ds.n_users * ds.n_items > MAX_CELLS:
        raise ValueError(f"{config.model}: a blend holds three [users, items] float32 arrays, "
                         f"{ds.n_users:,} x {ds.n_items:,} here, above the {MAX_CELLS:,} cells it allows")
    out = Path(out_dir)
    t0 = time.perf_counter()
    ms_N, groups_N = dataset_groups(ds)
    data = UserData.from_dataset(ds)
    ncfg = config.neural_config(dataset)
    with epoch_writer(None if tensorboard is None else Path(tensorboard) / "neural") as on_epoch:
        trained = fit(ds, ncfg, groups_N=groups_N, ms_N=ms_N, out_dir=out / "neural", progress=progress,
                      resume=resume, on_epoch=on_epoch)
    t_neural = time.perf_counter() - t0
    v_NxM = neural_rows(trained.best_params, data, ncfg, config.eval_batch)
    candidates = {c: closed_candidate(c, config.hp_for(c), ds, data, ms_N) for c in config.closed}
    betas = BETAS if config.beta < 0 else (config.beta,)
    records, all_evals = [], []
    for closed, (_, chosen, c_NxM) in candidates.items():
        for beta in betas:
            tick = time.perf_counter()
            evals = evaluate_fitted(Fitted(rows_NxM=(1.0 - beta) * c_NxM + beta * v_NxM), ds.train, data,
                                    batch_size=config.eval_batch)
            score = validation_score(evals)
            records.append({"hp": {"closed": closed, **chosen, "beta": beta}, "valid_score": score,
                            "valid_score_by_group": {g: validation_score(evals, groups_N == i)
                                                     for i, g in enumerate(GROUP_NAMES)},
                            "seconds": time.perf_counter() - tick})
            all_evals.append(evals)
            log.info("%s %s beta %.1f: valid %.5f", config.model, closed, beta, score)
    best = _argmax([r["valid_score"] for r in records])
    if config.blend_by == "all":
        best_evals, chosen_hp = all_evals[best], records[best]["hp"]
    else:
        by_group = {g: _argmax([r["valid_score_by_group"][g] for r in records]) for g in GROUP_NAMES}
        best_evals = compose_by_group(all_evals, [by_group[g] for g in GROUP_NAMES], groups_N)
        chosen_hp = {g: records[i]["hp"] for g, i in by_group.items()}
    ranked = ranking_results(best_evals, groups_N)
    test, valid = ranked["test"].with_catalogue(ds.train), ranked["valid"].with_catalogue(ds.train)
    test.save_per_user(out / results_lib.PER_USER_FILE)
    results = {
        "dataset": dataset, "model": config.model, "seed": config.seed, "split": ds.split,
        "variant": settings["variant"], "test": test.to_json(), "valid": valid.to_json(),
        "wall_time_s": time.perf_counter() - t0, "neural_seconds": t_neural,
        "settings": config.to_dict(), "dataset_counts": ds.counts(),
        "data_reading": results_lib.data_reading(ds), **results_lib.reference_rows(dataset, config.model),
        "model_selection": ("the neural part at its best validation epoch (early stopping), the closed "
                            "part at its best validation grid point, then the (closed part, β) with the "
                            "best mean validation NDCG@{1,5,10,20} (the first on ties)"
                            + ("" if config.blend_by == "all" else
                               ", chosen for each mainstream group on that group's validation users; "
                               "chosen_hp names each group's choice")),
        "neural": {"config": ncfg.to_dict(), "best_epoch": trained.best_epoch,
                   "epochs_run": trained.epochs_run, "test": trained.test.to_json(),
                   # every epoch of the neural part, also those a resumed run trained before it
                   "epoch_seconds": float(sum(h["seconds"] for h in trained.history))},
        "closed": {c: {"grid": found.records, "chosen_hp": chosen}
                   for c, (found, chosen, _) in candidates.items()},
        "grid": records, "chosen_hp": chosen_hp,
    }
    results_lib.write_results(out, results)
    return results
