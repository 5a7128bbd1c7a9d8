"""A study's record: what each finished run's page entry is computed from, kept beside the page.

Run folders (``--root``: checkpoints, logs, figures) are scratch: a fresh checkout or machine has
none, and a study spread over several sessions would start again. The record keeps, for every
finished (variant, seed), the run's ``results.json`` and ``study_run.json`` and its per-user test
NDCG@20 with the user groups (``per_user_test.npz``, compressed; the other metrics and the top items
are left out), ~150 KB a run (~50 KB compressed in git). It lives in ``<page>_runs/<variant>/seed<k>/`` and is meant to be
committed with the page: on the next start, a recorded run is copied back into its folder (so it is
finished, skipped and on the page) unless it was made for other settings, which is said and the run
trains again.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from tall_jax.results import PER_USER_FILE, RESULTS_FILE, keep_run
from tall_jax.study.analysis import METRIC
from tall_jax.study.jobs import RECORD, StudyJob, check_folder, record_differences


def entry_dir(records: Path, run: StudyJob) -> Path:
    return Path(records) / run.variant.name / f"seed{run.seed}"


def recorded_seeds(records: Path, variant_names) -> list[int]:
    """The seeds with a finished entry in the record for any of ``variant_names``, ascending."""
    found = {int(d.name[4:]) for name in variant_names for d in (Path(records) / name).glob("seed*")
             if d.name[4:].isdigit() and (d / RESULTS_FILE).exists()}
    return sorted(found)


def recorded(run: StudyJob, records: Path) -> bool:
    """Whether the record holds a finished entry for ``run``'s (variant, seed)."""
    return (entry_dir(records, run) / RESULTS_FILE).exists()


def save(run: StudyJob, records: Path) -> bool:
    """Record a finished run (rewritten only when its results changed); returns whether it wrote."""
    return run.done() and keep_run(run.out_dir, entry_dir(records, run), (METRIC,), extra=(RECORD,))


def restore(run: StudyJob, records: Path, dataset: str, n_experts: int) -> str | None:
    """Copy a recorded run into its empty folder. Returns None when nothing was to restore, "restored",
    or why the entry was not used (it was made for other settings than the run's)."""
    entry = entry_dir(records, run)
    if run.done() or not (entry / RESULTS_FILE).exists():
        return None
    diff = record_differences(entry / RECORD, run, dataset, n_experts)
    if diff:
        return f"{entry} was made for other settings ({'; '.join(diff)}): not used, the run trains again"
    check_folder(run, dataset, n_experts)  # never over a folder made for another variant
    run.out_dir.mkdir(parents=True, exist_ok=True)
    for name in (PER_USER_FILE, RECORD, RESULTS_FILE):  # results last: then the folder is finished
        shutil.copyfile(entry / name, run.out_dir / name)
    return "restored"
