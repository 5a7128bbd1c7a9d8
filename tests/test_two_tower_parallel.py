"""Data-parallel two-tower training (tall_jax.two_tower.parallel, ``--mesh data=N``): over 4 forced
host devices the train steps, the epoch loop, the scorer and a whole incremental run equal one device.

Tolerances (float32): the mesh sums each gradient, loss and BatchNorm moment as 4 partial sums and an
all-reduce, a different order than one device's sum, so values agree to a few float32 ulps per step
(losses rtol 1e-6, parameters and Adam moments atol 1e-6 after 12 steps; measured 1e-7 to 2.5e-7). One
exception, a property of the model, not of the mesh: the Dense biases in front of a BatchNorm have an
exactly zero true gradient (BatchNorm subtracts the batch mean), so both runs' gradients there are
rounding noise (about 1e-9), which Adam, dividing by sqrt(v) + 1e-8, turns into steps of a good
fraction of lr. Those biases (and their Adam
moments, and the BatchNorm running means that track them) are compared loosely, and the eval-mode
scores, which read the running means, to atol 1e-3. The scorer itself, on one and the same state, is
exact to 1e-6.

XLA_FLAGS must be set before jax is imported, so the checks run in a fresh interpreter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import dataclasses, json
import jax, jax.numpy as jnp, numpy as np
from tall_jax.two_tower import parallel, steps
from tall_jax.two_tower.experiment import TrainConfig, run_seed
from tall_jax.two_tower.model import TwoTower
from tall_jax.two_tower.synthetic import SyntheticConfig, make_synthetic_two_tower
from tall_jax.two_tower.cli import check_args, data_parallel_of, make_parser
assert jax.device_count() == 4, jax.devices()
p = make_parser("x", default_seeds=[0])
dp = data_parallel_of(check_args(p, p.parse_args(["--dataset", "synthetic", "--mesh", "data=4"])))  # as the commands
assert dp.n_data == 4 and dp.mesh.devices.size == 4
rng = np.random.default_rng(0)
N, U, I, G = 100, 6, 5, 3  # 100 = 3 x 32 + 4: the last batch's 4 real rows all sit on the first device
ux, ix = rng.normal(size=(N, U)).astype(np.float32), rng.normal(size=(N, I)).astype(np.float32)
y, g = (rng.uniform(size=N) < 0.3).astype(np.float32), rng.integers(0, G, N)
gather = lambda idx: (ux[idx], ix[idx], y[idx], g[idx])
cfg = steps.TwoTowerConfig(TwoTower(n_groups=G, width=16))

def pre_bn_bias(path):
    keys = [getattr(k, "key", None) for k in path]
    return "bias" in keys and any(str(k).startswith("dense_") for k in keys) or "mean" in keys

def diffs(a, b):
    tight, loose = 0.0, 0.0
    for (path, x), z in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        d = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(z, np.float64))))
        if pre_bn_bias(path):
            loose = max(loose, d)
        else:
            tight = max(tight, d)
    return tight, loose

out = {}
# the jitted step itself, batch by batch, with the loss of every step
ref = steps.init(jax.random.PRNGKey(0), cfg, U, I)
par = parallel.replicate(dp, steps.init(jax.random.PRNGKey(0), cfg, U, I))
step = parallel.jit_replicated(steps._train_step, dp, **steps._TRAIN_JIT)
loss_ref, loss_par = [], []
for epoch in range(3):
    for idx in steps.iterate_batches(N, 32, np.random.default_rng(epoch)):
        ref, m = steps.two_tower_train_step(ref, steps.make_batch(*gather(idx), 32), cfg)
        batch = steps.place_batch(gather, idx, 32, dp)
        par, mp = step(par, batch, cfg)
        loss_ref.append(float(m["loss"])); loss_par.append(float(mp["loss"]))
out["steps"] = dict(loss_ref=loss_ref, loss_par=loss_par, diff=diffs(ref, par),
                    shardings=sorted({str(tuple(l.sharding.spec)) for l in jax.tree.leaves(par)}),
                    batch_spec=list(batch.user_x.sharding.spec), batch_devices=len(batch.user_x.sharding.device_set),
                    moved=float(jnp.max(jnp.abs(ref.params["head_kernel"]
                                                - steps.init(jax.random.PRNGKey(0), cfg, U, I).params["head_kernel"]))))
# data parallel, not a gathered batch: the compiled step all-reduces (BatchNorm moments, gradients)
# and gathers nothing
hlo = step.lower(par, batch, cfg).compile().as_text()
out["collectives"] = {op: sum(f" {op}(" in ln or f" {op}-start(" in ln for ln in hlo.splitlines())
                      for op in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")}
out["head_kernel_reduced"] = any(" all-reduce" in ln and "f32[3,16,16]" in ln for ln in hlo.splitlines())
# the scorer on one and the same state (batch 30 -> 32 on the mesh)
one = steps.predict_two_tower(cfg.model, ref, gather, N, batch_size=30)
four = steps.predict_two_tower(cfg.model, ref, gather, N, batch_size=30, dp=dp)
out["predict_same_state"] = float(np.max(np.abs(one - four)))
# the epoch loop and the scorer end to end
res = {}
for name, d in (("one", None), ("mesh", dp)):
    s, losses = steps.train_two_tower(cfg, steps.init(jax.random.PRNGKey(1), cfg, U, I), gather, N, epochs=3,
                                      batch_size=32, seed=0, progress=False, dp=d)
    res[name] = (s, losses, steps.predict_two_tower(cfg.model, s, gather, N, batch_size=24, dp=d))
out["loop"] = dict(loss_ref=res["one"][1], loss_par=res["mesh"][1], diff=diffs(res["one"][0], res["mesh"][0]),
                   predict=float(np.max(np.abs(res["one"][2] - res["mesh"][2]))))
# a whole incremental run (first fit, then one update per test day; early stopping on validation AP)
tiny = make_synthetic_two_tower(dataclasses.replace(SyntheticConfig(), n_users=3000, user_dim=8, item_dim=8,
                                                    n_global_titles=10, n_local_per_territory=2), 0)
tc = TrainConfig(width=8, batch_size=512, eval_batch_size=2048, epochs=2, inc_epochs=1, patience=1)
runs = {name: run_seed(tiny, tc, 0, models=("mtl",), progress=False, dp=d) for name, d in (("one", None), ("mesh", dp))}
# control: one device again, each training batch's rows reversed (the same sums in another order)
batches = steps.iterate_batches
steps.iterate_batches = lambda n, b, r: (i if r is None else i[::-1] for i in batches(n, b, r))
runs["reversed"] = run_seed(tiny, tc, 0, models=("mtl",), progress=False)
steps.iterate_batches = batches
out["run_seed"] = {name: dict(losses=r["losses"]["mtl"], ap_all=r["ap_all"]["mtl"].tolist(),
                              ap_territory=np.nan_to_num(r["ap_territory"]["mtl"], nan=-1).tolist(),
                              best_epochs=r["best_epochs"]["mtl"]) for name, r in runs.items()}
print("RESULT" + json.dumps(out))
"""


def _run_on_four_host_devices(script: str) -> dict:
    """Run ``script`` in a fresh interpreter with 4 forced CPU devices; return its RESULT json."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def four():
    return _run_on_four_host_devices(SCRIPT)


def test_steps_on_four_devices_equal_one_device(four):
    r = four["steps"]
    assert r["batch_spec"] == ["data"] and r["batch_devices"] == 4
    assert r["shardings"] == ["()"]  # state and metrics replicated
    assert r["moved"] > 1e-3  # the steps did train
    np.testing.assert_allclose(r["loss_par"], r["loss_ref"], rtol=1e-6)
    tight, loose = r["diff"]
    assert tight < 1e-6, r["diff"]
    assert loose < 12 * 1e-3 + 1e-6, r["diff"]  # 12 Adam steps of at most lr each (see the module docstring)


def test_the_step_is_data_parallel(four):
    """The batch stays split: the step sums over devices (all-reduce of the BatchNorm moments and the
    gradients, the head kernel's among them) and never gathers the batch."""
    c = four["collectives"]
    assert c["all-reduce"] >= 2 and c["all-gather"] == c["all-to-all"] == 0, c
    assert four["head_kernel_reduced"]


def test_scorer_on_four_devices_equals_one_device(four):
    assert four["predict_same_state"] < 1e-6


def test_epoch_loop_on_four_devices_equals_one_device(four):
    r = four["loop"]
    np.testing.assert_allclose(r["loss_par"], r["loss_ref"], rtol=1e-6)
    assert r["diff"][0] < 1e-6, r["diff"]
    assert r["predict"] < 1e-3, r


def test_incremental_run_on_four_devices_equals_one_device(four):
    """Losses and early-stopping decisions agree; AP agrees to the noise that one device shows as well
    when each batch's rows are merely reversed (scores move ~1e-4, see the module docstring, and swap
    a few ranks among the few positives of a small territory)."""
    one, mesh, control = (four["run_seed"][k] for k in ("one", "mesh", "reversed"))
    np.testing.assert_allclose(mesh["losses"], one["losses"], rtol=1e-6)
    assert mesh["best_epochs"] == one["best_epochs"]
    np.testing.assert_allclose(mesh["ap_all"], one["ap_all"], atol=1e-3)
    noise = float(np.max(np.abs(np.subtract(control["ap_territory"], one["ap_territory"]))))
    np.testing.assert_allclose(mesh["ap_territory"], one["ap_territory"], atol=max(2e-2, noise))


@pytest.mark.parametrize("argv, message", [
    (["--mesh", "data=3"], "--batch-size 1024 must be divisible by the 3 devices"),
    (["--mesh", "expert=2"], "--mesh 'expert=2': expected data=N"),
    (["--mesh", "data=0"], "expected data=N with positive integers"),
])
def test_mesh_flag_errors_are_one_line(argv, message, capsys):
    from tall_jax.two_tower.cli import check_args, make_parser
    p = make_parser("x", default_seeds=[0])
    with pytest.raises(SystemExit) as e:
        check_args(p, p.parse_args(["--dataset", "synthetic", *argv]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("x: error:") or "error:" in err
    assert message in err


def test_mesh_flag_parses():
    from tall_jax.two_tower.cli import check_args, make_parser
    p = make_parser("x", default_seeds=[0])
    args = check_args(p, p.parse_args(["--dataset", "synthetic", "--mesh", "data=4"]))
    assert args.n_data == 4 and args.batch_size == 1024
    assert check_args(p, p.parse_args(["--dataset", "synthetic"])).n_data is None


def test_a_mesh_larger_than_the_machine_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    import jax

    from tall_jax.two_tower.cli import run_main
    spec = importlib.util.spec_from_file_location("examples_train_two_tower_mesh", REPO / "examples" / "train_two_tower.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    monkeypatch.chdir(tmp_path)
    n = jax.device_count() * 2
    with pytest.raises(SystemExit) as e:
        run_main(lambda: ex.main(["--dataset", "synthetic", "--mesh", f"data={n}", "--batch-size", str(64 * n),
                                  "--out", str(tmp_path / "out")]), "train_two_tower.py")
    assert e.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [f"error: --mesh data={n}: only {jax.device_count()} device{'s' * (jax.device_count() > 1)} "
                     "available"]
    assert not (tmp_path / "out").exists()


def test_distributed_needs_its_environment():
    from tall_jax.two_tower.parallel import start_distributed
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        start_distributed({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="0 <= JAX_PROCESS_ID"):
        start_distributed({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})


WORKER = r"""
import dataclasses, json, os, sys
from tall_jax.two_tower import parallel
if os.environ.get("JAX_NUM_PROCESSES"):
    parallel.start_distributed()
import jax, numpy as np
from tall_jax.two_tower import steps
from tall_jax.two_tower.experiment import TrainConfig, run_seed
from tall_jax.two_tower.model import TwoTower
from tall_jax.two_tower.synthetic import SyntheticConfig, make_synthetic_two_tower
dp = parallel.make_data_parallel() if jax.process_count() > 1 else None
rng = np.random.default_rng(0)
N, U, I, G = 70, 6, 5, 3  # 70 = 4 x 16 + 6: the last batch's real rows all belong to process 0
ux, ix = rng.normal(size=(N, U)).astype(np.float32), rng.normal(size=(N, I)).astype(np.float32)
y, g = (rng.uniform(size=N) < 0.3).astype(np.float32), rng.integers(0, G, N)
seen = []
def gather(idx):
    seen.append(len(idx))
    return ux[idx], ix[idx], y[idx], g[idx]
cfg = steps.TwoTowerConfig(TwoTower(n_groups=G, width=16))
s, losses = steps.train_two_tower(cfg, steps.init(jax.random.PRNGKey(0), cfg, U, I), gather, N, epochs=2,
                                  batch_size=16, seed=0, progress=False, dp=dp)
scores = steps.predict_two_tower(cfg.model, s, gather, N, batch_size=16, dp=dp)
tiny = make_synthetic_two_tower(dataclasses.replace(SyntheticConfig(), n_users=2000, user_dim=8, item_dim=8,
                                                    n_global_titles=10, n_local_per_territory=2), 0)
tc = TrainConfig(width=8, batch_size=512, eval_batch_size=2048, epochs=1, inc_epochs=1, patience=1)
run = run_seed(tiny, tc, 0, models=("mtl",), progress=False, dp=dp)
leaves = {jax.tree_util.keystr(p): np.asarray(jax.device_get(x) if x.is_fully_addressable else x.addressable_data(0)).tolist()
          for p, x in jax.tree_util.tree_leaves_with_path(s.params)}
print("RESULT" + json.dumps(dict(process=jax.process_index(), count=jax.process_count(), losses=losses,
                                 params=leaves, scores=scores.tolist(), max_rows_gathered=max(seen),
                                 run_losses=run["losses"]["mtl"], ap_all=run["ap_all"]["mtl"].tolist(),
                                 best_epochs=run["best_epochs"]["mtl"])))
"""


def _gloo() -> bool:
    """Whether this jaxlib can run CPU collectives over gloo (what several CPU processes need)."""
    try:
        from jax._src.lib import _jax  # why: private; only asks whether the build has gloo
    except ImportError:
        return True  # another layout of jaxlib: let the test say
    return hasattr(_jax, "make_gloo_tcp_collectives")


needs_gloo = pytest.mark.skipif(not _gloo(), reason="this jaxlib has no gloo CPU collectives")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(stdout: str) -> dict:
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@needs_gloo
def test_two_processes_equal_one_process():
    """2 processes on localhost (CPU, 1 device each, gloo collectives): each gathers only its half of
    every global batch; the trained parameters, losses, scores and an incremental run equal one process."""
    base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base.pop("XLA_FLAGS", None)
    single = subprocess.run([sys.executable, "-c", WORKER], env=base, cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(base, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                  JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr[-3000:]
            outs.append(_result(stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    ref = _result(single.stdout)
    assert ref["count"] == 1 and [o["process"] for o in outs] == [0, 1] and outs[0]["count"] == 2
    assert ref["max_rows_gathered"] == 16 and all(o["max_rows_gathered"] == 8 for o in outs)
    for o in outs:
        np.testing.assert_allclose(o["losses"], ref["losses"], rtol=1e-6)
        for k, v in ref["params"].items():
            # the Dense biases in front of a BatchNorm: Adam-scaled rounding noise (module docstring)
            tol = 8 * 1e-3 if "dense_" in k and "bias" in k else 1e-6
            np.testing.assert_allclose(o["params"][k], v, atol=tol, err_msg=k)
        np.testing.assert_allclose(o["scores"], ref["scores"], atol=1e-3)
        np.testing.assert_allclose(o["run_losses"], ref["run_losses"], rtol=1e-6)
        assert o["best_epochs"] == ref["best_epochs"]
        # AP of a few hundred test pairs: scores ~1e-4 apart swap a few ranks (as a mere row reversal
        # does on one device, test_incremental_run_on_four_devices_equals_one_device)
        np.testing.assert_allclose(o["ap_all"], ref["ap_all"], atol=5e-2)
    assert outs[0]["params"] == outs[1]["params"] and outs[0]["scores"] == outs[1]["scores"]


@needs_gloo
def test_distributed_command_writes_from_process_zero_only(tmp_path):
    """``examples/train_two_tower.py --distributed`` under 2 processes: both train, only process 0
    writes (each is given its own --out here, so a write by process 1 would show)."""
    base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
    base.pop("XLA_FLAGS", None)
    argv = [sys.executable, "examples/train_two_tower.py", "--dataset", "synthetic", "--seed", "0", "--n-users", "1000",
            "--epochs", "1", "--inc-epochs", "0", "--width", "8", "--batch-size", "512", "--no-progress", "--distributed"]
    procs = [subprocess.Popen(argv + ["--out", str(tmp_path / f"p{i}")], cwd=REPO, env=dict(base, JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert (tmp_path / "p0" / "two_tower_results.json").is_file()
    assert not (tmp_path / "p1").exists()


def test_distributed_command_without_its_environment_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k == "JAX_PLATFORMS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "examples/train_two_tower.py", "--dataset", "synthetic", "--distributed",
                           "--out", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --distributed needs the environment variables")
    assert not (tmp_path / "out").exists()
