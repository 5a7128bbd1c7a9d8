"""How ``python -m tall_jax.study ... --jobs 2`` should share a 2-core CPU: two single-threaded runs
unpinned (what the runner does), the same two pinned to a core each, and one run with every core.

Each run is a ``bench_train_step.py`` child timing the training epoch (``--modes epoch``) of ML-1M
at E = 10; the two-run rows start both at once with the runner's single-thread XLA flags
(:data:`tall_jax.study.jobs.SINGLE_THREAD_XLA`); "pinned" sets each child's CPU affinity to one
core (XLA:CPU then sizes its thread pool to that core).
A row gives each run's median epoch and the machine's throughput in epochs per minute; the
configurations alternate ``--repeats`` times. Writes benchmarks/results/<name>.json.

    python benchmarks/bench_study_jobs.py --data-dir DIR [--repeats 2] [--epoch-repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_train_step import versions  # noqa: E402

from tall_jax.study.jobs import SINGLE_THREAD_XLA  # noqa: E402

CONFIGS = ("one_run_all_cores", "two_runs_unpinned", "two_runs_pinned")


def _launch(args, out_dir: Path, name: str, single_thread: bool, core: int | None) -> subprocess.Popen:
    env = dict(os.environ)
    if single_thread:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_train_step.py"), "--dataset", args.dataset,
           "--experts", str(args.experts), "--modes", "epoch", "--variants", "run={}",
           "--baseline-variant", "run", "--epoch-repeats", str(args.epoch_repeats), "--name", name,
           "--out-dir", str(out_dir)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pin)


def measure(args, config: str, out_dir: Path, tag: str) -> dict:
    """One configuration: start its runs together, wait, read each run's epoch timing."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if config == "one_run_all_cores":
        plan = [(False, None)]
    elif config == "two_runs_unpinned":
        plan = [(True, None), (True, None)]
    else:
        if len(cores) < 2:
            return {"config": config, "skipped": "fewer than 2 cores, or the OS cannot pin"}
        plan = [(True, cores[0]), (True, cores[1])]
    load = os.getloadavg()
    t0 = time.perf_counter()
    procs = [_launch(args, out_dir, f"{tag}_{i}.json", single, core) for i, (single, core) in enumerate(plan)]
    errors = [p.communicate()[1] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{config}: a run failed:\n" + "\n".join(e[-2000:] for e in errors))
    runs = []
    for i in range(len(plan)):
        res = json.loads((out_dir / f"{tag}_{i}.json").read_text())
        (row,) = [r for r in res["runs"] if r["mode"] == "epoch"]
        runs.append({"epoch_median_s": row["wall"]["median"], "epoch_wall": row["wall"],
                     "cpu": row["cpu"], "core": plan[i][1]})
    epochs_per_min = sum(60.0 / r["epoch_median_s"] for r in runs)
    return {"config": config, "runs": runs, "epochs_per_minute": epochs_per_min,
            "elapsed_s": time.perf_counter() - t0, "loadavg_start": load, "loadavg_end": os.getloadavg()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default="ml-1m", help="a bench_train_step.py shape (tiny: check the harness)")
    p.add_argument("--experts", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="rounds of the three configurations")
    p.add_argument("--epoch-repeats", type=int, default=3, help="timed epochs per run")
    p.add_argument("--name", default=f"study_jobs_{time.strftime('%Y%m%d_%H%M%S')}.json")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for config in CONFIGS:
                row = measure(args, config, Path(tmp), f"{config}_{rep}")
                row["round"] = rep
                rows.append(row)
                if "runs" in row:
                    per_run = ", ".join(f"{r['epoch_median_s']:.2f} s" for r in row["runs"])
                    print(f"round {rep}  {config:20s} epoch {per_run:18s} -> {row['epochs_per_minute']:.2f} "
                          f"epochs/min (load {row['loadavg_start'][0]:.2f})", flush=True)
    out = Path(args.out_dir) / args.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"versions": versions(), "cpus": os.cpu_count(), "dataset": args.dataset,
                               "experts": args.experts,
                               "epoch_repeats": args.epoch_repeats, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
