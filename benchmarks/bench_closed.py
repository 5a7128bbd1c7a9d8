"""Benchmark the closed forms: wall time and peak memory of fitting EASE, weighted EASE and LOCA-EASE
(docs/closed_forms.md), at the ML-1M, Yelp and CDs item counts.

    JAX_PLATFORMS=cpu python benchmarks/bench_closed.py                    # every default case
    JAX_PLATFORMS=cpu python benchmarks/bench_closed.py --cases ease:cds --repeats 2
    python benchmarks/bench_closed.py --quick                              # tiny shapes, seconds

Every case runs in its own subprocess, so its peak RSS (VmHWM) and device peak memory are its own.
A case times one fit at a fixed λ, split into its phases: the sparse Gram XᵀX (or Xᵀ diag(w) X),
the solve (G + λI made dense, inverted, B formed) and the scores x_u B of every user (sparse X times
B, what the evaluation consumes); LOCA-EASE times the SVD embedding with LOCA's anchors and
kernels, then every distinct local model's Gram and solve and the kernel-weighted mixture of all
users' scores. The first fit (which compiles, with ``--solver jax``) is reported apart from the
median of the ``--repeats`` that follow. ML-1M is the real authors' split when ``--data-dir`` has it;
Yelp and CDs are random data of their shape and density (benchmarks/bench_train_step.py). Writes
benchmarks/results/<name>.json (default cpu_closed.json) with the versions, the load average at
start and end, and each case's targets (EASE at the CDs item count: <= 120 s and <= 8 GB;
LOCA-EASE with 100 anchors on ML-1M: <= 600 s).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's tall_jax and benchmarks/, as the children get them

from benchmarks.bench_train_step import SHAPES, load, peak_rss_mb, stats, versions  # noqa: E402
from benchmarks.bench_train_step import spawn as spawn_child  # noqa: E402

CASES = ("ease:ml-1m", "ease:yelp", "ease:cds", "ease_weighted:ml-1m", "ease_weighted:cds",
         "loca_ease:ml-1m")
QUICK_CASES = ("ease:tiny", "ease_weighted:tiny", "loca_ease:tiny")
TARGETS = {"ease:cds": dict(wall_s=120.0, peak_rss_mb=8192.0), "loca_ease:ml-1m": dict(wall_s=600.0)}


def spawn(argv: list[str], timeout: float) -> dict:
    """This script's child with ``argv`` in its own process (bench_train_step.spawn)."""
    return spawn_child(argv, timeout, script=__file__)


def _timed(fn) -> tuple[float, dict]:
    t0 = time.perf_counter()
    phases = fn()
    return time.perf_counter() - t0, phases


def fit_ease(x, lam: float, dtype: str, solver: str, weighted: bool) -> dict:
    """One EASE fit in phases (seconds): gram, solve, scores."""
    from tall_jax.closed.ease import ease_from_gram, gram
    from tall_jax.closed.scoring import Fitted
    w_N = None
    if weighted:  # the values do not change the cost: a fixed positive draw with mean 1
        w_N = np.random.default_rng(0).uniform(0.1, 1.9, x.shape[0])
        w_N /= w_N.mean()
    out = {}
    t = time.perf_counter()
    g = gram(x, w_N, dtype)
    out["gram_s"] = time.perf_counter() - t
    out["gram_nnz"] = int(g.nnz)
    t = time.perf_counter()
    b = ease_from_gram(g, lam, dtype=dtype, solver=solver)
    out["solve_s"] = time.perf_counter() - t
    del g
    t = time.perf_counter()
    fitted, block = Fitted(item_MxM=b), 4096
    for lo in range(0, x.shape[0], block):
        fitted.rows(x, lo, min(lo + block, x.shape[0]))
    out["scores_s"] = time.perf_counter() - t
    return out


def fit_loca(x, lam: float, dtype: str, solver: str, n_local: int) -> dict:
    """One LOCA-EASE fit in phases: embedding + anchors + kernels, then the local models and mixture."""
    from tall_jax.closed import loca_ease
    from tall_jax.closed.config import ClosedConfig
    from tall_jax.closed.grid import local_chunk
    cfg = ClosedConfig(model="loca_ease", n_local=n_local, dtype=dtype)
    out = {}
    t = time.perf_counter()
    kern = loca_ease.loca_kernels(loca_ease.svd_embeddings(x, cfg.latent), cfg.n_local, cfg.anchor_stride,
                                  cfg.train_h, cfg.test_h)
    out["kernels_s"] = time.perf_counter() - t
    chunk = local_chunk(cfg, x.shape[1], solver)
    t = time.perf_counter()
    loca_ease.mixture_rows(x, kern.train_NxD, kern.test_NxD, [lam], dtype=dtype, solver=solver, chunk=chunk)
    out["local_models_s"] = time.perf_counter() - t
    out.update(n_anchors=int(kern.anchors_A.size), n_distinct_anchors=int(kern.distinct_D.size), chunk=chunk,
               seconds_per_local_model=out["local_models_s"] / max(int(kern.distinct_D.size), 1),
               users_fallback=int((kern.test_NxD.sum(1) <= 0).sum()))
    return out


def run_child(args) -> None:
    from tall_jax.closed.ease import binary
    from tall_jax.closed.linalg import resolve_solver
    model, dataset = args.case.split(":")
    ds = load(dataset, args.data_dir)
    x = binary(ds.train, args.dtype)
    solver = resolve_solver(args.solver, args.dtype)
    if model == "loca_ease":
        fit = lambda: fit_loca(x, args.lam, args.dtype, solver, args.n_local)  # noqa: E731
    else:
        fit = lambda: fit_ease(x, args.lam, args.dtype, solver, model == "ease_weighted")  # noqa: E731
    first_s, phases = _timed(fit)
    walls, all_phases = [], [phases]
    for _ in range(args.repeats):
        wall, ph = _timed(fit)
        walls.append(wall)
        all_phases.append(ph)
    out = dict(first_s=first_s, first_note="first fit (includes compilation with the jax solver)",
               phases_first=phases, solver=solver, data_source=ds.source, n_users=int(x.shape[0]),
               n_items=int(x.shape[1]), train_nnz=int(x.nnz))
    if walls:
        out["wall"] = stats(walls)
        out["phases_median"] = {k: float(np.median([p[k] for p in all_phases[1:]]))
                                for k in phases if k.endswith("_s")}
    else:
        out["wall"] = stats([first_s])
    out["peak_rss_mb"] = peak_rss_mb()
    import jax
    try:
        out["device_peak_bytes"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    except Exception:  # noqa: BLE001 - CPU devices have no memory stats
        pass
    out["loadavg_end"] = os.getloadavg()
    print("RESULT" + json.dumps(out), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=None,
                   help=f"MODEL:DATASET cases (default: {' '.join(CASES)}); models ease, ease_weighted, "
                        f"loca_ease; datasets {', '.join(SHAPES)}")
    p.add_argument("--quick", action="store_true", help="tiny shapes only (a check of the harness)")
    p.add_argument("--lam", type=float, default=800.0, help="the fixed λ of every fit")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--solver", default="auto", choices=("auto", "lapack", "jax"))
    p.add_argument("--n-local", type=int, default=100, help="LOCA-EASE anchors")
    p.add_argument("--repeats", type=int, default=0, help="timed fits after the first (median reported)")
    p.add_argument("--data-dir", default=os.environ.get("TALL_JAX_DATA", ""),
                   help="folder with ml-1m/tall_split (else random data of the ML-1M shape)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    p.add_argument("--name", default=None, help="results file name (default cpu_closed.json, "
                                                "cpu_closed_quick.json with --quick)")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"), help="results folder")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_child(args)
    cases = args.cases or list(QUICK_CASES if args.quick else CASES)
    for case in cases:
        model, _, dataset = case.partition(":")
        if model not in ("ease", "ease_weighted", "loca_ease") or dataset not in SHAPES:
            p.error(f"bad case {case!r}: expected MODEL:DATASET with a model of ease, ease_weighted, "
                    f"loca_ease and a dataset of {', '.join(SHAPES)}")
    if args.quick:
        args.n_local = min(args.n_local, 10)
    result = dict(versions=versions(), loadavg_start=os.getloadavg(), lam=args.lam, dtype=args.dtype,
                  started=time.strftime("%Y-%m-%dT%H:%M:%S"), quick=args.quick, runs=[])
    common = ["--lam", str(args.lam), "--dtype", args.dtype, "--solver", args.solver, "--n-local",
              str(args.n_local), "--repeats", str(args.repeats), "--data-dir", args.data_dir]
    print(f"{'case':22} {'users':>7} {'items':>7} {'first s':>8} {'median s':>8} {'peak MB':>8}  phases",
          flush=True)
    for case in cases:
        r = spawn(["--case", case, *common], args.timeout)
        r["case"] = case
        target = TARGETS.get(case)
        if target and "wall" in r:
            r["target"] = target
            r["meets_target"] = bool(r["wall"]["median"] <= target["wall_s"] and
                                     r["peak_rss_mb"] <= target.get("peak_rss_mb", float("inf")))
        result["runs"].append(r)
        if "wall" not in r:
            print(f"{case:22} ERROR {r.get('error', '')[-300:]}", flush=True)
            continue
        phases = " ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in r["phases_first"].items())
        print(f"{case:22} {r['n_users']:7d} {r['n_items']:7d} {r['first_s']:8.2f} {r['wall']['median']:8.2f} "
              f"{r['peak_rss_mb']:8.0f}  {phases}", flush=True)
    result["loadavg_end"] = os.getloadavg()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or ("cpu_closed_quick.json" if args.quick else "cpu_closed.json")
    path = out_dir / (name if name.endswith(".json") else f"{name}.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    failed = [r["case"] for r in result["runs"] if "wall" not in r]
    if failed:  # after writing: the rows that ran are kept
        sys.exit(f"error: case(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
