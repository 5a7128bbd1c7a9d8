"""Train TALL (or any model of the model table) and print the per-group NDCG@20 table.

    tall-jax-train                                                  # TALL, 10 experts, synthetic data
    tall-jax-train --model multvae tall                             # two models side by side
    tall-jax-train --dataset ml-1m --model tall --experts 10 --data-dir /path/to/data
    tall-jax-train --dataset ml-1m --model ease --hp lambda=800 --data-dir /path/to/data
    tall-jax-train --dataset my/interactions.csv --model multvae tall   # your own data

(``python examples/train_tall.py ...`` is the same program.) Each model writes settings.json,
results.json, per_user_test.npz and PNG curves into --out/<dataset>/<model>-E<E>-<hash>/seed<k>
(models without experts: <model>-<hash>; <hash> covers every setting but the seed and the
execution-only options, and for your own file its contents, so two settings never share a folder).
A folder that holds a run is never started over silently: --resume continues it (a finished one
has nothing to do), --overwrite starts it afresh. A mistake in the command line, the data or a
setting ends with one "error: ..." line and exit status 2, before any run folder is made.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

from tall_jax import identity, tensorboard
from tall_jax.baselines.config import BaselineConfig, global_config
from tall_jax.baselines.experiment import shared_global
from tall_jax.blend import BlendConfig
from tall_jax.cli import HelpFormatter, Parser, show_progress_logs
from tall_jax.closed.config import ClosedConfig
from tall_jax.configs import DATASET_PRESETS, MODEL_PRESETS, TALLConfig
from tall_jax.datasets import KNOWN_DATASETS, DownloadError, load_dataset, register_dataset
from tall_jax.datasets.download import DEFAULT_TIMEOUT, ENV_OFFLINE, ENV_TIMEOUT, check_timeout
from tall_jax.datasets.own import DEFAULT_KCORE, looks_like_path, parse_columns
from tall_jax.experiment import run_seeds_together
from tall_jax.files import RunLockedError
from tall_jax.flags import add_flags, flag_fields, plain_default
from tall_jax.metrics import RankingResult
from tall_jax.models import (FAMILIES, MODEL_TABLE, RunOptions, check_options, default_out_dir, family_of,
                             resolve_run, train_run)
from tall_jax.sharding import make_mesh, parse_mesh
from tall_jax.state import checkpoint_progress

# The config classes whose fields the command line sets, in the order of their --help groups.
CONFIG_CLASSES = (TALLConfig, BaselineConfig, ClosedConfig, BlendConfig)
# CLI flag (its argparse attribute) -> config field, made from the fields' flags (tall_jax.flags). A
# flag goes to every chosen model whose code reads that field (the model table's Family.reads):
# --experts to the mixtures, --users to LFT, --hp to the closed forms whose grid has that
# hyper-parameter; a flag no chosen model reads is an error.
FLAG_FIELDS = flag_fields(CONFIG_CLASSES)
# The config fields with no flag, on purpose: --model and --seed set model and seed; the rest are the
# published models' constants, fixed by a model's preset, or execution details a library caller may
# set (resolve_run's overrides).
UNFLAGGED: dict[type, tuple[str, ...]] = {
    TALLConfig: ("model", "seed", "latent", "weight_decay_per_expert", "noise_std", "anneal_cap",
                 "total_anneal_steps", "constant_beta", "gate_hidden", "adaptive", "window", "wl_double_step",
                 "eval_batch_size"),
    BaselineConfig: ("model", "seed", "latent", "noise_std", "anchor_stride", "loca_batch", "loca_lr", "loca_reg",
                     "loca_dropout", "loca_beta", "loca_loss_norm", "loca_global_state", "global_wl",
                     "sim_threshold", "alpha_mix", "cos_threshold", "min_size", "max_size", "ft_batch", "ft_lr",
                     "ft_reg", "ft_dropout", "ft_beta", "anchor_penalty", "agg_cut", "memory_budget_gb",
                     "eval_batch"),
    ClosedConfig: ("model", "seed", "anchor_stride", "latent", "solver", "memory_budget_gb", "eval_batch"),
    BlendConfig: ("model", "seed", "eval_batch"),
}
# What a user can get wrong (flags, files, settings, network): one line on stderr, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, DownloadError, OSError)


def _preset(field: str) -> str:
    """'the preset: 40; yelp 15, cds 25, synthetic 10; lmoe_lc 0' for a TALLConfig field."""
    base = {f.name: f.default for f in dataclasses.fields(TALLConfig)}[field]
    special = [f"{name} {values[field]}" for name, values in {**DATASET_PRESETS, **MODEL_PRESETS}.items()
               if field in values and values[field] != base]
    return f"default: the preset, {base}" + (f"; {', '.join(special)}" if special else "")


def _baseline_default(field: str) -> str:
    return f"default: {BaselineConfig.__dataclass_fields__[field].default}"


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _timeout(text: str) -> float:
    try:
        return check_timeout(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _kcore(text: str) -> tuple[int, int]:
    try:
        users, items = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected USERS,ITEMS (two integers), got {text!r}") from None
    if users < 1 or items < 1:
        raise argparse.ArgumentTypeError(f"both must be >= 1, got {text!r}")
    return users, items


def _columns(text: str) -> tuple[str, ...]:
    try:
        return parse_columns(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _dataset(text: str) -> str:
    if text in KNOWN_DATASETS or looks_like_path(text):
        return text
    raise argparse.ArgumentTypeError(
        f"unknown dataset {text!r}; choose {', '.join(KNOWN_DATASETS)} or give the path of your own "
        ".csv, .tsv or .dat interaction file")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="synthetic", type=_dataset, metavar="NAME|FILE",
                   help=f"a built-in dataset ({', '.join(KNOWN_DATASETS)}) or the path of your own "
                        ".csv/.tsv/.dat interaction file (README: 'Your own data')")
    d.add_argument("--split", default=None,
                   help="ml-1m: 'authors' or 'random'; every other dataset: 'random' (default: authors "
                        "for ml-1m, random otherwise)")
    d.add_argument("--seed", type=_nonneg_int, nargs="+", default=[0],
                   help="seeds: each is one run of every model (its split, init and shuffles)")
    d.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder holding the raw files (e.g. DIR/ml-1m/raw/ratings.dat); searched "
                        "before $TALL_JAX_DATA and the user cache (default: none)")
    d.add_argument("--offline", action="store_true", default=None,
                   help=f"never download a missing file (default: off, or on with {ENV_OFFLINE}=1)")
    d.add_argument("--download-timeout", type=_timeout, default=None, metavar="SECONDS",
                   help=f"seconds each download URL may take (default: ${ENV_TIMEOUT} or {DEFAULT_TIMEOUT:g})")
    d.add_argument("--columns", type=_columns, default=None, metavar="user,item[,rating,timestamp]",
                   help="your own file: its columns in order, for a file without a header line "
                        "('skip' ignores one) (default: read the names from the header line)")
    d.add_argument("--min-rating", type=_finite, default=None, metavar="R",
                   help="your own file: keep only interactions rated >= R (explicit ratings) "
                        "(default: every row is a positive)")
    d.add_argument("--kcore", type=_kcore, default=None, metavar="USERS,ITEMS",
                   help="your own file: keep users and items with at least this many interactions "
                        f"(iterated k-core filter) (default: {DEFAULT_KCORE[0]},{DEFAULT_KCORE[1]})")
    p.add_argument("--model", nargs="+", default=["tall"], choices=list(MODEL_TABLE), metavar="MODEL",
                   help="one or more of the model table (README, 'Models'): " + ", ".join(MODEL_TABLE) +
                        " (default: tall); the MultVAE family runs first, so a local baseline reuses a "
                        "global model another run of the command already trained with the same settings "
                        "(LOCA a multvae run, LFT the WL of an enlft run, and vice versa)")
    p.add_argument("--out", default="runs", help="output root")
    m = p.add_argument_group("MultVAE / WL / mixtures (unset: the faithful preset of dataset and model)")
    b = p.add_argument_group("LOCA / LFT / EnLFT")
    c = p.add_argument_group("closed forms and neighbourhoods (pop, itemknn, rp3beta, ease, ease_wl, "
                             "ease_ms, ease_kkt, loca_ease)")
    add_flags([(TALLConfig, m, lambda cls, field: _preset(field)),
               (BaselineConfig, b, lambda cls, field: _baseline_default(field)),
               (ClosedConfig, c, plain_default), (BlendConfig, c, plain_default)])
    b.add_argument("--global-from", default=None, metavar="RUN_DIR",
                   help="LOCA/LFT/EnLFT: reuse a finished run folder as the global model (a multvae run "
                        "for LOCA, a wl run with the LFT-repo settings for LFT/EnLFT) instead of training "
                        "one (default: train it)")
    r = p.add_argument_group("running")
    r.add_argument("--together", action="store_true",
                   help="train the --seed values of each model as one vmapped program (tall_jax.fit_seeds; "
                        "for accelerators, where one E = 10 run leaves the device idle; needs a split "
                        "shared by the seeds, i.e. ml-1m's authors split; no checkpoints)")
    r.add_argument("--resume", action="store_true",
                   help="continue each run folder's checkpoint (a finished run: nothing to do); an "
                        "error when there is nothing to resume or its settings.json records other "
                        "settings (default: off)")
    r.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run folder that already holds a run, deleting it (default: "
                        "off: such a folder is an error without --resume)")
    r.add_argument("--no-progress", action="store_true", help="log one line per epoch instead of a progress bar")
    r.add_argument("--mesh", default=None, metavar="expert=N",
                   help="split a mixture's experts over N devices (tall_jax.sharding; E divisible by N; "
                        "checkpoints are written shard by shard) (default: one device)")
    r.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write each epoch's scalars (loss, validation score and NDCG@20 per group, gate "
                        "entropy, seconds) as TensorBoard event files into DIR/<dataset>/<model folder>/seed<k>, "
                        "beside the JSON history; closed forms have no epochs (needs tensorboardX: pip install "
                        "'tall_jax[tensorboard]'; docs/tensorboard.md) (default: none)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _fail(e: BaseException) -> int:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


def _given(args: argparse.Namespace) -> dict[str, object]:
    """The config fields the command line sets (flag -> field, unset flags left out)."""
    values = {}
    for flag, field in FLAG_FIELDS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        values[field] = tuple(value) if isinstance(value, list) else value  # a config field is hashable
    return values


def _readers(field: str) -> str:
    """Who reads a config field, for a message: 'the mixture family', 'lft and enlft', ..."""
    names = []
    for family in FAMILIES.values():
        models = [m for m, row in MODEL_TABLE.items() if row.family == family.name]
        reading = [m for m in models if family.reads_field(m, field)]
        if reading:
            rest = [m for m in models if m not in reading]
            names.append(f"the {family.name} family" if not rest else
                         f"the {family.name} family but {', '.join(rest)}" if len(rest) < len(reading) else
                         " and ".join(reading))
    return (", ".join(names[:-1]) + " and " + names[-1]) if len(names) > 1 else (names[0] if names else "no model")


def model_overrides(model: str, given: dict[str, object]) -> dict[str, object]:
    """The part of the command line's settings ``model``'s code reads (--experts: the mixtures, not
    MultVAE; --users: LFT; --hp NAME=V: the closed forms whose grid has NAME)."""
    family = family_of(model)
    out = {k: v for k, v in given.items() if family.reads_field(model, k)}
    if "hp" in out:
        out["hp"] = tuple(sorted((n, v) for n, v in out["hp"] if family.reads_field(model, f"hp.{n}"))) or None
    return {k: v for k, v in out.items() if v is not None}


def _check_flags(args: argparse.Namespace, given: dict[str, object]) -> None:
    """ValueError for a flag no chosen model reads, and for options the chosen models do not run with."""
    by_field = {field: flag for flag, field in FLAG_FIELDS.items()}
    for field in given:
        if field == "hp":
            for name, _ in given["hp"]:
                if not any(family_of(m).reads_field(m, f"hp.{name}") for m in args.model):
                    raise ValueError(f"--hp {name}=...: no hyper-parameter {name!r} in the grid of --model "
                                     f"{' '.join(args.model)} (docs/closed_forms.md lists the grids)")
        elif not any(family_of(m).reads_field(m, field) for m in args.model):
            raise ValueError(f"--{by_field[field].replace('_', '-')} applies to {_readers(field)}, not to "
                             f"--model {' '.join(args.model)}")
    if args.global_from is not None:
        if not any(m for m in args.model if "global_from" in family_of(m).options):
            raise ValueError(f"--global-from applies to the local baselines (loca, lft, enlft) only; --model "
                             f"is {' '.join(args.model)}")
        if not Path(args.global_from).is_dir():
            raise FileNotFoundError(f"--global-from {args.global_from}: no such run folder")
    if args.mesh is not None:
        make_mesh(*parse_mesh(args.mesh))
        for m in args.model:
            check_options(m, RunOptions(mesh=args.mesh))
    if args.together:
        clash = [f for f, on in (("--resume", args.resume), ("--mesh", args.mesh is not None),
                                 ("--overwrite", args.overwrite)) if on]
        clash += [m for m in args.model if MODEL_TABLE[m].family != "mixture"]
        if clash:
            raise ValueError(f"--together trains the MultVAE family without checkpoints or a mesh; "
                             f"not with {', '.join(clash)}")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run folder and --overwrite starts it afresh: choose one")


def _events(args: argparse.Namespace, root: Path, out: Path) -> Path | None:
    """The --tensorboard folder of the run in ``out``: DIR/<dataset>/<model folder>/seed<k> (None without
    the flag)."""
    return None if args.tensorboard is None else Path(args.tensorboard) / out.relative_to(root)


def _repeated(values: list) -> list:
    return sorted({v for v in values if values.count(v) > 1}, key=str)


def _nothing_to_resume(out: Path, settings: dict, root: Path) -> ValueError:
    """The error of a --resume that finds nothing to resume in ``out``: it names the runs of this
    dataset and model whose settings differ, field by field (a mistyped flag, other data)."""
    others = identity.similar_runs(root, settings)
    hint = ("; runs of this dataset and model with other settings: " + "; ".join(
        f"{folder} ({', '.join(diff)})" for folder, diff in others)) if others else (
        "; no run of this dataset and model has been started under " + str(root))
    return ValueError(f"--resume: nothing to resume in {out} (no checkpoint, no results){hint}")


def _check_folder(out: Path, settings: dict, args: argparse.Namespace, any_started: bool) -> str:
    """What to do with a run folder: "run", "resume", "done" (finished, --resume), "overwrite", or
    "missing" (--resume, and none of the command's folders holds anything: an error); ValueError
    when it holds a run and neither --resume nor --overwrite says what to do with it. Under --resume
    an empty folder starts afresh when another run of the same command has something to resume
    (a multi-seed command stopped half-way)."""
    state = identity.folder_state(out)
    if args.resume:
        identity.check_settings(out, settings)
        if state == "empty" and not any_started:
            return "missing"
        return {"finished": "done", "started": "resume"}.get(state, "run")
    if state != "empty":
        if args.overwrite:
            return "overwrite"
        what = "a finished run" if state == "finished" else "a started run (a checkpoint)"
        raise ValueError(f"{out} already holds {what}: --resume continues it, --overwrite deletes it and "
                         "starts afresh")
    return "run"


def _show(model: str, seed: int, res: dict, out: Path) -> RankingResult:
    summary = RankingResult.from_json(res["test"])
    if "best_epoch" in res:
        print(f"\n{model} seed {seed}: best epoch {res['best_epoch']} of {res['epochs_run']}, "
              f"{res['wall_time_s']:.0f}s ({res['seconds_per_epoch']:.2f}s/epoch) -> {out}")
    else:
        chosen = res.get("chosen_hp")
        shown = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in (chosen or {}).items())
        extra = f"; chosen on validation: {shown}" if chosen else ""
        users = f"; evaluated users: {res['evaluated_users']}" if "evaluated_users" in res else ""
        print(f"\n{model} seed {seed}: {res['wall_time_s']:.0f}s{users}{extra} -> {out}")
    if res.get("variant"):
        print(f"variant (differs from the faithful setting): {res['variant']}")
    print(summary.table(("ndcg@20", "recall@20"), reference=res.get("paper")))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    show_progress_logs()
    root = Path(args.out)
    # 1. Everything a user can get wrong is checked, and the data loaded, before any run folder.
    try:
        for flag, values in (("--model", args.model), ("--seed", args.seed)):
            if _repeated(values):
                raise ValueError(f"{flag} {' '.join(map(str, values))}: {', '.join(map(str, _repeated(values)))} "
                                 "given twice (each would train the same run folder again)")
        if args.tensorboard is not None and not tensorboard.available():
            raise ValueError(f"--tensorboard needs the optional package tensorboardX, which is not installed: "
                             f"{tensorboard.INSTALL}")
        # the MultVAE family first: its runs can serve as the local baselines' global models
        args.model = sorted(args.model, key=lambda m: MODEL_TABLE[m].family != "mixture")
        own = args.dataset not in KNOWN_DATASETS
        if own:
            dataset = register_dataset(args.dataset, columns=args.columns, min_rating=args.min_rating,
                                       kcore=args.kcore or DEFAULT_KCORE)
        else:
            dataset = args.dataset
            given = [f for f in ("columns", "min_rating", "kcore") if getattr(args, f) is not None]
            if given:
                raise ValueError(f"{', '.join('--' + f.replace('_', '-') for f in given)} apply to your "
                                 f"own data file only, not to the built-in dataset {dataset!r}")
        given = _given(args)
        _check_flags(args, given)
        plans = {}
        for seed in args.seed:  # resolve every run once, before the first long one
            for model in args.model:
                plan = resolve_run(dataset, model, seed=seed, overrides=model_overrides(model, given),
                                   split=args.split)
                if MODEL_TABLE[model].family == "local":
                    global_config(dataset, plan.config)
                plans[seed, model] = plan
        split_of = {}
        for seed in args.seed:  # find, download, split and cache the data
            split_of[seed] = load_dataset(dataset, split=args.split, seed=seed, data_dir=args.data_dir,
                                          download=None if args.offline is None else not args.offline,
                                          download_timeout=args.download_timeout).split
        outs, todo, settings_of = {}, {}, {}
        for (seed, model), plan in plans.items():  # each run's folder, named by its settings
            settings_of[seed, model] = plan.settings(split_of[seed])
            outs[seed, model] = default_out_dir(root, settings_of[seed, model])
        started = any(identity.folder_state(out) != "empty" for out in outs.values())
        for key, out in outs.items():
            todo[key] = _check_folder(out, settings_of[key], args, started)
            if todo[key] == "missing":
                raise _nothing_to_resume(out, settings_of[key], root)
    except USER_ERRORS as e:
        return _fail(e)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # 2. The runs.
    for model in args.model:
        print(f"[{model}] {json.dumps(plans[args.seed[0], model].config.to_dict())}")
    summaries = {}
    try:
        together = {}
        if args.together:
            for model in args.model:
                runs = run_seeds_together([plans[s, model] for s in args.seed],
                                          out_dirs=[outs[s, model] for s in args.seed],
                                          data_dir=args.data_dir, progress=not args.no_progress)
                together.update({(s, model): r for s, r in zip(args.seed, runs)})
                if args.tensorboard is not None:
                    for s, r in zip(args.seed, runs):
                        tensorboard.write_history(_events(args, root, outs[s, model]), r["history"])
        for seed in args.seed:
            for model in args.model:
                out, plan = outs[seed, model], plans[seed, model]
                if todo[seed, model] == "done":
                    print(f"[{model}] seed {seed}: {out} is finished; nothing to resume (its results below)")
                    res = json.loads((out / "results.json").read_text())
                    summaries[(model, seed)] = _show(model, seed, res, out)
                    continue
                if todo[seed, model] == "resume":
                    done = checkpoint_progress(out)
                    at = f" at epoch {done[0]} (best {done[1]})" if done else " (its finished parts are reused)"
                    print(f"[{model}] seed {seed}: resuming {out}{at}")
                if todo[seed, model] == "run" and args.resume:
                    print(f"[{model}] seed {seed}: nothing to resume in {out}; starting it")
                if todo[seed, model] == "overwrite":
                    print(f"[{model}] seed {seed}: --overwrite: deleting {out} and starting afresh")
                    shutil.rmtree(out)
                global_from = None
                if MODEL_TABLE[model].family == "local":
                    global_from = args.global_from or shared_global(
                        model, plan.config, dataset, {m: outs[seed, m] for m in args.model if m != model})
                    if global_from is not None and args.global_from is None:
                        print(f"[{model}] seed {seed}: reuses the global model in {global_from} (same settings)")
                options = RunOptions(progress=not args.no_progress, resume=todo[seed, model] == "resume",
                                     mesh=args.mesh, global_from=global_from,
                                     tensorboard=_events(args, root, out))
                res = together.get((seed, model)) or train_run(plan, out_dir=out, options=options,
                                                               data_dir=args.data_dir)
                summaries[(model, seed)] = _show(model, seed, res, out)
    except RunLockedError as e:
        return _fail(e)
    except USER_ERRORS as e:
        return _fail(e)
    except FloatingPointError as e:  # diverged: most often a learning rate too large for the data
        return _fail(f"{e}; the run diverged (a smaller --lr may help)")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if len(summaries) > 1:
        print("\nTest NDCG@20 (best validation epoch):")
        for (model, seed), summary in summaries.items():
            row = "  ".join(f"{k}={v['ndcg@20']:.4f}" for k, v in summary.by_group().items())
            print(f"  {model:<12} seed {seed}: overall={summary.overall['ndcg@20']:.4f}  {row}")
    return 0


def cli() -> None:
    """The ``tall-jax-train`` console command."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
