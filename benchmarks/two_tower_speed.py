"""Training examples per second of the two-tower train step (tall_jax.two_tower.steps.two_tower_train_step over
a TwoTowerState) against a PyTorch two-tower of exactly the same shape on the same machine.

    JAX_PLATFORMS=cpu python benchmarks/two_tower_speed.py                 # every case, ~10 minutes
    JAX_PLATFORMS=cpu python benchmarks/two_tower_speed.py --presets paper --models mtl --repeats 5
    python benchmarks/two_tower_speed.py --quick                           # the cpu preset, a check of the harness

Cases are PRESET:TITLE_DIM:MODEL. Presets are tall_jax.two_tower.cli.PRESETS (cpu: width 128, batch 1024;
paper: width 512, batch 8192); the user features have the synthetic data's width (SyntheticConfig.user_dim,
32) and the title features the synthetic width (32) or the paper's 768-d text embedding. Models are those of
tall_jax.two_tower.experiment.model_spec: ``baseline`` (one head, TwoTower(n_groups=0)) and ``mtl`` (one task
block per territory group, G = 4 as in the synthetic data, masked per-group BCE). The PyTorch side
(benchmarks/torch_two_tower.py) has the same layers and widths, BatchNorm in train mode, ReLU, the same
masked per-group BCE, Adam lr 1e-3, float32, ``torch.set_num_threads`` = the cores this process may run on
(what XLA's CPU thread pool is sized to; pin with ``taskset`` to run on fewer).

Before it is timed, a check process gives the PyTorch model the JAX model's initial weights
(benchmarks/torch_two_tower.py's converter; saved for the torch process, which imports no JAX), compares the
gradients of both and of float64 copies of both, and lets each take one step on the same batch: losses,
gradient errors and parameter differences are in the torch row's ``check`` (criteria in ``child_check``);
a disagreement makes the run exit non-zero after writing the JSON. Every (case, implementation, variant)
runs in its own subprocess (its peak RSS is its own). A timed repeat is enough back-to-back steps on one fixed full batch
(already on the device) to last ``--repeat-seconds``; reported are the first call (JAX: lower + compile;
torch: the first step) apart, the median / IQR / min / max of the repeats' time per step in wall and process
CPU time, examples per second (batch / median step), the matmul FLOPs of a step (forward + the weight and
input gradients, about 3x the forward) and the resulting GFLOP/s, XLA's cost_analysis FLOPs, the step's
multiple of its FLOP floor at the plain-GEMM rate measured in the same run (a [512, 3706] x [3706, 20000]
SGEMM, the other benchmarks' reference, and the [B, d] x [d, d] GEMM of each preset in JAX and torch), and
JAX's speed-up over PyTorch per case (target: >= 2x). ``--variants NAME=JSON`` runs the JAX side once per
set of TwoTower / TwoTowerConfig options (e.g. ``'rank64={"head_rank": 64}'``; such a variant is no longer the
PyTorch model's shape: its speed-up is recorded with ``same_model_as_torch: false``). Writes
benchmarks/results/<name>.json (default cpu_two_tower.json, cpu_two_tower_quick.json with --quick) with the
versions, the device, the load average at start and end and every row's shapes.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's tall_jax and benchmarks/, as the children get them

from benchmarks.bench_train_step import peak_rss_mb, stats, versions  # noqa: E402
from benchmarks.bench_train_step import spawn as spawn_child  # noqa: E402

MODELS = ("baseline", "mtl")
IMPLS = ("jax", "torch")
PAPER_TITLE_DIM = 768  # the paper's title text embedding
TARGET_X_VS_TORCH = 2.0  # issue 33 item 6
MODEL_FIELDS = ("n_layers", "momentum", "head_rank", "head_dropout")  # TwoTower options a variant may set
CONFIG_FIELDS = ("learning_rate", "weight_decay")  # TwoTowerConfig options


def presets() -> dict:
    from tall_jax.two_tower.cli import PRESETS
    return PRESETS


def synthetic_widths() -> tuple[int, int, int]:
    """(user feature width, title feature width, groups) of the synthetic data."""
    from tall_jax.two_tower.synthetic import SyntheticConfig
    c = SyntheticConfig()
    return c.user_dim, c.item_dim, len(c.group_scale)


def parse_case(case: str) -> tuple[str, int, str]:
    preset, title_dim, model = case.split(":")
    return preset, int(title_dim), model


def step_flops(B: int, U: int, I: int, D: int, G: int, n_layers: int = 2, head_rank: int = 0) -> dict:
    """Matmul FLOPs of one train step (2 per multiply-add; elementwise work, BatchNorm and Adam not counted).

    Forward: each tower ``[B, F] x [F, d]`` then ``n_layers - 1`` x ``[B, d] x [d, d]``; the baseline's dot
    ``<u, t>`` (2d), or the G task blocks ``[B, d] x [d, G d]`` (or ``d x r`` and ``r x d`` with ``head_rank = r``)
    and their G dots. Backward: every weight gradient (the forward GEMM's FLOPs again) and every input gradient
    except those of the first layers (no gradient to the features); a dot's backward is twice its forward.
    """
    tower_fwd = 2 * B * (U * D + I * D + 2 * (n_layers - 1) * D * D)
    tower_dx = 2 * B * 2 * (n_layers - 1) * D * D
    if G == 0:
        head_fwd, dots = 0, 2 * B * D
    else:
        head_fwd = 2 * B * G * (2 * D * head_rank if head_rank else D * D)
        dots = 2 * B * G * D
    fwd = tower_fwd + head_fwd + dots
    train = fwd + (tower_fwd + head_fwd) + (tower_dx + head_fwd) + 2 * dots
    return dict(forward=fwd, train=train, train_per_example=train / B, forward_per_example=fwd / B,
                three_x_forward=3 * fwd)


def make_model(model: str, preset: str, G: int, options: dict):
    from tall_jax.two_tower import steps
    from tall_jax.two_tower.model import TwoTower
    unknown = set(options) - set(MODEL_FIELDS) - set(CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown variant options {sorted(unknown)}; known: {MODEL_FIELDS + CONFIG_FIELDS}")
    width = presets()[preset]["width"]
    m = TwoTower(n_groups=0 if model == "baseline" else G, width=width,
                 **{k: v for k, v in options.items() if k in MODEL_FIELDS})
    return steps.TwoTowerConfig(m, **{k: v for k, v in options.items() if k in CONFIG_FIELDS})


def make_numpy_batch(B: int, U: int, I: int, G: int, seed: int = 0):
    """A full batch (every row real): standard-normal features, labels with one positive in five (alpha = 4),
    groups uniform over G."""
    from tall_jax.two_tower import steps
    rng = np.random.default_rng(seed)
    return steps.make_batch(rng.normal(size=(B, U)).astype(np.float32), rng.normal(size=(B, I)).astype(np.float32),
                            (rng.random(B) < 0.2).astype(np.float32), rng.integers(0, max(G, 1), B).astype(np.int32),
                            B)


def jax_matmul_precision() -> str | None:
    """JAX's process-wide default matmul precision (``JAX_DEFAULT_MATMUL_PRECISION``; None: the backend's
    default, full float32 on a CPU, TF32 for float32 on recent NVIDIA GPUs)."""
    import jax
    return jax.config.jax_default_matmul_precision


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cores() -> int:
    """The cores this process may run on: XLA's CPU thread pool is sized to them, torch gets as many threads."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def time_steps(step, sync, target_s: float, repeats: int) -> dict:
    """Warm up, pick n steps per repeat so a repeat lasts about ``target_s``, then time ``repeats`` repeats.
    Returns per-step wall and CPU statistics and n."""
    sync(step())  # second call: warm (allocations done)
    t0 = time.perf_counter()
    sync(step())
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(1, math.ceil(target_s / one))
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = None
        for _ in range(n):
            out = step()
        sync(out)
        wall.append((time.perf_counter() - t0) / n)
        cpu.append((time.process_time() - c0) / n)
    return dict(wall=stats(wall), cpu=stats(cpu), steps_per_repeat=n)


# ------------------------------------------------------------------------------------------ children
def child_matmul(args) -> dict:
    """Plain f32 GEMM rates of one library (``--impl matmul_jax`` or ``matmul_torch``, each in its own process):
    the other benchmarks' reference shape and each preset's [B, d] x [d, d] (the towers' second layer)."""
    shapes = {"reference": (512, 3706, 20000) if not args.quick else (512, 1024, 4096)}
    for name in args.presets:
        p = presets()[name]
        shapes[f"{name}_BxDxD"] = (p["batch_size"], p["width"], p["width"])
    lib = args.impl.split("_")[1]
    out = {"shapes": {k: list(v) for k, v in shapes.items()}}
    if lib == "torch":
        import torch
        torch.set_num_threads(cores())
        out["torch_threads"] = torch.get_num_threads()
    for name, (m, k, n) in shapes.items():
        if lib == "jax":
            import jax
            import jax.numpy as jnp
            a = jax.random.normal(jax.random.PRNGKey(0), (m, k))
            b = jax.random.normal(jax.random.PRNGKey(1), (k, n))
            f = jax.jit(jnp.matmul)
            r = time_steps(lambda: f(a, b), jax.block_until_ready, min(args.repeat_seconds, 0.3), max(args.repeats, 3))
        else:
            ta, tb = torch.randn(m, k), torch.randn(k, n)
            r = time_steps(lambda: ta @ tb, lambda x: x, min(args.repeat_seconds, 0.3), max(args.repeats, 3))
        flops = 2 * m * k * n
        out[f"{name}_{lib}_gflops"] = flops / r["wall"]["min"] / 1e9
        out[f"{name}_{lib}_gflops_median"] = flops / r["wall"]["median"] / 1e9
    return out


def child_jax(args) -> dict:
    import jax
    from tall_jax.two_tower import steps
    preset, title_dim, model = parse_case(args.case)
    B = presets()[preset]["batch_size"]
    config = make_model(model, preset, args.groups, json.loads(args.options))
    state = steps.init(jax.random.PRNGKey(0), config, args.user_dim, title_dim)
    batch = jax.device_put(make_numpy_batch(B, args.user_dim, title_dim, args.groups))
    t0 = time.perf_counter()
    compiled = steps.two_tower_train_step.lower(state, batch, config).compile()
    out = dict(compile_s=time.perf_counter() - t0, compile_note="lower + compile")
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        out["xla_flops"] = float(ca.get("flops", float("nan")))
    except Exception as err:  # noqa: BLE001 - cost analysis is optional
        out["xla_flops_error"] = repr(err)
    holder = [state]

    def step():
        holder[0], metrics = compiled(holder[0], batch)
        return metrics["loss"]

    t0 = time.perf_counter()
    first_loss = float(step())
    out["first_step_s"] = time.perf_counter() - t0
    out["first_loss"] = first_loss
    out.update(time_steps(step, jax.block_until_ready, args.repeat_seconds, args.repeats))
    out["device"] = str(jax.devices()[0])
    return out


def flat_numpy(tree) -> dict[str, np.ndarray]:
    """A flax pytree as {"user_tower/dense_0/kernel": array, ...}."""
    import jax
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def nested(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        *parents, leaf = key.split("/")
        d = out
        for k in parents:
            d = d.setdefault(k, {})
        d[leaf] = v
    return out


def child_check(args) -> dict:
    """The JAX initial state of the case (saved to ``--weights`` for the torch timing child, which imports no
    JAX), then the gradients of each and of a float64 torch copy, and one step of each from those weights on the
    same batch: loss, gradient errors and parameter differences."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave a GPU's memory to torch too
    import jax
    import jax.numpy as jnp
    import torch
    from benchmarks import torch_two_tower as tt
    from tall_jax.two_tower import steps
    torch.set_num_threads(cores())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    preset, title_dim, model = parse_case(args.case)
    config = make_model(model, preset, args.groups, {})
    m = config.model
    state = steps.init(jax.random.PRNGKey(0), config, args.user_dim, title_dim)
    np.savez(args.weights, **{f"params/{k}": v for k, v in flat_numpy(state.params).items()},
             **{f"batch_stats/{k}": v for k, v in flat_numpy(state.batch_stats).items()})
    before, stats0 = flat_numpy(state.params), flat_numpy(state.batch_stats)
    tmodel = tt.TorchTwoTower(args.user_dim, title_dim, m.n_groups, m.width, m.n_layers, m.momentum)
    tt.load_from_flax(tmodel, state.params, state.batch_stats).to(device)
    batch = make_numpy_batch(presets()[preset]["batch_size"], args.user_dim, title_dim, args.groups)
    grad_fn = jax.jit(lambda p, s, b: jax.value_and_grad(steps.two_tower_loss, has_aux=True)(p, s, b, model=m))
    (_, _), grads = grad_fn(state.params, state.batch_stats, batch)  # compiled, as in the train step
    gj = flat_numpy(grads)
    tb = [torch.from_numpy(np.asarray(a)).to(device) for a in
          (batch.user_x, batch.item_x, batch.label, batch.group, batch.valid)]
    t64 = copy.deepcopy(tmodel).double().train()  # the float64 reference both float32 gradients are measured against
    tt.masked_bce(t64(tb[0].double(), tb[1].double()), tb[2].double(), tb[3], tb[4]).backward()
    g64 = flat_numpy(tt.params_as_flax(t64, grad=True)[0])
    del t64
    new_state, metrics = steps.two_tower_train_step(state, batch, config)  # donates state
    trainer = tt.TorchTwoTowerTrainer(tmodel, lr=config.learning_rate)
    loss_t = float(trainer.step(*tb))
    loss_j = float(metrics["loss"])
    gt = flat_numpy(tt.params_as_flax(tmodel, grad=True)[0])
    pj, pt = flat_numpy(new_state.params), flat_numpy(tt.params_as_flax(tmodel)[0])
    # Dense biases in front of a BatchNorm have a true gradient of 0 (both sides compute round-off), so Adam's
    # first step moves them by up to lr in an arbitrary direction: left out of the comparison. Elsewhere the
    # gradients are float32 sums over the batch, with BatchNorm's backward subtracting batch means: at B = 8192
    # either side may be 1e-2 off (relative to the tensor's largest entry) in some tensor, so each side is
    # measured against the float64 gradient of the same weights and batch; and a gradient entry near 0, whose
    # sign is round-off, moves by anything in [-lr, lr] in Adam's first step: the parameters are summarised.
    pre_bn = [k for k in pj if "/dense_" in k and k.endswith("/bias")]
    rest = [k for k in pj if k not in pre_bn]

    def rel(a, b):
        return {k: float(np.abs(a[k] - b[k]).max() / max(np.abs(g64[k]).max(), 1e-30)) for k in rest}

    # the same maths: JAX's own float64 gradient against torch's float64 one (round-off 1e-16, not 1e-7)
    jax.config.update("jax_enable_x64", True)
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nested(tree))  # noqa: E731
    batch64 = batch.replace(user_x=batch.user_x.astype(np.float64), item_x=batch.item_x.astype(np.float64))
    gx = flat_numpy(jax.jit(jax.grad(lambda p: steps.two_tower_loss(p, f64(stats0), batch64, model=m)[0]))(
        f64(before)))
    jax.config.update("jax_enable_x64", False)
    err_j, err_t, jt, x64 = rel(gj, g64), rel(gt, g64), rel(gj, gt), rel(gx, g64)
    diff = {k: float(np.abs(pj[k] - pt[k]).max()) for k in rest}
    within = float(np.mean(np.concatenate([np.abs(pj[k] - pt[k]).ravel() <= 1e-6 for k in rest])))
    worst_j, worst_t = max(err_j.values()), max(err_t.values())
    ok = (abs(loss_t - loss_j) <= 1e-5 * max(1.0, abs(loss_j)) and max(x64.values()) <= 1e-10
          and max(worst_j, worst_t) <= 5e-2 and within >= 0.99)
    return dict(loss_jax=loss_j, loss_torch=loss_t, loss_abs_diff=abs(loss_t - loss_j),
                max_rel_grad_err_jax_vs_f64=worst_j, worst_grad_jax=max(err_j, key=err_j.get),
                max_rel_grad_err_torch_vs_f64=worst_t, worst_grad_torch=max(err_t, key=err_t.get),
                max_rel_grad_diff=max(jt.values()), max_rel_grad_diff_float64=max(x64.values()),
                max_abs_param_diff=max(diff.values()), worst_param=max(diff, key=diff.get),
                params_within_1e_6=within,
                min_param_move=min(float(np.abs(pj[k] - before[k]).max()) for k in rest), agrees=bool(ok),
                device=device,
                criteria="loss rel 1e-5; JAX's float64 gradient = torch's float64 gradient to 1e-10 (relative to "
                         "each tensor's largest entry); each float32 gradient within 5e-2 of float64 (sums over the "
                         "batch with cancellation: either side reaches 1e-2 in some tensor at B = 8192); after one "
                         "Adam step >= 99% of the parameters within 1e-6 (Dense biases before a BatchNorm, true "
                         "gradient 0, left out)")


def child_torch(args) -> dict:
    """Times the PyTorch step from the JAX initial weights the check child saved; imports no JAX, whose CPU
    thread pool would share the cores with torch's."""
    import torch
    from benchmarks import torch_two_tower as tt
    torch.set_num_threads(cores())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32, like our default
    torch.backends.cudnn.allow_tf32 = False
    preset, title_dim, model = parse_case(args.case)
    width, B = presets()[preset]["width"], presets()[preset]["batch_size"]
    with np.load(args.weights) as f:
        weights = nested(dict(f))
    tmodel = tt.TorchTwoTower(args.user_dim, title_dim, 0 if model == "baseline" else args.groups, width)
    tt.load_from_flax(tmodel, weights["params"], weights["batch_stats"]).to(device)
    adam = {} if args.torch_adam == "default" else {args.torch_adam: True}
    trainer = tt.TorchTwoTowerTrainer(tmodel, lr=1e-3, **adam)
    batch = make_numpy_batch(B, args.user_dim, title_dim, args.groups)
    tb = [torch.from_numpy(np.asarray(a)).to(device) for a in (batch.user_x, batch.item_x, batch.label, batch.group,
                                                               batch.valid)]
    sync = (lambda x: (torch.cuda.synchronize(), x)) if device == "cuda" else (lambda x: x)
    t0 = time.perf_counter()
    out = dict(first_loss=float(trainer.step(*tb)))
    out["first_step_s"] = out["compile_s"] = time.perf_counter() - t0
    out["compile_note"] = "first step (no compilation)"
    out.update(time_steps(lambda: trainer.step(*tb), sync, args.repeat_seconds, args.repeats))
    out.update(torch_threads=torch.get_num_threads(), torch_device=device, torch_adam=args.torch_adam,
               omp_num_threads=os.environ.get("OMP_NUM_THREADS", ""),
               omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    try:  # no JAX backend (and its thread pool) in this process
        from jax._src import xla_bridge
        out["jax_backend_started"] = bool(xla_bridge._backends)
    except Exception:  # noqa: BLE001 - a private attribute; only a record
        pass
    if device == "cuda":
        out["device_peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def run_child(args) -> None:
    fn = {"jax": child_jax, "torch": child_torch, "check": child_check}.get(args.impl, child_matmul)
    out = fn(args)
    out["peak_rss_mb"] = peak_rss_mb()
    if args.impl == "jax":
        import jax
        try:
            out["device_peak_bytes"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
        except Exception:  # noqa: BLE001 - CPU devices have no memory stats
            pass
    out["cores"] = cores()
    out["loadavg_end"] = os.getloadavg()
    print("RESULT" + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- parent
def spawn(argv: list[str], timeout: float) -> dict:
    """This script's child with ``argv`` in its own process (bench_train_step.spawn)."""
    return spawn_child(argv, timeout, script=__file__)


def parse_variants(items: list[str]) -> dict[str, dict]:
    out = {}
    for item in items:
        name, _, options = item.partition("=")
        out[name] = json.loads(options or "{}")
    return out


def speedups(runs: list[dict]) -> list[dict]:
    """Per case and JAX variant: examples/s against the PyTorch row of the case."""
    torch_rows = {r["case"]: r for r in runs if r["impl"] == "torch" and "wall" in r}
    out = []
    for r in runs:
        if r["impl"] != "jax" or "wall" not in r or r["case"] not in torch_rows:
            continue
        t = torch_rows[r["case"]]
        x = r["examples_per_s"] / t["examples_per_s"]
        out.append(dict(case=r["case"], variant=r["variant"], jax_examples_per_s=r["examples_per_s"],
                        torch_examples_per_s=t["examples_per_s"], x_vs_torch=x,
                        cpu_x_vs_torch=t["cpu"]["median"] / r["cpu"]["median"],
                        same_model_as_torch=not set(r["options"]) & set(MODEL_FIELDS + CONFIG_FIELDS),
                        target=TARGET_X_VS_TORCH, meets_target=bool(x >= TARGET_X_VS_TORCH)))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    user_dim, item_dim, groups = synthetic_widths()
    p.add_argument("--presets", nargs="+", default=None, choices=list(presets()),
                   help="tall_jax.two_tower.cli.PRESETS to run (default: all; --quick: cpu)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--title-dims", nargs="+", type=int, default=None,
                   help=f"title feature widths (default: {item_dim} (synthetic) and {PAPER_TITLE_DIM} (paper); "
                        f"--quick: {item_dim})")
    p.add_argument("--user-dim", type=int, default=user_dim, help="user feature width (synthetic data's)")
    p.add_argument("--groups", type=int, default=groups, help="task heads of the mtl model (synthetic data's G)")
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--variants", nargs="+", default=["default={}"],
                   help=f"NAME=JSON options of the JAX side ({', '.join(MODEL_FIELDS + CONFIG_FIELDS)}); "
                        "the library's defaults are {}")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per row (default 10; --quick 3)")
    p.add_argument("--repeat-seconds", type=float, default=None,
                   help="a repeat runs enough steps to last about this long (default 1.0; --quick 0.2)")
    p.add_argument("--torch-adam", default="default", choices=("default", "foreach", "fused"),
                   help="torch.optim.Adam's implementation on the PyTorch side (default: torch's own choice, a "
                        "per-tensor loop on a CPU)")
    p.add_argument("--quick", action="store_true",
                   help="the cpu preset, synthetic widths, 3 short repeats, a smaller reference GEMM")
    p.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    p.add_argument("--name", default=None, help="results file name (default cpu_two_tower.json, "
                                                "cpu_two_tower_quick.json with --quick)")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"), help="results folder")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.presets = args.presets or (["cpu"] if args.quick else list(presets()))
    args.title_dims = args.title_dims or ([item_dim] if args.quick else [item_dim, PAPER_TITLE_DIM])
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.repeat_seconds = args.repeat_seconds or (0.2 if args.quick else 1.0)
    if args.child:
        return run_child(args)
    if min(args.title_dims + [args.user_dim, args.groups, args.repeats]) < 1 or args.repeat_seconds <= 0:
        p.error("--title-dims, --user-dim, --groups, --repeats and --repeat-seconds must be positive")
    variants = parse_variants(args.variants)
    for name, options in variants.items():
        bad = set(options) - set(MODEL_FIELDS + CONFIG_FIELDS)
        if bad:
            p.error(f"--variants {name}: unknown options {sorted(bad)} "
                    f"(known: {', '.join(MODEL_FIELDS + CONFIG_FIELDS)})")
    common = ["--user-dim", str(args.user_dim), "--groups", str(args.groups), "--repeats", str(args.repeats),
              "--torch-adam", args.torch_adam,
              "--repeat-seconds", str(args.repeat_seconds), "--presets", *args.presets]
    if args.quick:
        common.append("--quick")
    result = dict(versions=versions(), loadavg_start=os.getloadavg(), started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                  quick=args.quick, cores=cores(), cpu_model=cpu_model(), torch_adam=args.torch_adam,
                  user_dim=args.user_dim, groups=args.groups,
                  presets={k: presets()[k] for k in args.presets}, variants=variants,
                  jax_disable_most_optimizations=os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS", ""),
                  jax_default_matmul_precision=jax_matmul_precision(),
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
                  target_x_vs_torch=TARGET_X_VS_TORCH, runs=[])
    load = os.getloadavg()[0]
    result["busy_at_start"] = bool(load > 0.5 * cores())
    if result["busy_at_start"]:
        print(f"warning: 1-min load average {load:.1f} on {cores()} cores: a busy machine inflates the times, "
              f"PyTorch's most: its OpenMP threads spin-wait on each other (OMP_WAIT_POLICY=PASSIVE avoids that)",
              flush=True)
    mm = spawn(["--impl", "matmul_jax", *common], args.timeout)
    if "torch" in args.impls:
        mm_torch = spawn(["--impl", "matmul_torch", *common], args.timeout)
        mm.update({k if k in ("shapes",) or "gflops" in k else f"torch_{k}": v for k, v in mm_torch.items()})
    result["matmul"] = mm
    rate = mm.get("reference_jax_gflops", float("nan"))
    shape = "x".join(map(str, mm.get("shapes", {}).get("reference", [])))
    print(f"f32 GEMM {shape}: JAX {rate:.0f} GFLOP/s, torch {mm.get('reference_torch_gflops', float('nan')):.0f}"
          f" GFLOP/s; " + ", ".join(f"{k[:-10]} JAX {mm.get(k, float('nan')):.0f} / torch "
                                    f"{mm.get(k.replace('_jax_', '_torch_'), float('nan')):.0f}"
                                    for k in mm if k.endswith("BxDxD_jax_gflops")), flush=True)
    print(f"{'case':18} {'impl':5} {'variant':9} {'first s':>8} {'step ms':>9} {'IQR ms':>13} {'cpu ms':>8} "
          f"{'examples/s':>11} {'GFLOP/s':>8} {'x floor':>7} {'peak MB':>8}", flush=True)
    tmp = tempfile.mkdtemp(prefix="two_tower_speed_")
    for preset in args.presets:
        B, D = presets()[preset]["batch_size"], presets()[preset]["width"]
        for title_dim in args.title_dims:
            for model in args.models:
                case = f"{preset}:{title_dim}:{model}"
                for impl in args.impls:
                    for var, options in (variants.items() if impl == "jax" else [("-", {})]):
                        G = 0 if model == "baseline" else args.groups
                        fl = step_flops(B, args.user_dim, title_dim, D, G, options.get("n_layers", 2),
                                        options.get("head_rank", 0))
                        argv = ["--case", case, "--options", json.dumps(options), *common]
                        check = None
                        if impl == "torch":  # the check saves the JAX initial weights the torch child starts from
                            weights = str(Path(tmp) / f"{case.replace(':', '_')}.npz")
                            argv += ["--weights", weights]
                            check = spawn(["--impl", "check", *argv], args.timeout)
                            r = spawn(["--impl", impl, *argv], args.timeout) if "error" not in check else {
                                "error": f"check: {check['error']}"}
                            r["check"] = check
                        else:
                            r = spawn(["--impl", impl, *argv], args.timeout)
                        r.update(case=case, preset=preset, title_dim=title_dim, user_dim=args.user_dim, model=model,
                                 n_heads=max(G, 1), impl=impl, variant=var, options=options, batch=B, width=D,
                                 flops=fl)
                        if "wall" in r:
                            med = r["wall"]["median"]
                            r["examples_per_s"] = B / med
                            r["gflops"] = fl["train"] / med / 1e9
                            r["x_floor"] = med / (fl["train"] / (rate * 1e9))
                        result["runs"].append(r)
                        tag = f"{case:18} {impl:5} {var:9}"
                        if "wall" not in r:
                            print(f"{tag} ERROR {r.get('error', '')[-300:]}", flush=True)
                            continue
                        w = r["wall"]
                        print(f"{tag} {r['first_step_s' if impl == 'torch' else 'compile_s']:8.2f} "
                              f"{w['median'] * 1e3:9.2f} {w['q25'] * 1e3:6.1f}-{w['q75'] * 1e3:6.1f} "
                              f"{r['cpu']['median'] * 1e3:8.2f} {r['examples_per_s']:11.0f} {r['gflops']:8.1f} "
                              f"{r['x_floor']:7.2f} {r['peak_rss_mb']:8.0f}", flush=True)
                        if check is not None:
                            c = check
                            print(f"{'':18} check: loss {c['loss_jax']:.6f} (JAX) / {c['loss_torch']:.6f} (torch), "
                                  f"gradient error vs float64 {c['max_rel_grad_err_jax_vs_f64']:.1e} (JAX) / "
                                  f"{c['max_rel_grad_err_torch_vs_f64']:.1e} (torch), float64 JAX vs torch "
                                  f"{c['max_rel_grad_diff_float64']:.0e}, max |param diff| "
                                  f"{c['max_abs_param_diff']:.1e} after one step ({c['params_within_1e_6']:.4%} "
                                  f"within 1e-6)"
                                  f"{'' if c['agrees'] else '  DISAGREE'}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    result["speedups"] = speedups(result["runs"])
    for row in result["speedups"]:
        print(f"{row['case']:18} {row['variant']:9} JAX / torch examples/s {row['x_vs_torch']:.2f}x "
              f"(cpu time {row['cpu_x_vs_torch']:.2f}x; target {TARGET_X_VS_TORCH:g}x: "
              f"{'met' if row['meets_target'] else 'missed'})", flush=True)
    result["loadavg_end"] = os.getloadavg()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or ("cpu_two_tower_quick.json" if args.quick else "cpu_two_tower.json")
    path = out_dir / (name if name.endswith(".json") else f"{name}.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    failed = [f"{r['case']} {r['impl']} {r['variant']}" for r in result["runs"] if "wall" not in r]
    disagree = [r["case"] for r in result["runs"]
                if r["impl"] == "torch" and not r.get("check", {}).get("agrees", True)]
    if failed or disagree:  # after writing: the rows that ran are kept
        sys.exit(f"error: failed: {', '.join(failed) or '-'}; JAX and torch disagree: {', '.join(disagree) or '-'}")


if __name__ == "__main__":
    main()
