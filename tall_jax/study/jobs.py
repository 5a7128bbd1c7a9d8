"""Train a study's (variant, seed) runs, resumably, one process per run, ``jobs`` at a time.

Each run trains in its own folder ``<root>/<dataset>/E<E>/<variant>/seed<k>`` through
:func:`tall_jax.models.run_experiment` with ``resume=True`` and a checkpoint every few epochs, so a
study stopped at any point (a killed session, Ctrl-C) continues where it was: finished runs are
skipped, unfinished ones resume from their last checkpoint. A folder whose recorded variant differs
from the one asked for is refused, never overwritten.

Why processes: every run gets its own memory and a clean XLA; and on a CPU two single-threaded
runs side by side finish more work than one two-threaded run (XLA keeps ~1.3 of 2 cores busy on
these shapes; measured 1.4x the throughput on ML-1M, E = 10), so ``jobs`` > 1 pins each run to one
thread. Results do not depend on the thread count (same losses, bit for bit, in that measurement).

A variant with a trunk (:mod:`tall_jax.study.variants`) waits while its trunk of the same seed is
still to train; the trunk keeps its checkpoint of the fork epoch T, the variant starts from a copy
of it and trains only epochs T+1... (without a kept checkpoint, e.g. a trunk trained before it was
asked to keep one, the variant trains from epoch 1: the same result, at full cost).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from tall_jax import state as state_lib
from tall_jax.datasets import load_dataset
from tall_jax.identity import field_differences
from tall_jax.models import run_experiment
from tall_jax.study.variants import Variant

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
RECORD = "study_run.json"  # what a folder was created for


@dataclasses.dataclass(frozen=True)
class StudyJob:
    variant: Variant
    seed: int
    out_dir: Path
    trunk: "StudyJob | None" = None  # the run whose checkpoint of epoch fork_epoch this one starts from
    fork_epoch: int = 0
    keep_epochs: tuple[int, ...] = ()  # epochs whose checkpoint this run keeps for its forks

    @property
    def label(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"

    def record(self, dataset: str, n_experts: int) -> dict[str, Any]:
        return {"variant": self.variant.name, "model": self.variant.model,
                "overrides": dict(self.variant.overrides), "seed": self.seed, "dataset": dataset,
                "n_experts": n_experts}

    def done(self) -> bool:
        return (self.out_dir / "results.json").exists()


def run_dir(root: str | Path, dataset: str, n_experts: int, variant: str, seed: int) -> Path:
    return Path(root) / dataset / f"E{n_experts}" / variant / f"seed{seed}"


def plan(variants: list[Variant], seeds: list[int], root: str | Path, dataset: str,
         n_experts: int) -> list[StudyJob]:
    """Every run of the study, seed-major (all variants' first seed, then the next seed, ...), so
    a study cut short has comparable seeds for every variant. ``tune`` and ``side`` variants get the
    first seed only, and come after every multi-seed run: the seeds the page needs go first."""
    runs, sweeps = [], []
    by_name = {v.name: v for v in variants}
    for i, seed in enumerate(seeds):
        chosen = [v for v in variants if not (v.first_seed_only and i > 0)]
        forks = {v.name: (by_name[v.trunk], v.fork_epoch(by_name[v.trunk], dataset, n_experts))
                 for v in chosen if v.trunk in by_name}
        keep: dict[str, set[int]] = {}
        for trunk, epoch in forks.values():
            keep.setdefault(trunk.name, set()).add(epoch)
        seed_runs = {v.name: StudyJob(v, seed, run_dir(root, dataset, n_experts, v.name, seed),
                                      keep_epochs=tuple(sorted(keep.get(v.name, ()))))
                     for v in chosen if v.name not in forks}
        for v in chosen:
            if v.name in forks:
                trunk, epoch = forks[v.name]
                seed_runs[v.name] = StudyJob(v, seed, run_dir(root, dataset, n_experts, v.name, seed),
                                             trunk=seed_runs[trunk.name], fork_epoch=epoch)
        runs += [seed_runs[v.name] for v in chosen if not v.first_seed_only]
        sweeps += [seed_runs[v.name] for v in chosen if v.first_seed_only]
    return runs + sweeps


def may_start(run: StudyJob, pending: set[str]) -> bool:
    """Whether ``run`` can start now: at once without a trunk or with a checkpoint of its own; else
    once its trunk has kept the fork epoch's checkpoint, or is no longer ``pending`` (queued or
    running) without having kept it (the run then trains from epoch 1)."""
    if run.trunk is None or state_lib.has_checkpoint(run.out_dir):
        return True
    if state_lib.has_checkpoint(state_lib.kept_dir(run.trunk.out_dir, run.fork_epoch)):
        return True
    return run.trunk.label not in pending


@dataclasses.dataclass(frozen=True)
class Standing:
    """Where a run stands, read from its folder and its trunk's."""

    text: str  # e.g. "checkpoint at epoch 55 (best 55)"
    epochs: int  # epochs behind it: its own, or the trunk's fork epoch it will start from


def standing(run: StudyJob) -> Standing:
    """Finished, at which checkpoint, or how it will start (from its trunk's checkpoint of the fork
    epoch, kept or still to come, or from epoch 1)."""
    if run.done():
        res = json.loads((run.out_dir / "results.json").read_text())
        return Standing(f"finished: best epoch {res['best_epoch']} of {res['epochs_run']}", res["epochs_run"])
    progress = state_lib.checkpoint_progress(run.out_dir)
    if progress is not None:
        return Standing(f"checkpoint at epoch {progress[0]} (best {progress[1]})", progress[0])
    if run.trunk is None:
        return Standing("not started", 0)
    if state_lib.has_checkpoint(state_lib.kept_dir(run.trunk.out_dir, run.fork_epoch)):
        return Standing(f"not started; starts from {run.trunk.label} at epoch {run.fork_epoch}", run.fork_epoch)
    if run.trunk.done():
        return Standing("not started; from epoch 1 (its trunk kept no checkpoint)", 0)
    return Standing(f"waits for {run.trunk.label} to reach epoch {run.fork_epoch}", run.fork_epoch)


def record_differences(path: Path, run: StudyJob, dataset: str, n_experts: int) -> list[str]:
    """What the record at ``path`` (a ``study_run.json``) says differently from ``run``'s."""
    saved, wanted = json.loads(path.read_text()), json.loads(json.dumps(run.record(dataset, n_experts)))
    return field_differences(saved, wanted, RECORD)


def check_folder(run: StudyJob, dataset: str, n_experts: int) -> None:
    """Refuse a folder made for another variant (its record names what differs)."""
    path = run.out_dir / RECORD
    diff = record_differences(path, run, dataset, n_experts) if path.exists() else []
    if diff:
        raise ValueError(f"{run.out_dir} was trained for other settings ({'; '.join(diff)}); "
                         "remove it or choose another --root")


def child_command(run: StudyJob, dataset: str, n_experts: int, data_dir: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "tall_jax.study", "run-one", "--dataset", dataset,
           "--experts", str(n_experts), "--variant", run.variant.name, "--seed", str(run.seed),
           "--out", str(run.out_dir)]
    cap = dict(run.variant.overrides).get("max_epochs")
    return (cmd + (["--data-dir", data_dir] if data_dir else [])
            + (["--epochs", str(cap)] if cap is not None else [])
            + (["--keep-epochs", *map(str, run.keep_epochs)] if run.keep_epochs else []))


def execute(runs: list[StudyJob], *, dataset: str, n_experts: int, data_dir: str | None, jobs: int = 1,
            nice: int = 0, progress: bool = True,
            on_finish: Callable[[StudyJob], Any] | None = None) -> list[str]:
    """Train every unfinished run, ``jobs`` processes at a time; returns the labels that failed
    (their log: ``<out_dir>/train.log``). ``on_finish(run)`` is called as each run finishes (the
    study records it there, so a session cut short keeps every finished run)."""
    for run in runs:
        check_folder(run, dataset, n_experts)
    todo = [r for r in runs if not r.done()]
    by_label = {r.label: r for r in runs}
    if todo:  # a missing data file fails here, once, not in every child; it also fills the split cache
        load_dataset(dataset, seed=todo[0].seed, data_dir=data_dir)
    env = dict(os.environ)
    if jobs > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    # a SIGTERM (kill, a stopped session) unwinds like Ctrl-C, so the children are stopped too
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed: list[str] = []
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), disable=not progress, unit="run",
               desc="study", dynamic_ncols=True)
    try:
        while todo or running:
            while len(running) < jobs:
                pending = {r.label for r in todo} | set(running)
                run = next((r for r in todo if may_start(r, pending)), None)
                if run is None:
                    break
                todo.remove(run)
                run.out_dir.mkdir(parents=True, exist_ok=True)
                forked = (run.trunk is not None and not state_lib.has_checkpoint(run.out_dir)
                          and state_lib.fork_checkpoint(run.trunk.out_dir, run.fork_epoch, run.out_dir))
                (run.out_dir / RECORD).write_text(json.dumps(run.record(dataset, n_experts), indent=1))
                log = open(run.out_dir / "train.log", "a")
                started = run.label + (f" (epochs 1-{run.fork_epoch} from {run.trunk.label})" if forked else "")
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {started}\n")
                log.flush()
                bar.write(f"{time.strftime('%H:%M:%S')} started {started}")
                proc = subprocess.Popen(child_command(run, dataset, n_experts, data_dir), stdout=log,
                                        stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=(lambda: os.nice(nice)) if nice else None)
                running[run.label] = (proc, log, time.time())
            bar.set_postfix_str(", ".join(running), refresh=True)
            wake = time.monotonic() + 2.0  # or as soon as a run ends (a short run is not kept waiting)
            while time.monotonic() < wake and all(p.poll() is None for p, _, _ in running.values()):
                time.sleep(0.05)
            for label, (proc, log, began) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[label]
                minutes = f"{(time.time() - began) / 60:.1f} min"
                if proc.returncode != 0:
                    failed.append(label)
                    bar.write(f"{time.strftime('%H:%M:%S')} failed: {label} (exit {proc.returncode}, "
                              f"after {minutes}; see its train.log)")
                else:
                    bar.write(f"{time.strftime('%H:%M:%S')} finished {label} in {minutes}")
                    if on_finish is not None:
                        on_finish(by_label[label])
                bar.update(1)
    finally:
        for proc, log, _ in running.values():  # interrupted: the runs resume next time
            proc.terminate()
            proc.wait()
            log.close()
        signal.signal(signal.SIGTERM, previous)
        bar.close()
    return failed


def run_one(dataset: str, n_experts: int, variant: Variant, seed: int, out_dir: str | Path,
            data_dir: str | None, checkpoint_every: int = 5,
            keep_epochs: tuple[int, ...] = ()) -> dict[str, Any]:
    """One run of the study in this process (what a child of :func:`execute` does)."""
    return run_experiment(dataset, variant.model, out_dir=out_dir, seed=seed, data_dir=data_dir,
                          progress=False, resume=True, checkpoint_every=checkpoint_every,
                          keep_epochs=keep_epochs, overrides=variant.overrides_for(n_experts))
