"""Benchmark the TALL training step, epoch and evaluation: fused vs reference JAX paths vs a per-expert
JAX loop vs the PyTorch per-expert loop, against the FLOP floor at the plain-GEMM rate of the same run.

    JAX_PLATFORMS=cpu python benchmarks/bench_train_step.py --dataset ml-1m --experts 10 100 \
        --modes vmapped fit_epoch loop torch --variants fused=' {}' \
        reference='{"forward_impl": "reference"}' --repeats 5

Every (dataset, K, variant, mode) runs in its own subprocess, so its peak RSS (VmHWM) or device peak
memory is its own. Modes: ``vmapped`` one ``train_step``; ``epoch`` one ``train_epoch`` (a
``lax.scan``); ``eval`` one ``evaluate`` of every user; ``fit_epoch`` an epoch plus the evaluation
(what ``fit`` does per epoch); ``loop`` and ``torch`` one step of the per-expert loops (no variants).
Reports compile time apart, median / IQR / min / max of repeats (wall and process CPU time), peak memory,
analytic FLOPs, the step's multiple of its FLOP floor at the measured dense-matmul rate, and the
speed-up of each variant over the reference variant and over the PyTorch loop. Writes
benchmarks/results/<name>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's tall_jax (and benchmarks/), as the children get it
SHAPES = {  # users, items, interactions (all splits); ML-1M real data is used when present
    "ml-1m": (6040, 3706, 1_000_209, 512),
    "yelp": (25_677, 25_815, 731_671, 256),
    "cds": (24_179, 27_602, 1_120_000, 256),
    "tiny": (300, 200, 9_000, 64),  # for --dry-run checks of the harness
}


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def random_dataset(name: str, seed: int = 0):
    """Random binary data with the shape and density of ``name`` (popularity-skewed items), 70/10/20."""
    import scipy.sparse as sp
    n_users, n_items, nnz, _ = SHAPES[name]
    rng = np.random.default_rng(seed)
    counts = np.maximum(5, rng.geometric(1.0 / (nnz / n_users), n_users)).clip(max=n_items // 4)
    pop = 1.0 / (np.arange(n_items) + 10.0) ** 0.8
    cdf = np.cumsum(pop) / pop.sum()
    rows = np.repeat(np.arange(n_users), counts)
    cols = rng.permutation(n_items)[np.searchsorted(cdf, rng.uniform(size=rows.size))]
    mat = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n_users, n_items))
    mat.data[:] = 1.0
    coo = mat.tocoo()
    part = rng.choice(3, size=coo.nnz, p=[0.7, 0.1, 0.2])
    split = [sp.csr_matrix((coo.data[part == i], (coo.row[part == i], coo.col[part == i])),
                           shape=mat.shape) for i in range(3)]
    return SimpleNamespace(train=split[0], valid=split[1], test=split[2], n_users=n_users,
                           n_items=n_items, source="random")


def load(name: str, data_dir: str | None):
    if name == "ml-1m" and data_dir and (Path(data_dir) / "ml-1m").is_dir():
        from tall_jax.datasets import load_dataset
        ds = load_dataset("ml-1m", data_dir=data_dir)
        return SimpleNamespace(train=ds.train, valid=ds.valid, test=ds.test, n_users=ds.n_users,
                               n_items=ds.n_items, source="real (authors' split)")
    return random_dataset(name)


def stats(times: list[float]) -> dict:
    a = np.asarray(times)
    return dict(median=float(np.median(a)), q25=float(np.percentile(a, 25)),
                q75=float(np.percentile(a, 75)), min=float(a.min()), max=float(a.max()), n=len(a))


def timed(fn, repeats: int, sync) -> tuple[dict, dict]:
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        sync(fn())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return stats(wall), stats(cpu)


def analytic_flops(B: int, M: int, d: int, K: int, nnz: int) -> dict:
    """Matmul FLOPs of one training step (elementwise work not counted).

    decoder: fwd 2BdMK, bwd (dW and dz) 4BdMK. encoder as a dense [B,M]x[M,2d] matmul: fwd 4BMdK and
    bwd dW 4BMdK (no gradient to the data). The encoder *need* with a sparse input (nnz train entries
    in the batch) is 8 nnz d K."""
    dec = 6 * B * d * M * K
    enc_dense = 8 * B * M * d * K
    enc_sparse = 8 * nnz * d * K
    return dict(decoder=dec, encoder_dense=enc_dense, encoder_sparse_need=enc_sparse,
                floor=dec + enc_sparse, dense_total=dec + enc_dense)


# ------------------------------------------------------------------------------------------ children
def child_matmul(args) -> dict:
    import jax
    import jax.numpy as jnp
    m, k, n = args.matmul_shape
    a = jax.random.normal(jax.random.PRNGKey(0), (m, k))
    b = jax.random.normal(jax.random.PRNGKey(1), (k, n))
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    w, c = timed(lambda: f(a, b), max(args.repeats, 3), jax.block_until_ready)
    flops = 2 * m * k * n
    out = dict(shape=[m, k, n], jax_gflops=flops / w["min"] / 1e9, jax_gflops_median=flops / w["median"] / 1e9,
               jax_wall=w)
    try:
        import torch
        ta, tb = torch.randn(m, k), torch.randn(k, n)
        ta @ tb
        tw, _ = timed(lambda: ta @ tb, max(args.repeats, 3), lambda x: x)
        out.update(torch_gflops=flops / tw["min"] / 1e9, torch_gflops_median=flops / tw["median"] / 1e9)
    except ImportError:
        pass
    return out


def child_jax(args, ds) -> dict:
    import jax
    import jax.numpy as jnp
    from tall_jax import batching, steps
    from tall_jax import state as state_lib
    from tall_jax.configs import make_config
    K = args.k
    preset = "synthetic" if args.dataset == "tiny" else args.dataset
    cfg = make_config(preset, "tall", n_experts=K, batch_size=SHAPES[args.dataset][3],
                      **json.loads(args.options))
    data = batching.UserData.from_dataset(ds)
    state = state_lib.init(jax.random.PRNGKey(0), cfg, ds.n_users, ds.n_items)
    out = dict(config_options=json.loads(args.options))
    if args.mode == "vmapped":
        batch = batching.make_batch(data, jnp.arange(cfg.batch_size, dtype=jnp.int32))
        t0 = time.perf_counter()
        lowered = steps.train_step.lower(state, batch, cfg)
        compiled = lowered.compile()
        out["compile_s"] = time.perf_counter() - t0
        try:
            ca = compiled.cost_analysis()
            ca = ca[0] if isinstance(ca, (list, tuple)) else ca
            out["xla_flops"] = float(ca.get("flops", float("nan")))
        except Exception as err:  # noqa: BLE001 - cost analysis is optional
            out["xla_flops_error"] = repr(err)
        holder = [state]

        def run():
            holder[0], m = compiled(holder[0], batch)
            return holder[0].params

        run()  # warm-up (first run allocates)
        out["wall"], out["cpu"] = timed(run, args.repeats, jax.block_until_ready)
    elif args.mode == "eval":
        t0 = time.perf_counter()
        jax.block_until_ready(steps.evaluate(state.params, data, cfg))  # compiles
        out["compile_s"] = time.perf_counter() - t0
        out["compile_note"] = "first evaluation incl. compilation"
        out["wall"], out["cpu"] = timed(lambda: steps.evaluate(state.params, data, cfg),
                                        args.epoch_repeats, jax.block_until_ready)
    elif args.mode.startswith("seeds_"):
        out.update(_child_seeds(args, cfg, ds, data))
    else:  # epoch, fit_epoch
        t0 = time.perf_counter()
        compiled = steps.train_epoch.lower(state, data, cfg).compile()
        out["compile_s"] = time.perf_counter() - t0  # the evaluation compiles in the warm-up
        holder = [state]

        def run():
            holder[0], m = compiled(holder[0], data)
            if args.mode == "fit_epoch":
                return steps.evaluate(holder[0].params, data, cfg)
            return holder[0].params

        run()  # warm-up
        out["wall"], out["cpu"] = timed(run, args.epoch_repeats, jax.block_until_ready)
        out["steps_per_epoch"] = -(-ds.n_users // cfg.batch_size)
    return out


def _child_seeds(args, cfg, ds, data) -> dict:
    """``--runs`` seeds' fit_epoch (train epoch + evaluation): one after another, or as one program
    (tall_jax.fit_seeds). The time is for all runs together."""
    import jax
    from tall_jax import fit_seeds, steps
    from tall_jax import state as state_lib
    seeds = list(range(args.runs))
    if args.mode == "seeds_vmapped":
        holder = [fit_seeds.init_runs(cfg, seeds, ds.n_users, ds.n_items)]

        def run():
            holder[0], _ = fit_seeds.train_epochs(holder[0], data, cfg)
            return fit_seeds.evaluate_runs(holder[0].params, data, cfg)
    else:
        holder = [state_lib.init(jax.random.PRNGKey(s), cfg, ds.n_users, ds.n_items) for s in seeds]

        def run():
            out = []
            for r in range(len(seeds)):
                holder[r], _ = steps.train_epoch(holder[r], data, cfg)
                out.append(steps.evaluate(holder[r].params, data, cfg))
            return out
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    out = {"compile_s": time.perf_counter() - t0, "compile_note": "first epoch incl. compilation",
           "runs": len(seeds)}
    out["wall"], out["cpu"] = timed(run, args.epoch_repeats, jax.block_until_ready)
    return out


def child_loop(args, ds) -> dict:
    """The same maths as a per-expert Python loop in JAX: per-expert jitted forward, a jitted head
    (gate, mixture, loss; gradient to the logits and KLs), per-expert jitted backward and Adam."""
    import jax
    import jax.numpy as jnp
    import optax
    from tall_jax import batching, gate as gate_lib, vae
    from tall_jax.configs import make_config
    from tall_jax.state import make_optimizer
    K = args.k
    cfg = make_config("synthetic" if args.dataset == "tiny" else args.dataset, "tall", n_experts=K,
                      batch_size=SHAPES[args.dataset][3])
    B, M = cfg.batch_size, ds.n_items
    x = batching.dense_rows(jnp.asarray(batching.padded_rows(ds.train[:B])[:B]), M)
    v = batching.dense_rows(jnp.asarray(batching.padded_rows(ds.valid[:B])[:B]), M)
    xn = vae.normalise(x)
    experts = [vae.init_expert(k, M, cfg.latent) for k in jax.random.split(jax.random.PRNGKey(0), K)]
    opt = make_optimizer(cfg)
    opt_states = [opt.init(p) for p in experts]
    keys = jax.random.split(jax.random.PRNGKey(1), K)
    fwd = jax.jit(lambda p, k: vae.expert_forward(p, xn, k, train=True, noise_std=cfg.noise_std))

    @jax.jit
    def head(logits_ExBxM, kl_ExB):
        def loss(lg, kl):
            L = gate_lib.masked_validation_loss(lg, x, v).T
            g = gate_lib.loss_gate(L, jnp.sum(v, -1) > 0)
            mix = gate_lib.mix_logits(g, lg)
            ce = jnp.mean(-jnp.sum(x * jax.nn.log_softmax(mix, -1), -1))
            return ce + 0.01 * jnp.sum(g @ jnp.mean(kl, -1))
        return jax.value_and_grad(loss, argnums=(0, 1))(logits_ExBxM, kl_ExB)

    @jax.jit
    def bwd_update(p, s, k, dl, dkl):
        _, vjp = jax.vjp(lambda q: vae.expert_forward(q, xn, k, train=True,
                                                      noise_std=cfg.noise_std), p)
        (g,) = vjp((dl, dkl))
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s

    def step():
        outs = [fwd(p, k) for p, k in zip(experts, keys)]
        lossv, (dl, dkl) = head(jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs]))
        for i in range(K):
            experts[i], opt_states[i] = bwd_update(experts[i], opt_states[i], keys[i], dl[i], dkl[i])
        return experts

    t0 = time.perf_counter()
    step()
    jax.block_until_ready(experts)
    out = dict(compile_s=time.perf_counter() - t0, compile_note="first step incl. compilation")
    out["wall"], out["cpu"] = timed(step, args.repeats, jax.block_until_ready)
    return out


def child_torch(args, ds) -> dict:
    import torch
    from benchmarks.torch_reference import TorchTALL
    from tall_jax.configs import make_config
    B = SHAPES[args.dataset][3]
    cfg = make_config("synthetic" if args.dataset == "tiny" else args.dataset, "tall",
                      n_experts=args.k, batch_size=B)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32, like our default
    x = torch.tensor(ds.train[:B].toarray(), dtype=torch.float32, device=device)
    v = torch.tensor(ds.valid[:B].toarray(), dtype=torch.float32, device=device)
    model = TorchTALL(ds.n_items, args.k, cfg.latent, cfg.reg, 0, device=device)
    w = torch.ones(B, device=device)
    t0 = time.perf_counter()
    model.step(x, v, w, 0.0)  # float(loss) synchronises the device
    out = dict(compile_s=time.perf_counter() - t0, compile_note="first step (no compilation)",
               torch_threads=torch.get_num_threads(), torch_device=device)
    out["wall"], out["cpu"] = timed(lambda: model.step(x, v, w, 0.0), args.repeats, lambda r: r)
    if device == "cuda":
        out["device_peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def run_child(args) -> None:
    if args.mode == "matmul":
        out = child_matmul(args)
    else:
        ds = load(args.dataset, args.data_dir)
        fn = {"loop": child_loop, "torch": child_torch}
        out = fn.get(args.mode, child_jax)(args, ds)
        out["data_source"] = ds.source
    out["peak_rss_mb"] = peak_rss_mb()
    if args.mode != "torch":
        import jax
        try:
            ms = jax.devices()[0].memory_stats() or {}
            out["device_peak_bytes"] = ms.get("peak_bytes_in_use")
        except Exception:  # noqa: BLE001 - CPU devices have no memory stats
            pass
    out["loadavg_end"] = os.getloadavg()
    print("RESULT" + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- parent
def versions() -> dict:
    import jax
    import jaxlib
    out = dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
               device=str(jax.devices()[0]), device_kind=jax.devices()[0].device_kind,
               n_devices=jax.device_count(), cpu_count=os.cpu_count(), machine=platform.machine(),
               xla_flags=os.environ.get("XLA_FLAGS", ""))
    from tall_jax.results import source_commit
    out["commit"] = source_commit(REPO)  # the code the rows measure ("+dirty": uncommitted changes)
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:
        out["torch"] = None
    return out


def spawn(argv: list[str], timeout: float, script: str | Path = __file__) -> dict:
    """Run ``script``'s child (``script --child argv``; default: this script) in its own process; its
    RESULT line as a dict, or {"error": ...}."""
    cmd = [sys.executable, str(Path(script).resolve()), "--child", *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not lines:
        return dict(error=f"exit {proc.returncode}: {proc.stderr[-1500:]}")
    return json.loads(lines[-1][len("RESULT"):])


def batch_nnz(ds, B: int) -> int:
    return int(ds.train[:B].nnz)


MODES = ["vmapped", "epoch", "eval", "fit_epoch", "seeds_serial", "seeds_vmapped", "loop", "torch"]
JAX_MODES = ("vmapped", "epoch", "eval", "fit_epoch", "seeds_serial", "seeds_vmapped")


def parse_variants(items: list[str]) -> dict[str, dict]:
    """NAME=JSON pairs of TALLConfig overrides, e.g. reference='{"forward_impl": "reference"}'."""
    out = {}
    for item in items:
        name, _, options = item.partition("=")
        out[name] = json.loads(options or "{}")
    return out


def print_row(r: dict) -> None:
    tag = f"{r['dataset']:7} {r['K']:>4} {r['variant']:10} {r['mode']:9}"
    if "wall" not in r:
        print(f"{tag} ERROR {r.get('error', '')[-300:]}", flush=True)
        return
    iqr = f"{r['wall']['q25']:.3f}-{r['wall']['q75']:.3f}"
    floor = f"{r['x_floor']:7.2f}" if "x_floor" in r else f"{'':7}"
    print(f"{tag} {r['compile_s']:8.2f} {r['wall']['median']:8.3f} {iqr:>15} "
          f"{r['cpu']['median']:8.2f} {r['peak_rss_mb']:7.0f} {floor}", flush=True)


def speedups(runs: list[dict], baseline_variant: str) -> list[dict]:
    """Per (dataset, K, mode): each variant's median time against the baseline variant's, and each
    step's against the PyTorch loop's step."""
    med = {(r["dataset"], r["K"], r["variant"], r["mode"]): r["wall"]["median"]
           for r in runs if "wall" in r}
    out = []
    for (ds, k, var, mode), t in med.items():
        if var in ("-",):
            continue
        row = dict(dataset=ds, K=k, variant=var, mode=mode, median_s=t)
        base = med.get((ds, k, baseline_variant, mode))
        if base is not None:
            row[f"x_vs_{baseline_variant}"] = base / t
        if mode == "seeds_vmapped" and (ds, k, var, "seeds_serial") in med:
            row["x_vs_seeds_serial"] = med[(ds, k, var, "seeds_serial")] / t
        torch_t = med.get((ds, k, "-", "torch"))
        if torch_t is not None and mode == "vmapped":
            row["x_vs_torch"] = torch_t / t
        out.append(row)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", default=["ml-1m"], choices=list(SHAPES),
                   help="shapes to run (ml-1m is the real split when --data-dir has it)")
    p.add_argument("--experts", nargs="+", type=int, default=[10, 100], help="values of E")
    p.add_argument("--modes", nargs="+", default=["vmapped", "fit_epoch", "torch"], choices=MODES,
                   help="what to time (see the module docstring)")
    p.add_argument("--variants", nargs="+", default=['fused={}', 'reference={"forward_impl": "reference"}'],
                   help="NAME=JSON TALLConfig overrides; each JAX mode runs once per variant")
    p.add_argument("--baseline-variant", default="reference",
                   help="the variant the speed-ups are measured against")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of a step")
    p.add_argument("--epoch-repeats", type=int, default=1, help="timed repeats of an epoch / eval")
    p.add_argument("--runs", type=int, default=5, help="seeds of the seeds_* modes")
    p.add_argument("--data-dir", default=os.environ.get("TALL_JAX_DATA", ""),
                   help="folder with ml-1m/tall_split (else random data of the ML-1M shape)")
    p.add_argument("--matmul-shape", type=int, nargs=3, default=[512, 3706, 20000], metavar=("M", "K", "N"),
                   help="the dense matmul [M,K]x[K,N] whose rate sets the FLOP floor (default: an ML-1M decoder "
                        "layer at E = 100 flattened)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per subprocess")
    p.add_argument("--name", default=None, help="results file name, .json added when missing (default: bench_<time>.json)")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"), help="results folder")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.dataset = args.dataset[0]
        return run_child(args)
    if any(k < 1 for k in args.experts):
        p.error(f"--experts must be >= 1, got {args.experts}")
    variants = parse_variants(args.variants)
    common = ["--repeats", str(args.repeats), "--epoch-repeats", str(args.epoch_repeats), "--runs", str(args.runs),
              "--data-dir", args.data_dir]
    result = dict(versions=versions(), loadavg_start=os.getloadavg(), variants=variants,
                  started=time.strftime("%Y-%m-%dT%H:%M:%S"), runs=[])
    m, k, n = args.matmul_shape
    mm = spawn(["--mode", "matmul", "--dataset", "ml-1m", "--matmul-shape", str(m), str(k), str(n), *common],
               args.timeout)
    result["matmul"] = mm  # (older result files: "matmul_512x3706x20000", the default shape)
    rate = mm.get("jax_gflops", float("nan"))
    print(f"dense f32 matmul [{m},{k}]x[{k},{n}]: JAX {rate:.0f} GFLOP/s, "
          f"torch {mm.get('torch_gflops', float('nan')):.0f} GFLOP/s", flush=True)
    print(f"{'dataset':7} {'K':>4} {'variant':10} {'mode':9} {'compile':>8} {'median':>8} "
          f"{'IQR':>15} {'cpu med':>8} {'peakMB':>7} {'floor x':>7}", flush=True)
    for name in args.dataset:
        ds = load(name, args.data_dir)
        B = SHAPES[name][3]
        for K in args.experts:
            fl = analytic_flops(B, ds.n_items, 100, K, batch_nnz(ds, B))
            for mode in args.modes:
                for var, options in (variants.items() if mode in JAX_MODES else [("-", {})]):
                    r = spawn(["--mode", mode, "--dataset", name, "--k", str(K),
                               "--options", json.dumps(options), *common], args.timeout)
                    r.update(dataset=name, K=K, mode=mode, variant=var, batch=B,
                             n_users=ds.n_users, n_items=ds.n_items,
                             batch_train_nnz=batch_nnz(ds, B), analytic_flops=fl)
                    if "wall" in r and mode in ("vmapped", "loop", "torch"):
                        r["x_floor"] = r["wall"]["median"] / (fl["floor"] / (rate * 1e9))
                    print_row(r)
                    result["runs"].append(r)
    result["speedups"] = speedups(result["runs"], args.baseline_variant)
    for row in result["speedups"]:
        extra = "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k.startswith("x_vs"))
        print(f"{row['dataset']:7} {row['K']:>4} {row['variant']:10} {row['mode']:9} "
              f"{row['median_s']:8.3f} s  {extra}")
    result["loadavg_end"] = os.getloadavg()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or f"bench_{time.strftime('%Y%m%d_%H%M%S')}"
    path = out_dir / (name if name.endswith(".json") else f"{name}.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
