"""The model table: every model the library trains, by name, and the one way a run is resolved and
trained.

Each name belongs to a *family*, which says how its configuration is made (presets, overrides,
which fields the model's code reads), which config fields only change how a run executes, and how
it trains and writes its results:

- ``mixture``: MultVAE, WL and the mixtures of MultVAE experts (TALL, LMoE, ...): one
  :class:`tall_jax.configs.TALLConfig`, trained by :func:`tall_jax.experiment.train_mixture`;
- ``local``: LOCA, LFT, EnLFT (:class:`tall_jax.baselines.BaselineConfig`,
  :func:`tall_jax.baselines.experiment.train_local`);
- ``closed``: the closed-form and neighbourhood models (:class:`tall_jax.closed.ClosedConfig`,
  :func:`tall_jax.closed.experiment.run_closed`);
- ``blend``: a MultVAE-family model and a closed form mixed on validation
  (:class:`tall_jax.blend.BlendConfig`, :func:`tall_jax.blend.run_blend`).

A run is resolved ONCE into a :class:`RunPlan` (:func:`resolve_run`: dataset + model + seed +
overrides -> one frozen config), and every later step (its folder, ``settings.json``, the identity
hash, ``results.json``, the training) reads that object; nothing re-derives it from strings.
Adding a model is one entry in :data:`MODEL_TABLE` plus its module (and, for a new family, one
:class:`Family`).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tall_jax import identity
from tall_jax import results as results_lib
from tall_jax import blend
from tall_jax.baselines import config as local_config
from tall_jax.baselines.experiment import EXECUTION_FIELDS as LOCAL_EXECUTION
from tall_jax.baselines.experiment import train_local
from tall_jax.closed import config as closed_config
from tall_jax.closed.experiment import run_closed
from tall_jax.configs import EXECUTION_FIELDS as MIXTURE_EXECUTION
from tall_jax.configs import MODEL_PRESETS, TALLConfig, make_config
from tall_jax.datasets import Dataset, load_dataset
from tall_jax.experiment import train_mixture
from tall_jax.files import lock_run_dir

log = logging.getLogger("tall_jax")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run executes (never part of its identity). ``resume``: continue the folder's checkpoint
    where there is one (the settings must match); ``checkpoint_every`` / ``keep_epochs``: the
    mixture family's checkpoints (:func:`tall_jax.fit.fit`); ``mesh``: "expert=N" for a mixture;
    ``global_from``: a finished run folder a local baseline reuses as its global model;
    ``tensorboard``: a folder for the run's per-epoch scalars as TensorBoard event files
    (:mod:`tall_jax.tensorboard`; a blend's neural part and a local baseline's global model write
    into its ``neural`` / ``global_<model>`` subfolder, as in the run folder; a closed form has no
    epochs and writes none)."""

    progress: bool = True
    resume: bool = False
    checkpoint_every: int = 10
    keep_epochs: tuple[int, ...] = ()
    mesh: str | None = None
    global_from: str | Path | None = None
    tensorboard: str | Path | None = None


@dataclasses.dataclass(frozen=True)
class Family:
    """How the models of one family are configured and trained.

    ``make_config(model, dataset, seed, overrides)`` -> the run's frozen config (``overrides``: config
    fields, None values ignored); ``faithful(model, dataset, seed)`` -> the config the variant string
    is measured against; ``reads(model, field)``: whether the model's code reads a config field (a
    flag no chosen model reads is an error, and a field another model reads never makes a run a false
    variant); ``train(plan, ds, out_dir, settings, options)`` -> the results dict it also wrote as
    ``results.json``; ``options``: the :class:`RunOptions` fields beyond progress/resume it accepts."""

    name: str
    config_class: type
    make_config: Callable[[str, str, int, dict[str, Any]], Any]
    faithful: Callable[[str, str, int], Any]
    execution_fields: tuple[str, ...]
    reads: Callable[[str, str], bool]
    train: Callable[..., dict[str, Any]]
    options: tuple[str, ...] = ()

    def fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    def reads_field(self, model: str, field: str) -> bool:
        """Whether ``model``'s code reads the config ``field`` ("hp.NAME": one hyper-parameter of the
        closed forms' ``hp`` field)."""
        return field.split(".")[0] in self.fields() and self.reads(model, field)


@dataclasses.dataclass(frozen=True)
class Model:
    """One row of the model table: a name, its family and what it is."""

    name: str
    family: str
    description: str
    paper: str = ""  # where the paper (or the field) reports it


def _mixture_reads(model: str, field: str) -> bool:
    single = MODEL_PRESETS[model].get("n_experts") == 1  # MultVAE and WL have no experts
    return not (single and field == "n_experts") and field != "model"


FAMILIES: dict[str, Family] = {
    "mixture": Family(
        name="mixture", config_class=TALLConfig,
        make_config=lambda model, dataset, seed, overrides: make_config(dataset, model, seed=seed, **overrides),
        faithful=lambda model, dataset, seed: make_config(dataset, model, seed=seed),
        execution_fields=MIXTURE_EXECUTION, reads=_mixture_reads, train=train_mixture,
        options=("checkpoint_every", "keep_epochs", "mesh")),
    "local": Family(
        name="local", config_class=local_config.BaselineConfig,
        make_config=lambda model, dataset, seed, overrides: local_config.make_baseline_config(
            model, seed=seed, dataset=dataset, **overrides),
        faithful=lambda model, dataset, seed: local_config.make_baseline_config(model, seed=seed),
        execution_fields=LOCAL_EXECUTION,
        reads=lambda model, field: field != "model" and local_config.applies(field, model),
        train=train_local, options=("global_from",)),
    "closed": Family(
        name="closed", config_class=closed_config.ClosedConfig,
        make_config=lambda model, dataset, seed, overrides: closed_config.make_closed_config(
            model, seed=seed, dataset=dataset, **overrides),
        faithful=lambda model, dataset, seed: closed_config.make_closed_config(model, seed=seed),
        execution_fields=closed_config.EXECUTION_FIELDS,
        reads=lambda model, field: (field[3:] in closed_config.GRIDS[model] if field.startswith("hp.")
                                    else field != "model" and closed_config.reads(model, field)),
        train=lambda plan, ds, out_dir, settings, options: run_closed(
            plan.config, ds, dataset=plan.dataset, out_dir=out_dir, settings=settings,
            progress=options.progress)),
    "blend": Family(
        name="blend", config_class=blend.BlendConfig,
        make_config=lambda model, dataset, seed, overrides: blend.make_blend_config(
            model, seed=seed, dataset=dataset, **overrides),
        faithful=lambda model, dataset, seed: blend.make_blend_config(model, seed=seed),
        execution_fields=blend.EXECUTION_FIELDS, reads=blend.reads,
        train=lambda plan, ds, out_dir, settings, options: blend.run_blend(
            plan.config, ds, dataset=plan.dataset, out_dir=out_dir, settings=settings,
            progress=options.progress, resume=options.resume, tensorboard=options.tensorboard)),
}

_ROWS = (
    # the MultVAE family (paper Tables 2-4)
    Model("multvae", "mixture", "one MultVAE (linear encoder M -> 2d, decoder d -> M, noise std 0.01)", "Table 2"),
    Model("wl", "mixture", "MultVAE with fixed mainstream weights ((MS_max - MS_u)/(MS_max - MS_min))^1.2", "Table 2"),
    Model("moe", "mixture", "100 MultVAE experts, MLP gate", "Table 3"),
    Model("lmoe", "mixture", "100 experts, loss-driven gate softmax_k(1 / L_uk)", "Table 3"),
    Model("lmoe_lc", "mixture", "+ adaptive weights from the loss change, no gap", "Table 4"),
    Model("lmoe_gap_l", "mixture", "+ adaptive weights from the raw loss, with gap", "Table 4"),
    Model("tall", "mixture", "+ adaptive weights from the loss change (window 8), with gap T: TALL", "Table 2"),
    Model("tall_plus", "mixture", "TALL with the loss change per validation item (the improved preset)"),
    Model("uniform_moe", "mixture", "100 experts, uniform gate (a control)"),
    # local learning (paper Table 2)
    Model("loca", "local", "LOCA: 100 local MultVAEs around anchor users, kernel-weighted", "Table 2"),
    Model("lft", "local", "LFT: one fine-tuned MultVAE per user", "Table 2"),
    Model("enlft", "local", "EnLFT: fine-tuned MultVAEs of 100 anchors, aggregated", "Table 2"),
    # closed forms and neighbourhoods (the field's strong baselines)
    Model("pop", "closed", "most popular items (the same list for every user)"),
    Model("itemknn", "closed", "item-based kNN, cosine with shrinkage, top-k neighbours"),
    Model("rp3beta", "closed", "RP3beta: 3-step random walk with popularity penalty beta (Paudel et al. 2016)"),
    Model("ease", "closed", "EASE: closed-form item-item ridge regression, diag(B) = 0 (Steck 2019)"),
    Model("ease_wl", "closed", "EASE with WL user weights (niche users up-weighted)"),
    Model("ease_ms", "closed", "EASE with user weights (MS_u / mean MS)^-p"),
    Model("ease_kkt", "closed", "EASE re-solved with TALL's KKT weights from each user's loss"),
    Model("loca_ease", "closed", "LOCA's anchors and kernels over kernel-weighted local EASEs"),
    # blends: a MultVAE-family model and a closed form, mixed with a weight chosen on validation
    Model("tall_ease", "blend", "TALL (E = 10) and EASE, z-scored scores mixed with beta chosen on validation"),
    Model("lmoe_ease", "blend", "LMoE (E = 10) and EASE, mixed as tall_ease"),
    Model("multvae_ease", "blend", "MultVAE and EASE, mixed as tall_ease"),
    Model("tall_plus_ease", "blend", "tall_plus (E = 10) and EASE, mixed as tall_ease"),
)
MODEL_TABLE: dict[str, Model] = {m.name: m for m in _ROWS}


def model_names(family: str | None = None) -> tuple[str, ...]:
    """Every model name of the table (of one ``family``), in table order."""
    return tuple(m.name for m in _ROWS if family is None or m.family == family)


def model_entry(name: str) -> Model:
    """The table's row of ``name``; ValueError listing the known names otherwise."""
    if name not in MODEL_TABLE:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_TABLE)}")
    return MODEL_TABLE[name]


def family_of(name: str) -> Family:
    return FAMILIES[model_entry(name).family]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One run, resolved once: the dataset name, the split asked for (None: the dataset's default),
    the model's table row and its frozen config (seed included), and the faithful config it is
    compared with. Its settings record (:meth:`settings`) names the run folder and is written as
    ``settings.json``."""

    dataset: str
    model: str
    split: str | None
    config: Any
    faithful: Any

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def family(self) -> Family:
        return family_of(self.model)

    def settings(self, split: str) -> dict[str, Any]:
        """The ``settings.json`` record of this run on the resolved ``split`` name
        (:func:`tall_jax.identity.settings_record`)."""
        fields = self.family.execution_fields
        return identity.settings_record(self.config, dataset=self.dataset, split=split,
                                        execution_fields=fields,
                                        variant=results_lib.variant(self.config, self.faithful, fields))


def resolve_run(dataset: str, model: str, *, seed: int = 0, overrides: dict[str, Any] | None = None,
                split: str | None = None) -> RunPlan:
    """Resolve ``model`` on ``dataset`` with ``seed`` and config ``overrides`` (None values ignored)
    into its :class:`RunPlan`: the one place a run's config is made. ValueError for an unknown model
    or field, a field the model's code never reads, or a value out of range."""
    family = family_of(model)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(family.fields()))
    if unknown:
        raise ValueError(f"{model}: unknown setting(s) {', '.join(unknown)} for the {family.name} family")
    foreign = sorted(k for k in given if not family.reads_field(model, k))
    if foreign:
        raise ValueError(f"{model}: {', '.join(foreign)} not read by this model")
    config = family.make_config(model, dataset, seed, given)
    return RunPlan(dataset=dataset, model=model, split=split, config=config,
                   faithful=family.faithful(model, dataset, seed))


def check_options(model: str, options: RunOptions) -> None:
    """ValueError when ``options`` set something ``model``'s family does not run with (``--mesh`` for
    a local baseline, ``global_from`` for a mixture, ...)."""
    family = family_of(model)
    defaults = RunOptions()
    for name in ("checkpoint_every", "keep_epochs", "mesh", "global_from"):
        if getattr(options, name) != getattr(defaults, name) and name not in family.options:
            users = [f.name for f in FAMILIES.values() if name in f.options]
            raise ValueError(f"{name} applies to the {' and '.join(users)} family's models, not to {model!r}")


def train_run(plan: RunPlan, *, out_dir: str | Path, options: RunOptions = RunOptions(),
              ds: Dataset | None = None, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the resolved ``plan`` and write settings.json, results.json and the per-user arrays into
    exactly ``out_dir``, holding its lock (:func:`tall_jax.files.lock_run_dir`) meanwhile; returns the
    results. ``ds``: the loaded dataset (else loaded here, split ``plan.split``, seed ``plan.seed``).
    ``options.resume`` continues the folder's checkpoint and refuses, naming each field, a folder
    whose settings.json records other settings."""
    check_options(plan.model, options)
    t0 = time.perf_counter()
    if ds is None:
        ds = load_dataset(plan.dataset, split=plan.split, seed=plan.seed, data_dir=data_dir)
    settings = plan.settings(ds.split)
    out = Path(out_dir)
    if options.resume:
        identity.check_settings(out, settings)
    out.mkdir(parents=True, exist_ok=True)  # only once the config and the data are known to be good
    with lock_run_dir(out):
        identity.write_settings(out, settings)
        log.debug("%s: %.1fs to load", plan.model, time.perf_counter() - t0)
        return plan.family.train(plan, ds, out, settings, options)


def run_experiment(dataset: str, model: str, *, out_dir: str | Path, split: str | None = None,
                   seed: int = 0, data_dir: str | Path | None = None, progress: bool = True,
                   resume: bool = False, checkpoint_every: int = 10, keep_epochs: tuple[int, ...] = (),
                   overrides: dict[str, Any] | None = None, global_from: str | Path | None = None,
                   mesh: str | None = None, tensorboard: str | Path | None = None) -> dict[str, Any]:
    """:func:`resolve_run` then :func:`train_run`: train ``model`` on ``dataset`` into exactly
    ``out_dir`` (:func:`default_out_dir` names the command line's folder) and return its results."""
    plan = resolve_run(dataset, model, seed=seed, overrides=overrides, split=split)
    options = RunOptions(progress=progress, resume=resume, checkpoint_every=checkpoint_every,
                         keep_epochs=tuple(keep_epochs), mesh=mesh, global_from=global_from,
                         tensorboard=tensorboard)
    return train_run(plan, out_dir=out_dir, options=options, data_dir=data_dir)


def run_settings(dataset: str, model: str, *, split: str, seed: int = 0,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``settings.json`` record of a run (its resolved config, dataset, split, seed, variant and
    identity hash); ``split`` is the resolved split name."""
    return resolve_run(dataset, model, seed=seed, overrides=overrides).settings(split)


def default_out_dir(root: str | Path, settings: dict[str, Any]) -> Path:
    """The command line's folder of a run with these settings:
    ``root/<dataset>/<model>-E<E>-<hash>/seed<k>`` (models without experts ``<model>-<hash>``); the
    hash covers every setting but the seed and the execution-only fields, so two settings never
    share a folder."""
    return identity.run_dir(root, settings)
