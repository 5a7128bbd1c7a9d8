"""One closed-form or neighbourhood run end to end: the mainstream groups, the grid search on
validation (:mod:`tall_jax.closed.grid`), and results.json / per_user_test.npz written like every
other family's (:mod:`tall_jax.experiment`, :mod:`tall_jax.baselines.experiment`)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tall_jax import results as results_lib
from tall_jax.batching import UserData
from tall_jax.closed.config import ClosedConfig, grid_points
from tall_jax.closed.grid import search
from tall_jax.datasets.base import Dataset
from tall_jax.evaluation import ranking_results
from tall_jax.protocol import dataset_groups

log = logging.getLogger("tall_jax.closed")

MODEL_SELECTION = ("grid search: every point of the model's hyper-parameter grid "
                   "(docs/closed_forms.md#grids) is fitted in closed form on the train matrix and "
                   "evaluated once; the point with the best mean validation NDCG@{1,5,10,20} (the first "
                   "on ties) is chosen, and its test metrics come from the same evaluation (one ranking "
                   "ranks for both)")
DETERMINISTIC = "deterministic: the seed changes nothing (no random initialisation, no sampling)"


def run_closed(config: ClosedConfig, ds: Dataset, *, dataset: str, out_dir: Path, settings: dict,
               progress: bool = True) -> dict[str, Any]:
    """Search ``config``'s grid on ``ds`` and write results.json and per_user_test.npz into
    ``out_dir`` (created if missing; settings.json is the caller's). Returns the results dict.

    results.json holds the keys of the other families where they apply (dataset, model, seed,
    split, variant = ``settings["variant"]``, test, valid with their groups, coverage and
    popularity@K, wall_time_s, settings, dataset_counts, the reference rows, model_selection), plus
    ``grid`` ([{"hp", "valid_score", "seconds"}, ...], in search order), ``chosen_hp`` and
    ``diagnostics`` (LOCA-EASE's anchors and coverage, ...)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ms_N, groups_N = dataset_groups(ds)
    data = UserData.from_dataset(ds)
    n_points = len(grid_points(config))
    point_bar = ((lambda it: tqdm(it, desc=f"{config.model} grid", unit="point", total=n_points))
                 if progress else None)
    local_bar = ((lambda total, desc: tqdm(total=total, desc=desc, unit="model", leave=False))
                 if progress else None)
    found = search(config, ds.train, data, ms_N=ms_N, progress=local_bar, point_bar=point_bar)
    ranked = ranking_results(found.best_evals, groups_N)
    test, valid = ranked["test"].with_catalogue(ds.train), ranked["valid"].with_catalogue(ds.train)
    test.save_per_user(out / results_lib.PER_USER_FILE)
    chosen = found.records[found.best]["hp"]
    results = {
        "dataset": dataset, "model": config.model, "seed": config.seed, "split": ds.split,
        "variant": settings["variant"],
        "test": test.to_json(), "valid": valid.to_json(),
        "wall_time_s": time.perf_counter() - t0,
        "settings": config.to_dict(), "dataset_counts": ds.counts(),
        **results_lib.reference_rows(dataset, config.model),
        "model_selection": MODEL_SELECTION, "seed_note": DETERMINISTIC,
        "grid": found.records, "chosen_hp": chosen,
        "diagnostics": found.diagnostics,
    }
    results_lib.write_results(out, results)
    log.info("%s on %s: chose %s (valid %.5f), test NDCG@20 %.4f", config.model, dataset, chosen,
             found.records[found.best]["valid_score"], test.overall().get("ndcg@20", float("nan")))
    return results
