"""``python -m tall_jax.datasets stats --dataset ml-1m``: dataset, split and mainstream statistics.

``--dataset`` is a built-in name or the path of your own .csv/.tsv/.dat interaction file. A mistake
(unknown flag, missing file, bad line, no network) ends with one "error: ..." line and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from tall_jax import protocol
from tall_jax.cli import HelpFormatter, Parser, show_progress_logs
from tall_jax.datasets import KNOWN_DATASETS, load_dataset
from tall_jax.datasets.download import DEFAULT_TIMEOUT, ENV_OFFLINE, ENV_TIMEOUT, DownloadError, check_timeout
from tall_jax.datasets.own import DEFAULT_KCORE, looks_like_path, parse_columns


def _typed(convert):
    def parse(text: str):
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = convert.__name__
    return parse


def _dataset(text: str) -> str:
    if text in KNOWN_DATASETS or looks_like_path(text):
        return text
    raise ValueError(f"unknown dataset {text!r}; choose {', '.join(KNOWN_DATASETS)} or give the path "
                     "of your own .csv, .tsv or .dat interaction file")


def _nonneg(text: str) -> int:
    if int(text) < 0:
        raise ValueError(f"must be >= 0, got {text}")
    return int(text)


def _kcore(text: str) -> tuple[int, int]:
    parts = [int(x) for x in text.split(",")]
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"expected USERS,ITEMS, two integers >= 1, got {text!r}")
    return parts[0], parts[1]


def _finite(text: str) -> float:
    if not math.isfinite(float(text)):
        raise ValueError(f"must be a finite number, got {text!r}")
    return float(text)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tall_jax.datasets", description=__doc__, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    s = sub.add_parser("stats", help="print users, items, split sizes, mainstream groups",
                       formatter_class=HelpFormatter, allow_abbrev=False)
    s.add_argument("--dataset", required=True, type=_typed(_dataset), metavar="NAME|FILE",
                   help=f"one of {', '.join(KNOWN_DATASETS)}, or the path of your own .csv/.tsv/.dat "
                        "file (required, no default)")
    s.add_argument("--split", default=None, help="authors|random (default: authors for ml-1m, else random)")
    s.add_argument("--seed", type=_typed(_nonneg), default=0, help="seed of the random split")
    s.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder holding the raw files, searched before $TALL_JAX_DATA and the user "
                        "cache (default: none)")
    s.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where processed splits are cached (default: <user cache>/processed)")
    s.add_argument("--offline", "--no-download", dest="offline", action="store_true", default=None,
                   help=f"never download missing files (default: off, or on with {ENV_OFFLINE}=1)")
    s.add_argument("--download-timeout", type=_typed(check_timeout), default=None, metavar="SECONDS",
                   help=f"seconds each download URL may take (default: ${ENV_TIMEOUT} or {DEFAULT_TIMEOUT:g})")
    s.add_argument("--columns", type=_typed(parse_columns), default=None,
                   metavar="user,item[,rating,timestamp]",
                   help="your own file without a header: its columns in order (default: the header line)")
    s.add_argument("--min-rating", type=_typed(_finite), default=None, metavar="R",
                   help="your own file: keep interactions rated >= R (default: every row is a positive)")
    s.add_argument("--kcore", type=_typed(_kcore), default=None, metavar="USERS,ITEMS",
                   help="your own file: keep users and items with at least this many interactions "
                        "(a true iterative k-core: both hold at the end) "
                        f"(default: {DEFAULT_KCORE[0]},{DEFAULT_KCORE[1]})")
    s.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def stats(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset, split=args.split, seed=args.seed, data_dir=args.data_dir,
                      cache_dir=args.cache_dir,
                      download=None if args.offline is None else not args.offline,
                      download_timeout=args.download_timeout, columns=args.columns,
                      min_rating=args.min_rating, kcore=args.kcore)
    t_load = time.perf_counter() - t0
    c = ds.counts()
    density = c["interactions"] / (c["users"] * c["items"])
    print(f"dataset       {ds.name} (split {ds.split}, seed {ds.seed})")
    print(f"source        {ds.info.get('source', '?')}")
    print(f"users         {c['users']:,}")
    print(f"items         {c['items']:,}")
    print(f"interactions  {c['interactions']:,}   density {density:.4%}")
    print(f"train/valid/test  {c['train']:,} / {c['valid']:,} / {c['test']:,}")
    print(f"users without a validation item: {c['users_without_valid']:,}; "
          f"without a test item: {c['users_without_test']:,}")
    read = ds.info.get("read")
    if read:  # your own file
        rated = (f", {read['below_min_rating']:,} rated below {ds.info['min_rating']:g} dropped"
                 if ds.info.get("min_rating") is not None else "")
        print(f"read          {read['rows']:,} rows{rated}, {read['duplicates_dropped']:,} repeated pairs "
              f"dropped, {read.get('ids_stripped', 0):,} ids with spaces around them stripped")
    print(f"k-core rule   {ds.info.get('kcore_rule', 'none')}")
    filt = ds.info.get("filter")
    if filt:
        b, a = filt["before"], filt["after"]
        print(f"k-core {tuple(filt['thresholds'])}: users {b['users']:,} -> {a['users']:,}, "
              f"items {b['items']:,} -> {a['items']:,}, rounds {filt['rounds']}")
    print(f"load time     {t_load:.2f}s (cache {ds.cache_dir})")
    cached = ds.cache_dir is not None and (ds.cache_dir / "mainstream_groups.npz").is_file()
    t1 = time.perf_counter()
    ms, groups = protocol.dataset_groups(ds)
    t_ms = time.perf_counter() - t1
    how = "read from cache" if cached else "computed"
    print(f"mainstream scores: {how} in {t_ms:.2f}s; MS range [{ms.min():.5f}, {ms.max():.5f}]"
          f", mean {ms.mean():.5f}")
    for g, name in enumerate(protocol.GROUP_NAMES):
        m = groups == g
        print(f"  group {name:<9} {int(m.sum()):>7,} users   mean MS {ms[m].mean():.5f}"
              f"   range [{ms[m].min():.5f}, {ms[m].max():.5f}]")
    sizes = np.diff(ds.train.indptr)
    print(f"train items per user: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # tall_jax's own logger (a root handler set up by a library at import would swallow basicConfig)
    show_progress_logs(args.verbose)
    try:
        stats(args)
    except (ValueError, FileNotFoundError, DownloadError, OSError) as e:
        msg = " ".join(str(e).split())
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
