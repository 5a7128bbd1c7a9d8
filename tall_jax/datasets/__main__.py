"""``python -m tall_jax.datasets stats --dataset ml-1m``: dataset, split and mainstream statistics."""
from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from tall_jax import protocol
from tall_jax.datasets import KNOWN_DATASETS, load_dataset
from tall_jax.datasets.download import DownloadError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tall_jax.datasets", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stats", help="print users, items, split sizes, mainstream groups")
    s.add_argument("--dataset", required=True, choices=KNOWN_DATASETS)
    s.add_argument("--split", default=None, help="authors|random (default: authors for ml-1m)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random split")
    s.add_argument("--data-dir", default=None, help="folder laid out like shared/data")
    s.add_argument("--cache-dir", default=None, help="where processed splits are cached")
    s.add_argument("--no-download", action="store_true", help="never download missing files")
    s.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def stats(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset, split=args.split, seed=args.seed, data_dir=args.data_dir,
                      cache_dir=args.cache_dir, download=not args.no_download)
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
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
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
