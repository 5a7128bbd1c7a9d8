"""tall_jax.sharding: the step sharded over 4 (forced host) devices equals the single-device step.

XLA_FLAGS must be set before jax is imported, so the check runs in a fresh interpreter."""
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
import json
import jax, jax.numpy as jnp, numpy as np, scipy.sparse as sp
from tall_jax import batching, sharding, steps, state as state_lib
from tall_jax.configs import make_config
assert jax.device_count() == 4, jax.devices()
N, M, E, B = 16, 24, 8, 8
rng = np.random.default_rng(0)
x = rng.uniform(size=(N, M)) < 0.3; x[:, 0] = True
v = (rng.uniform(size=(N, M)) < 0.2) & ~x
csr = lambda a: sp.csr_matrix(a.astype(np.float32))
data = batching.UserData(train_idx=jnp.asarray(batching.padded_rows(csr(x))),
                         valid_idx=jnp.asarray(batching.padded_rows(csr(v))),
                         test_idx=jnp.asarray(batching.padded_rows(csr(v))), n_users=N, n_items=M)
cfg = make_config("ml-1m", "tall", n_experts=E, latent=4, batch_size=B)
batch = batching.make_batch(data, jnp.arange(B))
out = {}
ref = state_lib.init(jax.random.PRNGKey(0), cfg, N, M)
for _ in range(2):
    ref, m_ref = steps.train_step(ref, batch, cfg)
for name, (ne, nd) in {"expert4": (4, 1), "data2_expert2": (2, 2)}.items():
    mesh = sharding.make_mesh(ne, nd)
    s = sharding.shard_state(state_lib.init(jax.random.PRNGKey(0), cfg, N, M), mesh)
    b = sharding.shard_batch(batch, mesh)
    for _ in range(2):
        s, m = steps.train_step(s, b, cfg)
    enc = s.params["experts"]["enc_w"]
    diffs = [float(jnp.max(jnp.abs(a - c))) for a, c in zip(jax.tree.leaves(s.params),
                                                            jax.tree.leaves(ref.params))]
    out[name] = dict(loss=float(m["loss"]), ref_loss=float(m_ref["loss"]), max_param_diff=max(diffs),
                     moved=float(jnp.max(jnp.abs(enc - state_lib.init(jax.random.PRNGKey(0), cfg, N, M).params["experts"]["enc_w"]))),
                     n_shards=len(enc.sharding.device_set),
                     shard_shape=list(enc.addressable_shards[0].data.shape),
                     loss_N_diff=float(jnp.max(jnp.abs(s.loss_N - ref.loss_N))))
print("RESULT" + json.dumps(out))
"""


def _run_on_four_host_devices(script: str) -> dict:
    """Run ``script`` in a fresh interpreter with 4 forced CPU devices; return its RESULT json."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_sharded_step_matches_single_device():
    out = _run_on_four_host_devices(SCRIPT)
    for name, r in out.items():
        assert r["n_shards"] == 4, (name, r)
        assert r["shard_shape"][0] == (2 if name == "expert4" else 4), (name, r)
        assert r["moved"] > 1e-4, (name, r)  # two Adam steps changed the parameters
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5), (name, r)
        assert r["max_param_diff"] < 1e-5, (name, r)
        assert r["loss_N_diff"] < 1e-3 * max(1.0, abs(r["ref_loss"])), (name, r)


def test_make_mesh_rejects_too_many_shards():
    from tall_jax import sharding
    with pytest.raises(ValueError, match="devices"):
        sharding.make_mesh(n_expert_shards=64, n_data_shards=64)


FIT_SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from helpers import tiny_dataset
from tall_jax import sharding
from tall_jax.configs import make_config
from tall_jax.fit import fit
assert jax.device_count() == 4, jax.devices()
ds = tiny_dataset(n_users=40, n_items=24)
cfg = make_config("synthetic", "tall", n_experts=8, latent=4, batch_size=8, max_epochs=3, gap=1)
single = fit(ds, cfg, progress=False)
sharded = fit(ds, cfg, progress=False, mesh=sharding.make_mesh(*sharding.parse_mesh("expert=4")))
enc = sharded.state.params["experts"]["enc_w"]
print("RESULT" + json.dumps(dict(
    n_shards=len(enc.sharding.device_set),
    loss=[h["loss"] for h in sharded.history], ref_loss=[h["loss"] for h in single.history],
    ndcg=float(np.nanmean(sharded.test.per_user["ndcg@20"])),
    ref_ndcg=float(np.nanmean(single.test.per_user["ndcg@20"])),
    best=sharded.best_epoch, ref_best=single.best_epoch)))
"""


def test_fit_with_an_expert_mesh_matches_single_device():
    out = _run_on_four_host_devices(FIT_SCRIPT)
    assert out["n_shards"] == 4
    np.testing.assert_allclose(out["loss"], out["ref_loss"], rtol=1e-5)
    assert out["ndcg"] == pytest.approx(out["ref_ndcg"], abs=1e-6)
    assert out["best"] == out["ref_best"]


@pytest.mark.parametrize("spec", ["expert", "expert=0", "data=2", "expert=2,model=3", "expert=x"])
def test_parse_mesh_rejects_bad_specs(spec):
    from tall_jax import sharding
    with pytest.raises(ValueError, match="--mesh"):
        sharding.parse_mesh(spec)


def test_parse_mesh_reads_both_axes():
    from tall_jax import sharding
    assert sharding.parse_mesh("expert=4") == (4, 1)
    assert sharding.parse_mesh("expert=2,data=2") == (2, 2)
