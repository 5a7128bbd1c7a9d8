"""The MultVAE family's experiment: a resolved run (:mod:`tall_jax.models`) trained on its dataset
and written out. Every model of the library writes the same ``results.json``
(per-group NDCG, Recall, Precision, HR, MRR, MAP, coverage and popularity @K, their spread over the groups,
settings, wall time), the per-user arrays and the plots.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tall_jax import identity, plots, results as results_lib, sharding
from tall_jax.configs import TALLConfig
from tall_jax.datasets import load_dataset
from tall_jax.fit import fit
from tall_jax.fit_seeds import fit_seeds
from tall_jax.protocol import dataset_groups
from tall_jax.tensorboard import epoch_writer

log = logging.getLogger("tall_jax")


def train_mixture(plan, ds, out_dir: Path, settings: dict[str, Any], options) -> dict[str, Any]:
    """Train a resolved MultVAE-family run (:class:`tall_jax.models.RunPlan` ``plan``, its config a
    :class:`~tall_jax.configs.TALLConfig`) on the loaded ``ds`` into ``out_dir`` (settings.json is
    already there) and write results.json, per_user_test.npz and the PNG curves; returns the results.
    ``options`` (:class:`tall_jax.models.RunOptions`): progress, resume, checkpoint_every,
    keep_epochs (epochs whose checkpoint is kept, :func:`tall_jax.fit.fit`) and mesh ("expert=N":
    the experts split over N devices, :mod:`tall_jax.sharding`), tensorboard (a folder for the
    per-epoch scalars as TensorBoard event files, :mod:`tall_jax.tensorboard`)."""
    config = plan.config
    device_mesh = sharding.make_mesh(*sharding.parse_mesh(options.mesh)) if options.mesh else None
    t0 = time.perf_counter()
    ms_N, groups_N = dataset_groups(ds)
    log.info("%s/%s: %d users, %d items, %d interactions (%.1fs to group)", ds.name,
             ds.split, ds.n_users, ds.n_items, ds.n_interactions, time.perf_counter() - t0)
    with epoch_writer(options.tensorboard) as on_epoch:
        result = fit(ds, config, groups_N=groups_N, ms_N=ms_N, out_dir=out_dir, progress=options.progress,
                     resume=options.resume, checkpoint_every=options.checkpoint_every,
                     keep_epochs=options.keep_epochs, mesh=device_mesh, on_epoch=on_epoch)
    return _write_run(Path(out_dir), ds, plan.dataset, plan.model, settings, result)


def run_seeds_together(plans: list, *, out_dirs: list[str | Path], data_dir: str | Path | None = None,
                       progress: bool = True) -> list[dict[str, Any]]:
    """:func:`train_mixture` for resolved runs (:class:`tall_jax.models.RunPlan`) that differ only
    in their seed, trained as ONE vmapped program (:func:`tall_jax.fit_seeds.fit_seeds`), each
    seed's files written into its ``out_dirs`` entry. The seeds must share one split (ml-1m's
    authors split): a random split depends on the seed. No checkpoints are written (a stopped
    program starts again)."""
    if len(out_dirs) != len(plans) or not plans:
        raise ValueError("run_seeds_together needs one out_dir per plan")
    first = plans[0]
    if not isinstance(first.config, TALLConfig):
        raise ValueError(f"--together trains the MultVAE family, not {first.model!r}")
    if any(p.config.replace(seed=first.seed) != first.config or p.dataset != first.dataset
           for p in plans):
        raise ValueError("run_seeds_together trains runs that differ only in their seed")
    seeds = [p.seed for p in plans]
    ds = load_dataset(first.dataset, split=first.split, seed=seeds[0], data_dir=data_dir)
    if ds.seed is not None and len(seeds) > 1:
        raise ValueError(f"--together needs one split for every seed, but the {ds.split} split of "
                         f"{first.dataset!r} depends on the seed; train the seeds one by one")
    ms_N, groups_N = dataset_groups(ds)
    records = []
    for plan, out in zip(plans, out_dirs):
        settings = plan.settings(ds.split)
        Path(out).mkdir(parents=True, exist_ok=True)
        identity.write_settings(Path(out), settings)
        records.append(settings)
    fits = fit_seeds(ds, first.config, seeds, groups_N=groups_N, ms_N=ms_N, progress=progress)
    return [_write_run(Path(out), ds, first.dataset, first.model, settings, result, together=len(seeds))
            for out, settings, result in zip(out_dirs, records, fits)]


def _write_run(out: Path, ds, dataset: str, model: str, settings: dict[str, Any], result,
               together: int = 1) -> dict[str, Any]:
    """Write one finished run's results.json, per_user_test.npz and figures; returns the results."""
    config, seed = result.config, result.config.seed
    test, valid = result.test.with_catalogue(ds.train), result.valid.with_catalogue(ds.train)
    test.save_per_user(out / "per_user_test.npz")
    figures = plots.plot_run(result.history, out, f"{model} on {dataset}", result.best_epoch)
    results = {
        "dataset": dataset, "model": model, "seed": seed, "split": ds.split,
        "variant": settings["variant"],
        "test": test.to_json(), "valid": valid.to_json(),  # each with its "fairness" over the groups
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "wall_time_s": result.wall_time_s,
        "seconds_per_epoch": float(np.median([h["seconds"] for h in result.history])),
        "settings": config.to_dict(), "dataset_counts": ds.counts(), "data_reading": results_lib.data_reading(ds),
        **results_lib.reference_rows(dataset, model),
        "model_selection": "test metrics of the epoch with the best mean validation NDCG@{1,5,10,20}",
        "history": result.history, "figures": [str(p.name) for p in figures],
    }
    if together > 1:  # wall time is the whole program's; seconds per epoch are shared out
        results["trained_together"] = together
    results_lib.write_results(out, results)
    return results
