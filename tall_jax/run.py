"""One experiment end to end: load a dataset, its mainstream groups, train a model, write the results.

This is the library behind ``examples/train_tall.py``; every model writes the same ``results.json``
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
from tall_jax.configs import EXECUTION_FIELDS, MODELS, make_config
from tall_jax.datasets import load_dataset
from tall_jax.fit import fit
from tall_jax.protocol import dataset_groups

log = logging.getLogger("tall_jax")


def run_experiment(dataset: str, model: str, *, out_dir: str | Path, split: str | None = None,
                   seed: int = 0, data_dir: str | Path | None = None, progress: bool = True,
                   resume: bool = False, checkpoint_every: int = 10, keep_epochs: tuple[int, ...] = (),
                   overrides: dict[str, Any] | None = None,
                   global_from: str | Path | None = None,
                   mesh: str | None = None) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` and write settings.json, results.json, per_user_test.npz and PNG
    curves into exactly ``out_dir`` (:func:`default_out_dir` names the command line's folder).
    ``resume=True`` continues a checkpoint there and raises ValueError naming each field when the
    folder's settings.json records other settings (:func:`tall_jax.identity.check_settings`).
    Returns the results dict (also written as JSON). The local-learning baselines
    (``loca``, ``lft``, ``enlft``) go to :func:`tall_jax.baselines.run_baseline`, with ``overrides``
    as :class:`tall_jax.baselines.BaselineConfig` fields and ``global_from`` as their reusable global
    model run. ``keep_epochs``: epochs whose checkpoint is kept (:func:`tall_jax.fit.fit`). ``mesh`` ("expert=N") splits a mixture's experts over N devices
    (:mod:`tall_jax.sharding`)."""
    from tall_jax.baselines import BASELINES, run_baseline
    if mesh is not None and model in BASELINES:
        raise ValueError(f"--mesh applies to the MultVAE family, not to {model!r}")
    if model in BASELINES:
        return run_baseline(dataset, model, out_dir=out_dir, split=split, seed=seed, data_dir=data_dir,
                            progress=progress, overrides=overrides, global_from=global_from, resume=resume)
    if global_from is not None:
        raise ValueError(f"global_from applies to the baselines {', '.join(BASELINES)} only, not {model!r}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS + BASELINES)}")
    out = Path(out_dir)
    config = make_config(dataset, model, seed=seed, **(overrides or {}))
    device_mesh = sharding.make_mesh(*sharding.parse_mesh(mesh)) if mesh else None
    t0 = time.perf_counter()
    ds = load_dataset(dataset, split=split, seed=seed, data_dir=data_dir)
    settings = run_settings(dataset, model, split=ds.split, seed=seed, overrides=overrides)
    if resume:
        identity.check_settings(out, settings)
    out.mkdir(parents=True, exist_ok=True)  # only once the config and the data are known to be good
    identity.write_settings(out, settings)
    ms_N, groups_N = dataset_groups(ds)
    log.info("%s/%s: %d users, %d items, %d interactions (%.1fs to load and group)", ds.name,
             ds.split, ds.n_users, ds.n_items, ds.n_interactions, time.perf_counter() - t0)
    result = fit(ds, config, groups_N=groups_N, ms_N=ms_N, out_dir=out, progress=progress,
                 resume=resume, checkpoint_every=checkpoint_every, keep_epochs=keep_epochs,
                 mesh=device_mesh)
    return _write_run(out, ds, dataset, model, settings, result)


def run_seeds_together(dataset: str, model: str, seeds: list[int], *, out_dirs: list[str | Path],
                       split: str | None = None, data_dir: str | Path | None = None,
                       progress: bool = True,
                       overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """:func:`run_experiment` for each of ``seeds``, trained as ONE vmapped program
    (:func:`tall_jax.multirun.fit_seeds`), each seed's files written into its ``out_dirs`` entry.
    The seeds must share one split (ml-1m's authors split): a random split depends on the seed.
    No checkpoints are written (a stopped program starts again)."""
    from tall_jax.multirun import fit_seeds

    if model not in MODELS:
        raise ValueError(f"--together trains the MultVAE family ({', '.join(MODELS)}), not {model!r}")
    if len(out_dirs) != len(seeds):
        raise ValueError("run_seeds_together needs one out_dir per seed")
    config = make_config(dataset, model, seed=seeds[0], **(overrides or {}))
    ds = load_dataset(dataset, split=split, seed=seeds[0], data_dir=data_dir)
    if ds.seed is not None and len(seeds) > 1:
        raise ValueError(f"--together needs one split for every seed, but the {ds.split} split of "
                         f"{dataset!r} depends on the seed; train the seeds one by one")
    ms_N, groups_N = dataset_groups(ds)
    records = []
    for seed, out in zip(seeds, out_dirs):
        settings = run_settings(dataset, model, split=ds.split, seed=seed, overrides=overrides)
        Path(out).mkdir(parents=True, exist_ok=True)
        identity.write_settings(Path(out), settings)
        records.append(settings)
    fits = fit_seeds(ds, config, seeds, groups_N=groups_N, ms_N=ms_N, progress=progress)
    return [_write_run(Path(out), ds, dataset, model, settings, result, together=len(seeds))
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
        "settings": config.to_dict(), "dataset_counts": ds.counts(),
        **results_lib.reference_rows(dataset, model),
        "model_selection": "test metrics of the epoch with the best mean validation NDCG@{1,5,10,20}",
        "history": result.history, "figures": [str(p.name) for p in figures],
    }
    if together > 1:  # wall time is the whole program's; seconds per epoch are shared out
        results["trained_together"] = together
    results_lib.write_results(out, results)
    return results


def run_settings(dataset: str, model: str, *, split: str, seed: int = 0,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``settings.json`` record of a run (:func:`tall_jax.identity.settings_record`): its resolved
    config, dataset, split, seed, variant and identity hash. ``split`` is the resolved split name."""
    from tall_jax.baselines import BASELINES, make_baseline_config
    from tall_jax.baselines.experiment import baseline_settings

    if model in BASELINES:
        config = make_baseline_config(model, seed=seed, dataset=dataset, **(overrides or {}))
        return baseline_settings(config, dataset=dataset, split=split)
    config = make_config(dataset, model, seed=seed, **(overrides or {}))
    faithful = make_config(dataset, model, seed=seed)
    return identity.settings_record(config, dataset=dataset, split=split, execution_fields=EXECUTION_FIELDS,
                                    variant=results_lib.variant(config, faithful, EXECUTION_FIELDS))


def default_out_dir(root: str | Path, settings: dict[str, Any]) -> Path:
    """The command line's folder of a run with these :func:`run_settings`:
    ``root/<dataset>/<model>-E<E>-<hash>/seed<k>`` (baselines ``<model>-<hash>``); the hash covers
    every setting but the seed and the execution-only fields, so two settings never share a folder."""
    return identity.run_dir(root, settings)
