"""Multi-seed studies of the MultVAE family, resumable, written up as a results page.

    python -m tall_jax.study ablations --dataset ml-1m --experts 10 --seeds 0 1 2 3 4 --jobs 2
    python -m tall_jax.study precision --dataset ml-1m --experts 10 --seeds 0 1 2 --jobs 2
    python -m tall_jax.study ablations --dataset ml-1m --report-only     # refresh the page only
    python -m tall_jax.study ablations --dataset ml-1m --status          # where each run stands

``ablations``: where TALL's gain comes from (controls, faithful TALL, one change at a time, a gate
that routes; :mod:`tall_jax.study.variants`). ``precision``: LMoE and TALL in float32 and bfloat16.
Every (variant, seed) trains in its own folder under ``--root`` and resumes from its checkpoint;
rerunning the command continues the study and rewrites the page (default
``docs/results/<dataset>_<study>.md`` with its .csv and .png; ``_E<E>`` is added for E other than 10).
Each finished run is also kept in the page's record, ``<page>_runs/`` (:mod:`tall_jax.study.records`):
commit it with the page, and the study continues on a fresh checkout without training those again.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import jax

from tall_jax.cli import HelpFormatter, Parser, show_progress_logs
from tall_jax.configs import DATASET_PRESETS
from tall_jax.pages import command_line
from tall_jax.results import record_dir
from tall_jax.study import records as records_lib
from tall_jax.study.analysis import collect, seconds_left
from tall_jax.study.jobs import execute, plan, run_one, standing
from tall_jax.study.variants import CURVES, STUDIES, ablation_variants, precision_variants, select
from tall_jax.study.writeup import write_page


def _parser() -> Parser:
    p = Parser(prog="python -m tall_jax.study", description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="study", required=True, parser_class=Parser)
    for name in STUDIES:
        s = sub.add_parser(name, formatter_class=HelpFormatter, help=f"the {name} study")
        s.add_argument("--dataset", default="ml-1m", choices=[d for d in DATASET_PRESETS],
                       help="dataset (its preset: batch size, weight decay, gap, alpha)")
        s.add_argument("--experts", type=int, default=10, help="E of the mixtures")
        s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                       help="seeds of every multi-seed variant (sweeps and side questions train the first)")
        s.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                       help="train only these variants (default: all; the page shows every finished one)")
        s.add_argument("--epochs", type=int, default=None,
                       help="cap every run at this many epochs (a short trial; the cap is part of "
                            "each run's recorded settings, so use another --root)")
        s.add_argument("--jobs", type=int, default=1,
                       help="runs at a time; above 1 each run is single-threaded (on a 2-core CPU, "
                            "--jobs 2 finishes ~1.4x more runs per hour)")
        s.add_argument("--nice", type=int, default=0, help="niceness of the training processes")
        s.add_argument("--root", default="runs/studies", help="folder of the runs")
        s.add_argument("--data-dir", default=None, metavar="DIR",
                       help="data folder (default: $TALL_JAX_DATA, else the download cache)")
        s.add_argument("--page", default=None, metavar="PATH",
                       help="results page without suffix (default: docs/results/<dataset>_<study>, "
                            "with _E<E> unless E = 10)")
        s.add_argument("--records", default=None, metavar="DIR",
                       help="the record of finished runs, restored into --root on start and "
                            "updated as runs finish (default: <page>_runs; commit it with the page)")
        s.add_argument("--report-only", action="store_true", help="write the page from the finished runs")
        s.add_argument("--status", action="store_true",
                       help="print where each run stands and the hours left (no training, no page)")
        s.add_argument("--no-progress", action="store_true",
                       help="no progress bar (each run's start and end are still printed)")
    one = sub.add_parser("run-one", help="one run (what the study's processes do)")
    one.add_argument("--dataset", required=True)
    one.add_argument("--experts", type=int, required=True)
    one.add_argument("--variant", required=True)
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--out", required=True)
    one.add_argument("--data-dir", default=None)
    one.add_argument("--epochs", type=int, default=None)
    one.add_argument("--keep-epochs", type=int, nargs="+", default=[])
    return p


def default_page(dataset: str, study: str, n_experts: int) -> str:
    """docs/results/<dataset>_<study> for the E = 10 studies, ..._E<E> for another E (so that a
    confirmation at E = 100 never overwrites the E = 10 page)."""
    suffix = "" if n_experts == 10 else f"_E{n_experts}"
    return f"docs/results/{dataset.replace('-', '')}_{study}{suffix}"


def _all_variants(dataset: str, n_experts: int):
    return ablation_variants(dataset, n_experts) + precision_variants()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.study == "run-one":
            show_progress_logs()
            variant = select(_all_variants(args.dataset, args.experts), [args.variant])[0]
            if args.epochs is not None:
                variant = variant.capped(args.epochs)
            run_one(args.dataset, args.experts, variant, args.seed, args.out, args.data_dir,
                    keep_epochs=tuple(args.keep_epochs))
            return 0
        if args.experts < 1 or args.jobs < 1:
            raise ValueError("--experts and --jobs must be >= 1")
        data_dir = args.data_dir or os.environ.get("TALL_JAX_DATA")
        variants = STUDIES[args.study](args.dataset, args.experts)
        if args.epochs is not None:
            if args.epochs < 1:
                raise ValueError("--epochs must be >= 1")
            variants = [v.capped(args.epochs) for v in variants]
        chosen = {v.name for v in select(variants, args.variants)}
        planned = plan(variants, args.seeds, args.root, args.dataset, args.experts)
        page = Path(args.page or default_page(args.dataset, args.study, args.experts))
        records = Path(args.records) if args.records else record_dir(page)
        # the page shows every recorded run, also of seeds not asked this time (a study spread over
        # sessions, one seed each); only the seeds asked train
        others = [s for s in records_lib.recorded_seeds(records, [v.name for v in variants])
                  if s not in args.seeds]
        earlier = [r for r in plan(variants, others, args.root, args.dataset, args.experts)
                   if records_lib.recorded(r, records)] if others else []
        _restore(planned + earlier, records, args.dataset, args.experts)
        if args.status:
            shown = [r for r in planned if r.variant.name in chosen]
            for r in shown:
                print(f"{r.label:32s} {standing(r).text}")
            print(f"{sum(r.done() for r in shown)} of {len(shown)} runs finished")
            runs = collect(_folders(variants, planned + earlier))  # the pace: every finished run
            left = seconds_left([(r.variant.name, standing(r).epochs) for r in shown if not r.done()], runs,
                                args.jobs)
            if left:
                print(f"about {left / 3600:.1f} h of training left with --jobs {args.jobs}, at the pace "
                      "of the finished runs (their median epochs and seconds per epoch)")
            return 0
        failed: list[str] = []
        if not args.report_only:
            failed = execute([r for r in planned if r.variant.name in chosen], dataset=args.dataset,
                             n_experts=args.experts, data_dir=data_dir, jobs=args.jobs, nice=args.nice,
                             progress=not args.no_progress,
                             on_finish=lambda run: records_lib.save(run, records))
        saved = sum(records_lib.save(r, records) for r in planned)  # also runs finished elsewhere
        if saved:
            print(f"recorded {saved} finished run(s) in {records}")
        planned += earlier
        seeds = sorted({r.seed for r in planned})
        runs = collect(_folders(variants, planned))
        if any(runs.values()):
            # the page: the variants asked for and every other one with a finished run
            shown = [v for v in variants if v.name in chosen or runs.get(v.name)]
            names = {v.name for v in shown}
            written = write_page(page, study=args.study, command=_command(args, seeds), dataset=args.dataset,
                                 n_experts=args.experts, seeds=seeds, variants=shown, runs=runs,
                                 n_planned=sum(r.variant.name in names for r in planned),
                                 curves=CURVES.get(args.study, ()),
                                 environment={"jax": jax.__version__, "backend": jax.default_backend(),
                                              "python": platform.python_version(),
                                              "cpus": os.cpu_count()})
            print("wrote " + ", ".join(map(str, written)))
        else:  # an empty page would replace one written from another --root
            print(f"no run of this study has finished under {args.root}: {page}.md not written")
        if failed:
            print(f"error: {len(failed)} run(s) failed: {', '.join(failed)} (see their train.log)",
                  file=sys.stderr)
            return 1
        return 0
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the runs resume next time (each child checkpoints)
        print("interrupted", file=sys.stderr)
        return 130


def _restore(planned, records: Path, dataset: str, n_experts: int) -> None:
    """Copy the recorded runs into their empty folders, saying what was restored or refused."""
    said = [records_lib.restore(r, records, dataset, n_experts) for r in planned]
    for text in said:
        if text not in (None, "restored"):
            print(f"warning: {text}", file=sys.stderr)
    if said.count("restored"):
        print(f"restored {said.count('restored')} finished run(s) from {records}")


def _folders(variants, planned) -> dict[str, dict[int, Path]]:
    folders: dict[str, dict[int, Path]] = {v.name: {} for v in variants}
    for r in planned:
        folders[r.variant.name][r.seed] = r.out_dir
    return folders


def _command(args, seeds: list[int]) -> str:
    """The command that rebuilds the page: its seeds are those on it (asked and recorded)."""
    parts = [args.study, "--dataset", args.dataset, "--experts", str(args.experts), "--seeds",
             *map(str, seeds)] + (["--variants", *args.variants] if args.variants else [])
    return command_line("python -m tall_jax.study", parts)


if __name__ == "__main__":
    sys.exit(main())
