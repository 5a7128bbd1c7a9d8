"""One baseline experiment end to end (LOCA, LFT, EnLFT): load the split and its groups, train (or
reload) the global model, run the baseline, write results.json like every other model."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tall_jax import results as results_lib
from tall_jax import state as state_lib
from tall_jax.baselines.config import BASELINES, global_config
from tall_jax.configs import EXECUTION_FIELDS as GLOBAL_EXECUTION
from tall_jax.baselines.enlft import run_enlft
from tall_jax.baselines.lft import run_lft
from tall_jax.baselines.loca import run_loca
from tall_jax.batching import UserData
from tall_jax.fit import fit
from tall_jax.metrics import RankingResult
from tall_jax.protocol import dataset_groups
from tall_jax.tensorboard import epoch_writer

log = logging.getLogger("tall_jax.baselines")
# BaselineConfig fields that change how a baseline executes, not its maths (never a variant; a saved
# run that differs only in them is the same run).
EXECUTION_FIELDS = ("chunk", "memory_budget_gb", "eval_batch")


def same_model(saved: dict[str, Any], gcfg) -> bool:
    """Whether a saved run's settings describe the model ``gcfg`` asks for: execution-only fields are
    ignored and a field the saved run predates counts as its default value."""
    defaults = {f.name: f.default for f in dataclasses.fields(gcfg)}
    want = gcfg.to_dict()
    return all(saved.get(k, defaults.get(k)) == v for k, v in want.items() if k not in GLOBAL_EXECUTION)


def global_model(ds, gcfg, ms_N, groups_N, folder: Path, which: str, progress: bool,
                 reuse: Path | None = None, on_epoch=None):
    """The global MultVAE/WL parameters (one expert, ``which`` = "final" or "best" state), trained
    with :func:`tall_jax.fit.fit` into ``folder`` or reloaded from it when its config matches.

    ``reuse``: a finished ``run_experiment`` folder of the same model (results.json and its
    checkpoint); it is used instead of training when its settings equal the global config."""
    meta_path = folder / "global_config.json"
    template = state_lib.init(jax.random.PRNGKey(gcfg.seed), gcfg, ds.n_users, ds.n_items, ms_N=ms_N)
    meta: dict[str, Any] = {}
    reused_from = None if reuse is None else str(reuse)
    if reuse is not None and (Path(reuse) / "global_config.json").exists():
        folder, meta_path = Path(reuse), Path(reuse) / "global_config.json"
        if not same_model(json.loads(meta_path.read_text()).get("config") or {}, gcfg):
            raise ValueError(f"{meta_path}: its config differs from the global {gcfg.model} config "
                             f"this baseline needs ({gcfg.to_dict()})")
        reuse = None
    if reuse is not None:
        res_path = Path(reuse) / "results.json"
        if not res_path.exists():
            raise FileNotFoundError(f"--global-from {reuse}: no results.json there")
        prev = json.loads(res_path.read_text())
        if not same_model(prev.get("settings") or {}, gcfg):
            raise ValueError(f"{res_path}: its settings differ from the global {gcfg.model} config "
                             f"this baseline needs ({gcfg.to_dict()})")
        folder = Path(reuse)
        meta = {"config": gcfg.to_dict(), "best_epoch": prev["best_epoch"],
                "epochs_run": prev["epochs_run"], "wall_time_s": prev["wall_time_s"], "test": prev["test"]}
        final, best = _load_global(folder, template)
    elif meta_path.exists() and same_model(json.loads(meta_path.read_text()).get("config") or {}, gcfg):
        log.info("reusing the global %s in %s", gcfg.model, folder)
        meta = json.loads(meta_path.read_text())
        final, best = _load_global(folder, template)
    else:
        res = fit(ds, gcfg, groups_N=groups_N, ms_N=ms_N, out_dir=folder, progress=progress, on_epoch=on_epoch)
        final, best = res.state, res.best_params
        meta = {"config": gcfg.to_dict(), "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                "wall_time_s": res.wall_time_s, "test": res.test.to_json()}
        results_lib.write_json(meta_path, meta)
    if reused_from is not None:
        meta = {**meta, "reused_from": reused_from}
    params = final.params if which == "final" else best
    return jax.tree.map(lambda a: jax.numpy.asarray(a)[0], params["experts"]), meta


def shared_global(model: str, config, dataset: str, runs: Mapping[str, str | Path]) -> Path | None:
    """A finished folder among ``runs`` (model -> run folder of the same seed, e.g. a command line's
    other runs) that can serve as ``model``'s global model instead of training it again, or None.

    Candidates: a run of the global model itself (a MultVAE run for LOCA; a WL run for LFT / EnLFT
    when their global WL is the TALL repo's), then the global model another baseline trained (LFT
    and EnLFT train the same WL). Only a folder whose recorded settings equal the global config
    counts, so reusing it gives the result training it would give (same config, same seed)."""
    gcfg = global_config(dataset, config)
    own = Path(runs[gcfg.model]) if gcfg.model in runs else None
    if own is not None and (own / "results.json").exists():
        if same_model(json.loads((own / "results.json").read_text()).get("settings") or {}, gcfg):
            return own
    for other in BASELINES:
        folder = Path(runs[other]) / f"global_{gcfg.model}" if other in runs and other != model else None
        if folder is not None and (folder / "global_config.json").exists():
            if same_model(json.loads((folder / "global_config.json").read_text()).get("config") or {}, gcfg):
                return folder
    return None


def _load_global(folder: Path, template):
    """(final state, best parameters) of a global model's run checkpoint in ``folder``."""
    ckpt = state_lib.load_checkpoint(folder, template)
    if ckpt is None:
        raise FileNotFoundError(f"{folder}: no checkpoint of a global model there (checkpoint/ or "
                                "last_state.msgpack + best_params.msgpack)")
    return ckpt.state, ckpt.best_params


def train_local(plan, ds, out_dir: Path, settings: dict[str, Any], options) -> dict[str, Any]:
    """Run a resolved LOCA / LFT / EnLFT run (:class:`tall_jax.models.RunPlan` ``plan``, its config a
    :class:`BaselineConfig`) on the loaded ``ds`` into ``out_dir`` (settings.json is already there)
    and write results.json, per_user_test.npz and evaluated_users.npy; finished LOCA local models are
    reused. ``options`` (:class:`tall_jax.models.RunOptions`): progress, and ``global_from``: a
    finished MultVAE (LOCA) or WL (LFT, EnLFT) run folder reused as the global model instead of
    training one (its settings must equal the baseline's global config); tensorboard: a folder whose
    ``global_<model>`` subfolder gets the global model's per-epoch scalars (:mod:`tall_jax.tensorboard`)."""
    config, dataset, model, seed = plan.config, plan.dataset, plan.model, plan.seed
    progress, global_from = options.progress, options.global_from
    out = Path(out_dir)
    t0 = time.perf_counter()
    ms_N, groups_N = dataset_groups(ds)
    gcfg = global_config(dataset, config)
    which = config.loca_global_state if model == "loca" else "best"
    t_global = time.perf_counter()
    events = None if options.tensorboard is None else Path(options.tensorboard) / f"global_{gcfg.model}"
    with epoch_writer(events) as on_epoch:
        gparams, gmeta = global_model(ds, gcfg, ms_N, groups_N, out / f"global_{gcfg.model}", which, progress,
                                     None if global_from is None else Path(global_from), on_epoch=on_epoch)
    t_global = time.perf_counter() - t_global
    data = UserData.from_dataset(ds)
    t_model = time.perf_counter()
    users = np.arange(ds.n_users)
    if model == "loca":
        evals, info = run_loca(data, ds.train, gparams, config, progress=progress,
                               checkpoint_dir=out / "local_models")
    elif model == "enlft":
        evals, info = run_enlft(data, ds.train, gparams, config, progress=progress)
    else:
        evals, users, info = run_lft(data, ds.train, gparams, config, progress=progress)
    t_model = time.perf_counter() - t_model
    test = RankingResult({k[5:]: v for k, v in evals.items() if k.startswith("test/")}, groups_N[users])
    valid = RankingResult({k[6:]: v for k, v in evals.items() if k.startswith("valid/")}, groups_N[users])
    test.save_per_user(out / "per_user_test.npz")
    np.save(out / "evaluated_users.npy", users)
    subset = len(users) < ds.n_users
    results = {
        "dataset": dataset, "model": model, "seed": seed, "split": ds.split,
        "variant": settings["variant"],
        "test": test.to_json(), "valid": valid.to_json(),
        "evaluated_users": ("all" if not subset else
                            f"seeded random subset of {len(users)} of {ds.n_users} users (seed {seed}); "
                            "metrics are means over these users only; ids in evaluated_users.npy"),
        "wall_time_s": time.perf_counter() - t0, "global_model_seconds": t_global,
        "model_seconds": t_model, "settings": config.to_dict(), "global_model": gmeta,
        "global_state_used": which, "dataset_counts": ds.counts(),
        "data_reading": results_lib.data_reading(ds), **results_lib.reference_rows(dataset, model),
        "model_selection": ("LOCA: each local model keeps its best-validation state (patience on its "
                            "candidates); LFT/EnLFT: no validation selection (final fine-tuned state)"),
        "diagnostics": info,
    }
    results_lib.write_results(out, results)
    return results
