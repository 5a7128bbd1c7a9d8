"""The paper's Table 2 from folders of runs: ``python -m tall_jax.report runs/ [MORE ...] [--metric ndcg@20] [--out DIR]``.

Reads every ``results.json`` below the folders, at any depth, so both the run folders of the command
line (``runs/<dataset>/<model>-E<E>-<hash>/seed<k>``) and older ones (``runs/<dataset>/<model>/seed<k>``)
are found (``dataset``, ``model``, ``seed``, ``split``, ``test`` = ``RankingSummary.to_json()``; the row
name is the model and its ``variant``; its label, :func:`tall_jax.table2.label`, names a mixture's E and
a closed-form model's ``chosen_hp``), groups runs by (dataset, row name), and writes
``table2.md``, ``table2.csv`` and ``table2.png`` (``--name`` changes the stem): per model the mean ± std (ddof=1) over seeds of the test
metric overall and per mainstream group (docs/fidelity.md#groups), the paper's row beside it (docs/fidelity.md#paper-numbers), and "TALL vs X"
improvement rows (tall − x)/x·100 in %, and each row's seconds per run (:func:`run_seconds`). A baseline evaluated on a user subset (LFT ``--users``; its
``evaluated_users.npy``) is compared with TALL's per-user results (``per_user_test.npz``) on the same
users, so both sides of that row average over one user set.

Below each dataset's table, the spread of the metric over the five groups (``table2_fairness.csv`` too): per
run max − min, low / high and the std over the groups (:func:`tall_jax.metrics.group_fairness`), then
mean ± std over seeds; the reference rows get the spread of the reference's own group values. This
module finds and reads the runs; the rows and their Markdown / CSV / PNG forms are :mod:`tall_jax.table2`.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tall_jax.files import atomic_write_text
from tall_jax.metrics import RankingResult, RankingSummary
from tall_jax.results import keep_run, record_holding
from tall_jax.table2 import (COLUMNS, DATASET_ORDER, FAIRNESS_KEYS, MODEL_ORDER, Row, build_rows,  # noqa: F401
                             fairness_rows, is_mixture, n_experts, plot, to_markdown, write_csv,
                             write_fairness_csv)

REQUIRED_KEYS = ("dataset", "model", "seed", "test")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One results.json: where it came from and its test summary."""

    path: Path
    dataset: str
    model: str
    seed: int
    split: str
    test: RankingSummary
    variant: str = ""  # how the run departs from the faithful configuration, e.g. "n_experts=10"
    users: tuple[int, ...] | None = None  # the evaluated users when the run covered only a subset
    seconds: float | None = None  # training time: see :func:`run_seconds`
    # the hyper-parameters a model chose on validation (results.json "chosen_hp"; closed-form models)
    chosen_hp: tuple[tuple[str, Any], ...] | None = None
    settings_experts: int | None = None  # E as its settings record it (mixture models)

    @property
    def experts(self) -> int | None:
        """E of a mixture of experts (its recorded settings, else :func:`tall_jax.table2.n_experts`);
        None for a single model (MultVAE, WL, the local and closed-form baselines)."""
        if not is_mixture(self.model):
            return None
        return self.settings_experts or n_experts(self.model, self.variant)

    @property
    def name(self) -> str:
        """The table's row name: the model, with its variant in brackets when it has one."""
        return f"{self.model} [{self.variant}]" if self.variant else self.model

    def per_user(self, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, values, groups) from the run's ``per_user_test.npz``: the user ids (all users, or a
        subset run's evaluated users in their file's order), each one's ``metric`` (NaN: undefined)
        and mainstream group index."""
        path = self.path.parent / "per_user_test.npz"
        if not path.exists():
            raise ValueError(f"{path}: per-user results missing")
        res = RankingResult.load_per_user(path)
        if metric not in res.per_user:
            raise ValueError(f"{path}: no per-user {metric!r}")
        if res.groups is None:
            raise ValueError(f"{path}: no per-user groups")
        values = np.asarray(res.per_user[metric], np.float64)
        users = np.arange(len(values)) if self.users is None else np.asarray(self.users, np.int64)
        if len(users) != len(values):
            raise ValueError(f"{path}: {len(values)} users, but the run evaluated {len(users)}")
        return users, values, np.asarray(res.groups, np.int64)

    def values_on(self, users: Sequence[int], metric: str) -> tuple[float, ...]:
        """The run's mean ``metric`` over ``users`` only, per column (overall, then each group's share
        of them), from its per-user file."""
        path = self.path.parent / "per_user_test.npz"
        if not path.exists():
            raise ValueError(f"{path}: needed to compare with a user-subset run, but missing")
        res = RankingResult.load_per_user(path)
        idx = np.asarray(users)
        if idx.size and idx.max() >= res.n_users:
            raise ValueError(f"{path}: has {res.n_users} users; the subset needs user {idx.max()}")
        sub = RankingResult({k: v[idx] for k, v in res.per_user.items()},
                            None if res.groups is None else res.groups[idx])
        by_group = sub.by_group()
        values = []
        for column in COLUMNS:
            src = sub.overall() if column == "overall" else by_group.get(column, {})
            if metric not in src:
                raise ValueError(f"{path}: no per-user {metric!r} for column {column!r}")
            values.append(src[metric])
        return tuple(values)

    def value(self, metric: str, column: str) -> float:
        """The run's mean ``metric`` over all users (``column="overall"``) or over one group."""
        src = self.test.overall if column == "overall" else self.test.groups.get(column)
        if src is None or metric not in src:
            raise ValueError(f"{self.path}: test results have no {metric!r} for column {column!r}")
        return src[metric]


def run_seconds(d: dict[str, Any]) -> float | None:
    """A run's training time from its results: the sum of its epochs' seconds (training and
    evaluation; a resumed or forked run counts every epoch of its history, start-up and compilation
    not), else its wall time (runs without an epoch history: the local baselines); None without
    either."""
    history = d.get("history")
    if isinstance(history, list) and history and all(isinstance(h, dict) and "seconds" in h for h in history):
        return float(sum(float(h["seconds"]) for h in history))
    wall = d.get("wall_time_s")
    return float(wall) if isinstance(wall, (int, float)) else None


def _chosen_hp(value: Any) -> tuple[tuple[str, Any], ...] | None:
    """results.json's "chosen_hp" as (name, value) pairs in the file's order (a non-mapping: one pair
    named "hp"); None without one."""
    if value is None or value == {}:
        return None
    def plain(v: Any) -> Any:  # hashable, for comparing the seeds' choices
        return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)

    if isinstance(value, dict):
        return tuple((str(k), plain(v)) for k, v in value.items())
    return (("hp", plain(value)),)


def load_run(path: Path) -> RunRecord:
    """Parse one results.json; raises ValueError naming the file and the problem."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read results JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    try:
        test = RankingSummary.from_json(d["test"])
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: malformed 'test' entry: {e}") from e
    try:
        seed = int(d["seed"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: 'seed' must be an integer, got {d['seed']!r}") from e
    users = None
    if d.get("evaluated_users", "all") != "all":
        users_path = path.parent / "evaluated_users.npy"
        if not users_path.exists():
            raise ValueError(f"{path}: evaluated a user subset but {users_path.name} is missing beside it")
        users = tuple(int(u) for u in np.load(users_path))
    settings = d.get("settings")
    experts = settings.get("n_experts") if isinstance(settings, dict) else None
    return RunRecord(path, str(d["dataset"]), str(d["model"]), seed, str(d.get("split", "?")), test,
                     str(d.get("variant", "") or ""), users, run_seconds(d), _chosen_hp(d.get("chosen_hp")),
                     experts if isinstance(experts, int) and not isinstance(experts, bool) else None)


def collect_runs(root: Path, skip_malformed: bool = False) -> list[RunRecord]:
    """Every results.json below ``root`` (sorted by path)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder not found: {root}")
    paths = sorted(root.rglob("results.json"))
    if not paths:
        raise FileNotFoundError(f"no results.json found under {root}")
    runs = []
    for p in paths:
        try:
            runs.append(load_run(p))
        except ValueError as e:
            if not skip_malformed:
                raise
            print(f"warning: skipped {e}", file=sys.stderr)
    seen: dict[tuple, Path] = {}
    for r in runs:
        key = (r.dataset, r.name, r.seed, r.split)
        if key in seen:
            print(f"warning: {r.path} repeats dataset/model/seed/split of {seen[key]}; both are counted",
                  file=sys.stderr)
        seen.setdefault(key, r.path)
    return runs


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
    args = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([prog, *map(shlex.quote, args)])
    return (f"Produced by `{command}` on {datetime.date.today().isoformat()} from {len(runs)} "
            f"results.json (each records its settings and environment).")


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
    atomic_write_text(paths[".md"], md)
    write_csv(rows, paths[".csv"], args.metric)
    write_fairness_csv(fair, paths["_fairness.csv"], args.metric)
    if not args.no_plot:
        plot(rows, paths[".png"], args.metric)
    print(md)
    print("wrote " + ", ".join(str(p) for kind, p in paths.items() if not (kind == ".png" and args.no_plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
