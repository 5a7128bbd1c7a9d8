"""Command-line pieces shared by ``examples/train_two_tower.py`` and ``python -m tall_jax.two_tower.study``:
the flags, the presets, the training config and the per-seed data builder."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import math
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from tall_jax.cli import HelpFormatter, Parser
from tall_jax.datasets import load_dataset
from tall_jax.datasets.cache import file_fingerprint
from tall_jax.results import variant
from tall_jax.two_tower.experiment import ALL_MODELS, MODELS, PROTOCOLS, TrainConfig
from tall_jax.two_tower.log_cache import build_log_cache
from tall_jax.two_tower.log_days import (
    LogProtocol, aligned_features, groups_by_size, groups_from_map, make_log_two_tower, user_feature_rows,
)
from tall_jax.two_tower.logs import log_files, read_groups
from tall_jax.two_tower.ml1m import make_ml1m_days, make_ml1m_two_tower, svd_user_embedding
from tall_jax.two_tower.parallel import (
    DataParallel, check_batch_size, make_data_parallel, parse_data_mesh, start_distributed,
)
from tall_jax.two_tower.synthetic import SyntheticConfig, make_synthetic_two_tower

# preset -> (width d, batch size); every explicit flag wins over its preset value
PRESETS = {
    "cpu": {"width": 128, "batch_size": 1024},  # fits 2 CPU cores: a 5-seed synthetic study in minutes
    "paper": {"width": 512, "batch_size": 8192},  # paper §4.2: d = 512, batch 8192 (Adam, lr 1e-3)
}
DEFAULT_EPOCHS = {"synthetic": 8, "ml-1m": 4, "log": 3}
LOG_PATH_FLAGS = ("--data", "--cache", "--groups", "--user-features", "--title-features")


class _DeprecatedSeeds(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print("warning: --seeds is deprecated; use --seed (it takes one or several values)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def make_parser(description: str, *, default_seeds: list[int]) -> argparse.ArgumentParser:
    p = Parser(description=description, allow_abbrev=False,
               formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=("synthetic", "ml-1m"), default=None,
                   help="which built-in data (default: none; give it or --data for your own log)")
    g = p.add_argument_group("your own log (docs/two_tower.md#your-own-logs)")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="a log: a .csv / .csv.gz / .parquet file or a folder of them, columns user, title, "
                        "territory, day and optionally label (default: none)")
    g.add_argument("--cache", default=None, metavar="DIR",
                   help="the log's cache folder (default: <user cache>/two_tower_logs/<name>-<hash of the path>)")
    g.add_argument("--user-features", default=None, metavar="FILE",
                   help="user vectors: FILE.npy [users, F] with FILE.ids beside it, one user id per line "
                        "(default: a learned id embedding)")
    g.add_argument("--user-features-on-disk", action="store_true",
                   help="leave the user vectors in FILE.npy and read each batch's rows from it, for a table "
                        "larger than memory (slower: docs/two_tower.md#your-own-logs) (default: held in memory)")
    g.add_argument("--title-features", default=None, metavar="FILE",
                   help="title vectors, the same format (default: a learned id embedding)")
    g.add_argument("--groups", default=None, metavar="FILE",
                   help="a CSV file territory,group (default: groups by territory size, --n-groups)")
    g.add_argument("--n-groups", type=int, default=None,
                   help="without --groups: territories by number of users cut into this many groups "
                        "(default: 4, or the number of territories if fewer)")
    g.add_argument("--active-threshold", type=int, default=1,
                   help="a user is active on a day with at least this many positives on earlier days")
    g.add_argument("--test-days", type=int, default=3, help="the log's last days that are test days")
    p.add_argument("--seed", dest="seeds", type=int, nargs="+", default=default_seeds, metavar="SEED",
                   help="one or several seeds (data and training); the spelling train_tall.py uses")
    p.add_argument("--seeds", dest="seeds", type=int, nargs="+", action=_DeprecatedSeeds, metavar="SEED",
                   help="deprecated spelling of --seed (default: none)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu",
                   help="sizes: cpu = d 128, batch 1024; paper = d 512, batch 8192 (paper §4.2)")
    p.add_argument("--width", type=int, default=None, help="tower / head width d (default: from --preset)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per step (default: from --preset)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"most epochs of the first fit, early stopping may end it sooner (default: {DEFAULT_EPOCHS})")
    p.add_argument("--inc-epochs", type=int, default=2, help="most epochs of each daily incremental update")
    p.add_argument("--patience", type=int, default=2, help="early stopping: epochs without a better validation AP")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-3)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="incremental",
                   help="incremental: the day-i model is trained on days up to i-1 (paper); oneshot: one model "
                        "trained on the days before the first test day scores every test day")
    p.add_argument("--alpha", type=float, default=4.0,
                   help="negatives drawn per positive (a log with a label column: not used, its rows are the examples)")
    p.add_argument("--n-users", type=int, default=None, help="synthetic only: user universe (default: SyntheticConfig)")
    p.add_argument("--data-dir", default=None,
                   help="ml-1m only: a folder holding ml-1m/raw/{ratings,users,movies}.dat[.gz] (and ml-1m/tall_split "
                        "for --ml1m-days split) (default: $TALL_JAX_DATA, then the user cache)")
    p.add_argument("--ml1m-days", choices=("timestamps", "split"), default="timestamps",
                   help="ml-1m days: from the rating timestamps (raw ratings.dat), or the earlier one-shot "
                        "adaptation on the TALL authors' split (one training day, three test user sets)")
    p.add_argument("--user-embedding", choices=("multvae", "svd"), default="svd",
                   help="ml-1m user features: MultVAE mu or truncated SVD (64) of the user's history")
    p.add_argument("--vae-epochs", type=int, default=50, help="max MultVAE epochs for --user-embedding multvae")
    p.add_argument("--control", action="store_true",
                   help="also train mtl_1head: the MTL model with one task block shared by all groups")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="option: decoupled weight decay on the shared towers' kernels (AdamW); paper: none")
    p.add_argument("--head-dropout", type=float, default=0.0, help="option: dropout rate on the task-block outputs")
    p.add_argument("--head-rank", type=int, default=0, help="option: low-rank task blocks of rank r (0 = full d x d)")
    p.add_argument("--mesh", default=None, metavar="data=N",
                   help="data parallel: split each batch over N devices (--batch-size must divide by N); "
                        "parameters, optimiser state and BatchNorm statistics replicated (default: one device)")
    p.add_argument("--distributed", action="store_true",
                   help="one process of several (jax.distributed), from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES "
                        "and JAX_PROCESS_ID; the mesh spans every process's devices; only process 0 writes files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fill preset values and reject user mistakes with ``p.error`` (exit code 2)."""
    if (args.dataset is None) == (args.data is None):
        p.error("give one of --dataset (synthetic, ml-1m) or --data PATH (your own log)")
    if args.data is not None:
        args.dataset = "log"
    log_only = ("cache", "user_features", "title_features", "groups")
    used = [f"--{k.replace('_', '-')}" for k in log_only if getattr(args, k) is not None]
    if used and args.dataset != "log":
        p.error(f"{used[0]} applies to --data only")
    if args.user_features_on_disk and args.user_features is None:
        p.error("--user-features-on-disk applies to --user-features only")
    if (args.n_groups is not None and args.n_groups < 1) or args.active_threshold < 0 or args.test_days < 1:
        p.error("--n-groups and --test-days must be >= 1, --active-threshold >= 0")
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS[args.dataset]
    if min(args.seeds) < 0:
        p.error("--seed values must be >= 0")
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seed values must be distinct")
    for name in ("width", "batch_size", "epochs", "patience"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.inc_epochs < 0 or args.head_rank < 0:
        p.error("--inc-epochs and --head-rank must be >= 0")
    for flag, value, ok, need in (
        ("--alpha", args.alpha, args.alpha > 0, "> 0"),
        ("--lr", args.lr, args.lr > 0, "> 0"),
        ("--weight-decay", args.weight_decay, args.weight_decay >= 0, ">= 0"),
        ("--head-dropout", args.head_dropout, 0 <= args.head_dropout < 1, "in [0, 1)"),
    ):  # nan fails every comparison, inf passes "> 0": both are rejected here
        if not (ok and math.isfinite(value)):
            p.error(f"{flag} must be a finite number {need}, got {value:g}")
    if args.n_users is not None and args.dataset != "synthetic":
        p.error("--n-users applies to --dataset synthetic only")
    if args.n_users is not None and args.n_users < 1000:
        p.error("--n-users must be >= 1000")
    if args.dataset != "ml-1m" and args.data_dir is not None:
        p.error("--data-dir applies to --dataset ml-1m only")
    args.n_data = None
    if args.mesh is not None:
        try:
            args.n_data = parse_data_mesh(args.mesh)
        except ValueError as e:
            p.error(str(e))
        if args.batch_size % args.n_data:
            p.error(f"--batch-size {args.batch_size} must be divisible by the {args.n_data} devices of --mesh {args.mesh}")
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        what = "is a file, not a folder" if Path(args.data_dir).expanduser().exists() else "no such folder"
        p.error(f"--data-dir {args.data_dir}: {what}")
    return args


def data_parallel_of(args) -> DataParallel | None:
    """The devices of a run: ``--distributed`` starts ``jax.distributed`` (before any other jax call),
    then ``--mesh data=N`` (or, under ``--distributed``, every device) is the data-parallel mesh; None
    for one device. Too few devices, or a batch that does not split over all of them, raise ValueError."""
    if args.distributed:
        start_distributed()
    if args.n_data is None and not args.distributed:
        return None
    dp = make_data_parallel(args.n_data)
    check_batch_size(args.batch_size, dp.n_data)
    return dp


def models_of(args) -> tuple[str, ...]:
    return MODELS + (("mtl_1head",) if args.control else ())


def train_config(args) -> TrainConfig:
    return TrainConfig(width=args.width, batch_size=args.batch_size, learning_rate=args.lr, epochs=args.epochs,
                       protocol=args.protocol, patience=args.patience, inc_epochs=args.inc_epochs,
                       weight_decay=args.weight_decay, head_dropout=args.head_dropout, head_rank=args.head_rank)


def data_settings(args) -> dict:
    """Everything that determines the data of a seed (for the study's resume check)."""
    keys = ("dataset", "alpha", "n_users", "ml1m_days", "user_embedding", "vae_epochs")
    out = {k: getattr(args, k) for k in keys}
    if args.dataset == "log":  # by name and content (no local path: settings reach pages)
        for k in ("data", "user_features", "title_features", "groups"):
            out[k] = _content_id(getattr(args, k), k) if getattr(args, k) else None
        out.update(n_groups=args.n_groups, active_threshold=args.active_threshold, test_days=args.test_days)
    return out


def _content_id(path: str, what: str) -> str:
    """``name@<sha256 prefix>`` of a log (all its files) or of a feature / groups file (with its .ids)."""
    p = Path(path).expanduser()
    files = log_files(p) if what == "data" else [p, p.with_suffix(".ids")] if what.endswith("features") else [p]
    digest = hashlib.sha256("".join(file_fingerprint(f)["sha256"] for f in files if f.is_file()).encode())
    return f"{p.name}@{digest.hexdigest()[:12]}"


def settings_of(args) -> dict:
    """The resolved settings of a two-tower run, seeds aside: data, training config, models."""
    return {"data": data_settings(args), "train": dataclasses.asdict(train_config(args)),
            "models": list(models_of(args))}


def variant_of(args) -> str:
    """How the training config departs from ``TrainConfig``'s paper values (d 512, batch 8192, ...);
    ``eval_batch_size`` only changes how scoring is batched."""
    return variant(train_config(args), TrainConfig(), execution_fields=("eval_batch_size",))


def make_builder(args, first_seed: int | None = None) -> Callable[[int], object]:
    """``seed -> TwoTowerData``; a seed-independent ML-1M user embedding is computed once.

    The data of ``first_seed`` (default: the first of ``args.seeds``) is built here, so a missing or
    malformed data file fails before the caller makes its output folder; it is handed out once."""
    build = _builder(args)
    seed0 = args.seeds[0] if first_seed is None else first_seed
    ready = {seed0: build(seed0)}
    return lambda seed: ready.pop(seed) if seed in ready else build(seed)


def _log_builder(args) -> Callable[[int], object]:
    """``seed -> TwoTowerData`` of ``--data``: the cache built (or reused) once, groups and features
    read once."""
    cache = build_log_cache(args.data, args.cache, progress=not args.no_progress)
    m = cache.manifest
    names = m["territories"]
    if args.groups:
        group_T, group_names = groups_from_map(read_groups(args.groups), names, args.groups)
    else:
        users_T = np.bincount(cache.array("user_territory"), minlength=len(names))
        group_T = groups_by_size(users_T, names, args.n_groups or min(4, len(names)))
        group_names = [f"G{g + 1}" for g in range(int(group_T.max()) + 1)]
    user_x = item_x = None
    if args.user_features:
        ids = cache.array("user_ids")
        user_x = (user_feature_rows(args.user_features, ids) if args.user_features_on_disk
                  else aligned_features(args.user_features, "user", ids))
    if args.title_features:
        item_x = aligned_features(args.title_features, "title", m["titles"])
    proto = LogProtocol(n_test_days=args.test_days, active_threshold=args.active_threshold, alpha=args.alpha)
    return lambda seed: make_log_two_tower(cache, proto, seed, group_T=group_T, group_names=group_names,
                                           user_x=user_x, item_x=item_x)


def _builder(args) -> Callable[[int], object]:
    if args.dataset == "log":
        return _log_builder(args)
    if args.dataset == "synthetic":
        syn = dataclasses.replace(SyntheticConfig(), alpha=args.alpha,
                                  **({"n_users": args.n_users} if args.n_users else {}))
        return lambda seed: make_synthetic_two_tower(syn, seed)
    progress = not args.no_progress
    if args.ml1m_days == "timestamps":
        embed = args.user_embedding
        if embed == "multvae":  # trained here, in the experiment layer; the data builder trains nothing
            # why: the MultVAE embedding loads the TALL training stack (fit, checkpoints); only this
            # choice needs it, and the command's argument errors come before it
            from tall_jax.two_tower.embedding import multvae_history_embedding

            embed = functools.partial(multvae_history_embedding, vae_epochs=args.vae_epochs, progress=progress)
        cache: dict = {}

        def build(seed: int):
            if "emb" not in cache:
                first = make_ml1m_days(args.data_dir, seed=seed, alpha=args.alpha, user_embedding=embed)
                cache["emb"] = (first.user_x, first.info["user_embedding"])
                return first
            return make_ml1m_days(args.data_dir, seed=seed, alpha=args.alpha, user_embedding=cache["emb"])

        return build
    ds = load_dataset("ml-1m", split="authors", data_dir=args.data_dir, download=False)
    if args.user_embedding == "multvae":
        # why: as above, the TALL training stack only for a MultVAE embedding
        from tall_jax.two_tower.embedding import multvae_user_embedding

        emb, name = multvae_user_embedding(ds, max_epochs=args.vae_epochs, progress=progress), "multvae_mu"
    else:
        emb, name = svd_user_embedding(ds.train), "svd64"
    return lambda seed: make_ml1m_two_tower(ds, args.data_dir, emb, seed=seed, embedding_name=name, alpha=args.alpha)


def user_error_message(e: Exception, prog: str) -> str:
    """The message of a missing-file / bad-input error, without hints that name another command's flags."""
    msg = re.sub(r"\(download=False; CLI [^)]*\)", f"({prog} never downloads)", str(e))
    if isinstance(e, FileNotFoundError) and "--data-dir" not in msg:
        msg += " Pass --data-dir DIR (a folder with ml-1m/raw/... or ml-1m/tall_split/...) or set $TALL_JAX_DATA."
    return msg


def run_main(main: Callable[[], int], prog: str) -> None:
    """Exit 2 with a one-line message on a user mistake (missing data, bad input) or a diverged run; other
    errors surface."""
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {' '.join(user_error_message(e, prog).split())}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:  # diverged: most often a learning rate too large for the data
        msg = " ".join(str(e).split())
        print(f"error: {msg}; the run diverged (a smaller --lr may help)", file=sys.stderr)
        sys.exit(2)


__all__ = ["PRESETS", "ALL_MODELS", "make_parser", "check_args", "models_of", "data_parallel_of", "train_config",
           "make_builder", "data_settings", "settings_of", "variant_of", "run_main"]
