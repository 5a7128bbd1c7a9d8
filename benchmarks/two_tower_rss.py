"""Peak memory of training the two-tower baseline on a log of growing size (issue 33 item 2): it
should stay flat in the log's size.

    JAX_PLATFORMS=cpu python benchmarks/two_tower_rss.py --examples 1000000 10000000 \
        --user-input features-in-memory features --work /tmp/two_tower_rss \
        --out benchmarks/results/cpu_two_tower_rss_10m_features.json

For each size: the synthetic log generator (``python -m tall_jax.two_tower.synthetic``; 200
territories, 600 titles, 8 days, 768-d title vectors, 32-d user vectors) writes the log once into
``--work``; a fresh process builds its cache (time, peak); then, per user input, ``--repeats`` fresh
processes each build the seed-0 protocol data, read the training examples once (reading rate: the
first pass and a second one; then from arrays in memory, after the peak was taken), and train
``--steps`` steps of the baseline with the CPU preset (d 128, batch 1024) from the on-disk plain
training examples (cycled through when there are fewer, so every size trains as many steps). Each
records VmHWM (peak resident memory, from /proc/self/status) after each phase, the times, the sizes
and the model's parameter and optimiser-state bytes; the JSON has every repeat and the medians, and
each size's median peak against the smallest size's.

User inputs (``--user-input``, one or several): ``ids``, learned id embeddings (``--data`` without
``--user-features``: the model holds a ``[users, d]`` table, which grows with the log's users);
``features-in-memory``, the generator's user vectors held in memory (``--user-features``, the
default); ``features``, the same left on disk and read by row (``--user-features-on-disk``), so that
only the data pipeline can grow.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def vm_hwm_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # why: not Linux; ru_maxrss is the same peak (kB on Linux, bytes on macOS)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_rss_mb() -> float:
    """Resident memory of this process now (MB; 0 where /proc is missing)."""
    status = Path("/proc/self/status")
    for line in (status.read_text().splitlines() if status.exists() else []):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def build_cache(work: Path) -> dict:
    """Build the log's cache in this (fresh) process: seconds and peak memory."""
    from tall_jax.two_tower.log_cache import build_log_cache

    t = time.perf_counter()
    cache = build_log_cache(work / "log", work / "cache", progress=False)
    return {"cache_s": time.perf_counter() - t, "rows": cache.n_rows, "users": cache.n_users,
            "cache_peak_mb": vm_hwm_mb()}


def measure(work: Path, steps: int, batch: int, width: int, user_input: str) -> dict:
    """One size, in this (fresh) process."""
    import dataclasses

    import jax
    import numpy as np

    from tall_jax.two_tower.data import concat_pairs
    from tall_jax.two_tower.experiment import TrainConfig, _gather, model_spec, step_config_of
    from tall_jax.two_tower.log_cache import build_log_cache
    from tall_jax.two_tower.log_days import (
        LogProtocol, aligned_features, groups_from_map, make_log_two_tower, user_feature_rows,
    )
    from tall_jax.two_tower.logs import read_groups
    from tall_jax.two_tower.shards import block_order
    from tall_jax.two_tower.steps import init, make_batch, train_two_tower

    out = {"rss_start_mb": vm_hwm_mb()}
    cache = build_log_cache(work / "log", work / "cache", progress=False)
    assert not cache.rebuilt, "the cache is built by its own child first"
    out.update(rows=cache.n_rows, users=cache.n_users)
    m = cache.manifest
    group_T, group_names = groups_from_map(read_groups(work / "groups.csv"), m["territories"], "groups.csv")
    item_x = aligned_features(work / "titles.npy", "title", m["titles"])
    t = time.perf_counter()
    # learned user ids put a [users, d] table (and its Adam moments and gradient) in the model, which
    # grows with the log's users; the generator's user vectors leave only the data pipeline to grow
    user_x = (user_feature_rows(work / "users.npy", cache.array("user_ids"))
              if user_input.startswith("features") else None)
    if user_input == "features-in-memory":  # the table read whole: what the on-disk rows replace
        user_x = np.asarray(user_x)
    data = make_log_two_tower(cache, LogProtocol(), 0, group_T=group_T, group_names=group_names, item_x=item_x,
                              user_x=user_x)
    out.update(protocol_s=time.perf_counter() - t, rss_after_protocol_mb=vm_hwm_mb(), rss_now_mb=vm_rss_mb(),
               user_input=user_input)
    train = concat_pairs([d.train_plain for d in data.days[: data.first_test_day]])
    gather = _gather(data, train, None)

    def read_all(g, n):
        t = time.perf_counter()
        for idx in block_order(n, batch, np.random.default_rng(0)):
            make_batch(*g(idx), batch)
        return n / (time.perf_counter() - t)

    out.update(train_examples=len(train), read_examples_per_s=read_all(gather, len(train)),
               read_again_examples_per_s=read_all(gather, len(train)), rss_after_read_mb=vm_hwm_mb())
    cfg = dataclasses.replace(TrainConfig(), width=width, batch_size=batch)
    model, _, _ = model_spec("baseline", data, cfg)
    sc = step_config_of(model, cfg)
    state = init(jax.random.PRNGKey(0), sc, data.user_x.shape[1], data.item_x.shape[1])
    size_mb = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2**20  # noqa: E731
    out.update(params_mb=size_mb(state.params), opt_state_mb=size_mb(state.opt_state))
    n = steps * batch  # the same number of steps at every size: a small log is cycled through
    t = time.perf_counter()
    state, losses = train_two_tower(sc, state, lambda idx: gather(idx % len(train)), n, epochs=1, batch_size=batch,
                                    seed=0, progress=False, order=block_order, prefetch_depth=2)
    out.update(train_steps=steps, train_s=time.perf_counter() - t, loss=losses[0], rss_peak_mb=vm_hwm_mb())
    # the same reading from arrays in memory (after the peak was taken: this loads the training set)
    mem = type(train)(*(np.asarray(c) for c in (train.user, train.item, train.label)))
    gather = _gather(data, mem, None)
    out.update(read_in_memory_examples_per_s=read_all(gather, len(mem)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--user-input", nargs="+", choices=("ids", "features", "features-in-memory"), default=["ids"],
                   help="one or several of: learned user id embeddings (the default of --data without "
                        "--user-features), the generator's 32-d user vectors read from disk by row (then the model "
                        "does not grow with the users), the same held in memory")
    p.add_argument("--work", default="/tmp/two_tower_rss", help="where the logs and caches go (GBs at 10M)")
    p.add_argument("--out", default="benchmarks/results/cpu_two_tower_rss.json")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per size and input (median reported)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: measure this work folder
    p.add_argument("--build-cache", default=None, help=argparse.SUPPRESS)  # a child: build this folder's cache
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(measure(Path(a.one), a.steps, a.batch_size, a.width, a.user_input[0])))
        return 0
    if a.build_cache:
        print(json.dumps(build_cache(Path(a.build_cache))))
        return 0
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs, load_start = [], os.getloadavg()

    def child(*argv: str) -> dict:
        out = subprocess.run([sys.executable, __file__, *argv], check=True, env=env, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    for n in a.examples:
        work = Path(a.work) / f"n{n}"
        t = time.perf_counter()
        if not (work / "users.npy").is_file():  # (a log from before the generator wrote user vectors too)
            subprocess.run([sys.executable, "-m", "tall_jax.two_tower.synthetic", "--out", str(work), "--examples",
                            str(n), "--no-progress"], check=True, env=env)
        gen_s = time.perf_counter() - t
        shutil.rmtree(work / "cache", ignore_errors=True)
        cache = child("--build-cache", str(work))  # its own process: its heap does not inflate the next
        for user_input in a.user_input:
            reps = [child("--one", str(work), "--steps", str(a.steps), "--batch-size", str(a.batch_size),
                          "--width", str(a.width), "--user-input", user_input) for _ in range(a.repeats)]
            rec = {"examples": n, "user_input": user_input, "generate_s": gen_s,
                   "log_bytes": sum(f.stat().st_size for f in (work / "log").iterdir()), **cache,
                   "rss_peak_mb": float(np.median([r["rss_peak_mb"] for r in reps])),
                   "train_s": float(np.median([r["train_s"] for r in reps])), "repeats": reps}
            print(json.dumps({k: v for k, v in rec.items() if k != "repeats"}), file=sys.stderr)
            runs.append(rec)
    base = {u: next(r["rss_peak_mb"] for r in runs if r["user_input"] == u) for u in a.user_input}
    for r in runs:  # the peak against the smallest log's, same input
        r["rss_peak_x_smallest"] = r["rss_peak_mb"] / base[r["user_input"]]
    record = {"benchmark": "two_tower_rss", "machine": platform.node(), "cpus": os.cpu_count(),
              "loadavg_start": load_start, "loadavg": os.getloadavg(), "steps": a.steps, "batch_size": a.batch_size,
              "width": a.width,
              "user_input": a.user_input,
              "runs": runs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
