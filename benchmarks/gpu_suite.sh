#!/usr/bin/env bash
# The GPU benchmark suite in one call of at most ~8 minutes (one device session): E = 100 steps and whole
# epochs (with evaluation) for the ML-1M authors' split and Yelp / CDs shapes, in float32, tf32 and
# bfloat16, beside the PyTorch per-expert loop on the same GPU. JSON goes to $OUT (default
# benchmarks/results). `--dry-run` runs the same harness on tiny shapes on the CPU (CI runs it).
#
#   bash benchmarks/gpu_suite.sh              # on the GPU machine; ML-1M from $TALL_JAX_DATA
#   bash benchmarks/gpu_suite.sh --study      # second call: seeds as one program, and LMoE + TALL at
#                                             # E = 100 with 5 seeds each on ML-1M (--together)
#   bash benchmarks/gpu_suite.sh --closed     # another call: the closed forms (EASE at the ML-1M and
#                                             # CDs item counts, weighted EASE, LOCA-EASE) with the
#                                             # batched device solver, ~3 minutes
#   bash benchmarks/gpu_suite.sh --two-tower  # another call: the two-tower train step at the paper preset
#                                             # (width 512, batch 8192), baseline and MTL, beside PyTorch
#                                             # (benchmarks/two_tower_speed.py), ~5 minutes
#   bash benchmarks/gpu_suite.sh --dry-run    # anywhere, about two minutes
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
variants=('f32={}' 'tf32={"matmul_precision": "tensorfloat32"}' 'bf16={"matmul_precision": "bfloat16"}'
          'reference={"forward_impl": "reference"}')
bench=(python benchmarks/bench_train_step.py --out-dir "$out" --baseline-variant reference)
if [[ "${1:-}" == "--dry-run" ]]; then
  export JAX_PLATFORMS=cpu
  # the same harness, modes and variant syntax; tf32 is float32 on a CPU and bf16 and the reference
  # path are covered by the tests, so one variant keeps the check short
  "${bench[@]}" --dataset tiny --experts 2 --modes vmapped fit_epoch seeds_vmapped torch --repeats 1 \
      --runs 2 --variants "${variants[0]}" --baseline-variant f32 --matmul-shape 256 512 1024 \
      --name gpu_suite_dry_run.json --timeout 300
  python benchmarks/bench_closed.py --quick --solver jax --out-dir "$out" --name gpu_suite_closed_dry_run.json \
      --timeout 300
  impls=(jax)  # the PyTorch rows only where torch is installed (the tests' machines may lack it)
  if python -c "import torch" 2>/dev/null; then impls=(jax torch); fi
  python benchmarks/two_tower_speed.py --quick --impls "${impls[@]}" --repeats 2 --out-dir "$out" \
      --name gpu_suite_two_tower_dry_run.json --timeout 300
  exit 0
fi
python -c "import jax; d = jax.devices()[0]; print(d, d.device_kind); assert d.platform == 'gpu', d"
if [[ "${1:-}" == "--closed" ]]; then  # host Grams and scores, device solves (docs/closed_forms.md)
  python benchmarks/bench_closed.py --solver jax --repeats 1 --out-dir "$out" --name gpu_closed.json \
      --cases ease:ml-1m ease:cds ease_weighted:cds loca_ease:ml-1m --timeout 240
  exit 0
fi
if [[ "${1:-}" == "--two-tower" ]]; then  # training examples/s of the two-tower step against PyTorch on the GPU
  # float32 against float32: torch's matmuls are full float32 (allow_tf32 off), so JAX's are made so too
  JAX_DEFAULT_MATMUL_PRECISION=highest python benchmarks/two_tower_speed.py --presets paper --repeats 5 \
      --out-dir "$out" --name gpu_two_tower.json --timeout 240
  # JAX's own default for float32 matmuls on the GPU (TF32 on Hopper), the JAX rows only
  python benchmarks/two_tower_speed.py --presets paper --impls jax --repeats 5 --out-dir "$out" \
      --name gpu_two_tower_default_precision.json --timeout 240
  exit 0
fi
if [[ "${1:-}" == "--study" ]]; then  # a second device call of at most ~8 minutes
  # several seeds as one program (tall_jax.fit_seeds) against the same seeds one by one, E = 10 and 100
  "${bench[@]}" --dataset ml-1m --experts 10 100 --modes seeds_serial seeds_vmapped --runs 5 \
      --variants "${variants[0]}" --baseline-variant f32 --name gpu_ml1m_seeds.json --timeout 240
  # the paper's setting on ML-1M: LMoE and TALL, E = 100, 5 seeds each, each model's seeds as one program
  timeout 300 python examples/train_tall.py --dataset ml-1m --model lmoe tall --experts 100 \
      --seed 0 1 2 3 4 --together --no-progress --out "$out/runs" || echo "the E = 100 seed study stopped early"
  python -m tall_jax.report "$out/runs" --out "$out/report" || true
  exit 0
fi
"${bench[@]}" --dataset ml-1m --experts 100 --modes vmapped fit_epoch torch --repeats 10 \
    --epoch-repeats 3 --variants "${variants[@]}" --name gpu_ml1m_e100.json --timeout 240
"${bench[@]}" --dataset yelp cds --experts 100 --modes vmapped fit_epoch --repeats 5 \
    --variants "${variants[@]:0:3}" --name gpu_yelp_cds_e100.json --timeout 240
