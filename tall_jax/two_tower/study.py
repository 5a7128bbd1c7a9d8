"""A multi-seed study of the two-tower models, written up as a Markdown results page.

    python -m tall_jax.two_tower.study --dataset synthetic --seed 0 1 2 3 4
    python -m tall_jax.two_tower.study --dataset ml-1m --data-dir DIR --seed 0 1 2 3 4

Each finished seed is stored as ``<runs>/seed<k>.json``; a rerun with the same settings skips it
(resumable), one with other settings refuses unless ``--fresh``. Within a seed, the state and results
so far are saved after every fit in ``<runs>/seed<k>.days/`` (one process only), so a killed run
continues at its next day with the results of an uninterrupted one; ``--fresh`` discards them.
The page (default ``docs/results/two_tower_<dataset>.md``) holds, over the seeds: AP per territory and group (mean ±
std), relative gains with a paired t-test over seeds, the case-study titles and their score histograms,
and one paragraph per claim of the paper, each saying whether it holds on this data.
"""
from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tall_jax.files import atomic_write_text
from tall_jax.pages import write_markdown
from tall_jax.results import to_jsonable
from tall_jax.two_tower.cli import (
    LOG_PATH_FLAGS, check_args, data_parallel_of, make_builder, make_parser, models_of, run_main, settings_of,
    train_config,
)
from tall_jax.two_tower.experiment import run_seed
from tall_jax.two_tower.parallel import is_main_process
from tall_jax.two_tower.study_page import build_page

def parse_args(argv=None):
    p = make_parser(__doc__.split("\n\n")[0], default_seeds=[0, 1, 2, 3, 4])
    p.add_argument("--runs", default=None, help="folder of the per-seed files (default: runs/two_tower_study/<dataset>)")
    p.add_argument("--doc", default=None, help="the Markdown page (default: docs/results/two_tower_<dataset>.md)")
    p.add_argument("--fresh", action="store_true", help="discard per-seed files made with other settings")
    p.add_argument("--title", default=None, help="heading of the page (default: from the dataset)")
    args = p.parse_args(argv)
    if "--control" not in (argv if argv is not None else sys.argv[1:]):
        args.control = True  # the study always trains the one-shared-head control
    return check_args(p, args)


def _arrays(run: dict[str, Any]) -> dict[str, Any]:
    """A per-seed record read back from JSON: the per-model tables as float arrays (None -> NaN)."""
    out = dict(run)
    for k in ("ap_territory", "ap_group", "ap_all", "title_ap", "title_hist", "title_mean"):
        out[k] = {m: np.asarray(v, dtype=float) for m, v in run[k].items()}
    return out


def run_study(args, dp=None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
    """Train every seed not yet on disk; return the runs, their data descriptions and the runs folder.
    ``dp`` (:func:`tall_jax.two_tower.cli.data_parallel_of`) splits the batches over devices; under
    several processes only process 0 writes, and every process must see the same runs folder."""
    runs_dir = Path(args.runs) if args.runs else Path("runs") / "two_tower_study" / args.dataset
    writer = is_main_process()
    if writer:
        runs_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    build, runs, metas = None, [], []
    for seed in args.seeds:
        path = runs_dir / f"seed{seed}.json"
        if path.exists():
            rec = json.loads(path.read_text())
            if rec["settings"] == settings:
                print(f"seed {seed}: finished earlier ({path}), skipped", file=sys.stderr)
                runs.append(_arrays(rec["run"]))
                metas.append(rec["meta"])
                continue
            if not args.fresh:
                raise ValueError(f"{path} was made with other settings; pass --fresh to replace it or --runs DIR")
        days_dir = runs_dir / f"seed{seed}.days"  # day checkpoints of an unfinished seed (one process only)
        if args.fresh and writer:
            shutil.rmtree(days_dir, ignore_errors=True)
        build = build or make_builder(args)
        started = time.perf_counter()
        data = build(seed)
        run = run_seed(data, train_config(args), seed, models=models_of(args), progress=not args.no_progress, dp=dp,
                       checkpoints=days_dir if jax.process_count() == 1 else None)
        meta = {"seed": seed, "seconds": time.perf_counter() - started, "territories": data.territory_names,
                "groups": data.group_names, "territory_group": data.territory_group.tolist(),
                "case_titles": data.case_titles, "info": data.info}
        text = json.dumps(to_jsonable({"settings": settings, "run": run, "meta": meta}))
        if writer:
            atomic_write_text(path, text)
            shutil.rmtree(days_dir, ignore_errors=True)
        print(f"seed {seed}: {meta['seconds']:.0f} s", file=sys.stderr)
        runs.append(_arrays(json.loads(text)["run"]))
        metas.append(meta)
    return runs, metas, runs_dir


def main(argv=None) -> int:
    args = parse_args(argv)
    runs, metas, runs_dir = run_study(args, data_parallel_of(args))
    if not is_main_process():
        return 0
    given = list(argv if argv is not None else sys.argv[1:])
    shown = []
    path_flags = ("--data-dir",) + LOG_PATH_FLAGS
    for i, a in enumerate(given):  # the page names no local paths
        if a == "--no-progress":
            continue
        flag = given[i - 1] if i > 0 and given[i - 1] in path_flags else a.split("=")[0] if "=" in a else None
        hide = "DIR" if flag == "--data-dir" else "PATH"
        shown.append(a if flag not in path_flags else hide if "=" not in a else f"{flag}={hide}")
    command = "python -m tall_jax.two_tower.study " + " ".join(shlex.quote(a) for a in shown)
    page = build_page(runs, metas, args, command)
    doc = Path(args.doc) if args.doc else Path("docs") / "results" / f"two_tower_{args.dataset.replace('-', '')}.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(doc, page)
    print(f"wrote {doc} ({len(runs)} seeds; per-seed files in {runs_dir})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main, "python -m tall_jax.two_tower.study")
