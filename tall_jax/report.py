"""The paper's Table 2 from folders of runs: ``python -m tall_jax.report runs/ [MORE ...] [--metric ndcg@20] [--out DIR]``.

Reads every ``results.json`` below the folders, at any depth, so both the run folders of the command
line (``runs/<dataset>/<model>-E<E>-<hash>/seed<k>``) and older ones (``runs/<dataset>/<model>/seed<k>``)
are found (``dataset``, ``model``, ``seed``, ``split``, ``test`` = ``RankingSummary.to_json()``; the row
name is the model and its ``variant``; its label, :func:`tall_jax.table2.label`, names a mixture's E and
a closed-form model's ``chosen_hp``), groups runs by (dataset, row name), and writes
``table2.md``, ``table2.csv`` and ``table2.png`` (``--name`` changes the stem): per model the mean ± std (ddof=1) over seeds of the test
metric overall and per mainstream group (docs/fidelity.md#groups), the paper's row beside it (docs/fidelity.md#paper-numbers), and "TALL vs X"
improvement rows (tall − x)/x·100 in %, and each row's seconds per run (:func:`tall_jax.run_records.run_seconds`). A baseline evaluated on a user subset (LFT ``--users``; its
``evaluated_users.npy``) is compared with TALL's per-user results (``per_user_test.npz``) on the same
users, so both sides of that row average over one user set.

Below each dataset's table, the spread of the metric over the five groups (``table2_fairness.csv`` too): per
run max − min, low / high and the std over the groups (:func:`tall_jax.metrics.group_fairness`), then
mean ± std over seeds; the reference rows get the spread of the reference's own group values. The
runs are read by :mod:`tall_jax.run_records`; the rows and their Markdown / CSV / PNG forms are
:mod:`tall_jax.table2`; this module is the command, and keeps a page's record (``--record``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tall_jax import pages
from tall_jax.results import keep_run, record_holding
from tall_jax.run_records import RunRecord, collect_runs
from tall_jax.table2 import build_rows, fairness_rows, plot, to_markdown, write_csv, write_fairness_csv


def record_runs(runs: Sequence[RunRecord], roots: Sequence[Path], record: Path,
                metric: str) -> tuple[int, list[Path]]:
    """Keep each run (:func:`tall_jax.results.keep_run`) in ``record``, at its path below the runs
    folder it was found in, under that folder's own path (``runs/table2/ml-1m/wl/seed0`` ->
    ``record/runs/table2/ml-1m/wl/seed0``). A run read from a page's record (this one or another
    page's, e.g. a study's) is committed there already and not copied. Returns how many it wrote and
    the other records it read from."""
    written, record, others = 0, Path(record), []
    for run in runs:
        folder = run.path.parent.resolve()
        if folder.is_relative_to(record.resolve()):  # read from the record itself: kept already
            continue
        other = record_holding(folder)
        if other is not None:
            if other not in others:
                others.append(other)
            continue
        root = next(Path(r).resolve() for r in roots if folder.is_relative_to(Path(r).resolve()))
        try:
            place = root.relative_to(Path.cwd().resolve())
        except ValueError:  # a folder outside the working directory: its absolute path's parts
            place = Path(*root.parts[1:])
        written += keep_run(folder, record / place / folder.relative_to(root), (metric,))
    return written, others


def produced_by(argv: Sequence[str] | None, runs: Sequence[RunRecord],
                prog: str = "python -m tall_jax.report") -> str:
    """The page's provenance line: the command, the date, and how many runs it read."""
    command = pages.command_line(prog, sys.argv[1:] if argv is None else list(argv))
    return (pages.produced_by(command) + f" from {len(runs)} results.json (each records its settings and "
            "environment).")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tall_jax.report", description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+",
                    help="folder(s) searched recursively for results.json (e.g. runs/ml-1m and a study's "
                         "runs/studies/ml-1m/E100)")
    ap.add_argument("--metric", default="ndcg@20", help="test metric to tabulate (default ndcg@20)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the first runs folder)")
    ap.add_argument("--name", default="table2", metavar="STEM",
                    help="file stem of the outputs: STEM.md, STEM.csv, STEM_fairness.csv, STEM.png "
                         "(default table2; e.g. --out docs/results --name ml1m_table2)")
    ap.add_argument("--reference", nargs="+", choices=["paper", "lft_repo", "none"], default=["paper"],
                    help="reference rows, one or more: the TALL paper (docs/fidelity.md#paper-numbers), the LFT repo (docs/fidelity.md#lft-repo-numbers), "
                         "or none (the plot's ticks show the first)")
    ap.add_argument("--skip-malformed", action="store_true", help="warn about bad results.json and go on")
    ap.add_argument("--no-plot", action="store_true", help="skip the plot (STEM.png)")
    ap.add_argument("--record", type=Path, default=None, metavar="DIR",
                    help="also keep what the table is computed from (each results.json, the per-user "
                         "--metric, a subset run's users) in DIR, under each runs folder's path, to "
                         "commit beside the page: run folders are scratch, and the report reads DIR")
    args = ap.parse_args(argv)
    if not args.name or Path(args.name).name != args.name:  # before any run is read
        print(f"error: --name must be a plain file stem, got {args.name!r}", file=sys.stderr)
        return 2
    reference = [r for r in dict.fromkeys(args.reference) if r != "none"] or None
    try:
        runs = [r for root in args.runs for r in collect_runs(root, args.skip_malformed)]
        if not runs:
            raise FileNotFoundError(f"no readable results.json under {', '.join(map(str, args.runs))}")
        rows = build_rows(runs, args.metric, reference)
        fair = fairness_rows(runs, args.metric, reference)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.runs[0]
    out.mkdir(parents=True, exist_ok=True)
    if args.record is not None:
        kept, others = record_runs(runs, args.runs, args.record, args.metric)
        print(f"recorded {kept} run(s) in {args.record}" if kept else f"{args.record} already holds these runs")
        for other in others:
            print(f"runs read from the record {other} stay there (commit it with this page)")
    paths = {kind: out / f"{args.name}{kind}" for kind in (".md", ".csv", "_fairness.csv", ".png")}
    md = to_markdown(rows, args.metric, runs, fair, produced_by=produced_by(argv, runs))
    pages.write_markdown(paths[".md"], md)
    write_csv(rows, paths[".csv"], args.metric)
    write_fairness_csv(fair, paths["_fairness.csv"], args.metric)
    if not args.no_plot:
        plot(rows, paths[".png"], args.metric)
    print(md)
    print("wrote " + ", ".join(str(p) for kind, p in paths.items() if not (kind == ".png" and args.no_plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
