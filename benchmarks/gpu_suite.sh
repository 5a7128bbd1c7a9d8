#!/usr/bin/env bash
# The GPU benchmark suite in one call of at most ~8 minutes (one device session): E = 100 steps and whole
# epochs (with evaluation) for the ML-1M authors' split and Yelp / CDs shapes, in float32, tf32 and
# bfloat16, beside the PyTorch per-expert loop on the same GPU. JSON goes to $OUT (default
# benchmarks/results). `--dry-run` runs the same harness on tiny shapes on the CPU (CI runs it).
#
#   bash benchmarks/gpu_suite.sh              # on the GPU machine; ML-1M from $TALL_JAX_DATA
#   bash benchmarks/gpu_suite.sh --dry-run    # anywhere, about a minute
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
variants=('f32={}' 'tf32={"matmul_precision": "tensorfloat32"}' 'bf16={"matmul_precision": "bfloat16"}'
          'reference={"forward_impl": "reference"}')
bench=(python benchmarks/bench_train_step.py --out-dir "$out" --baseline-variant reference)
if [[ "${1:-}" == "--dry-run" ]]; then
  export JAX_PLATFORMS=cpu
  # the same harness and variant syntax; tf32 is float32 on a CPU and the reference path is covered by
  # the tests, so two variants keep the check short
  "${bench[@]}" --dataset tiny --experts 2 --modes vmapped fit_epoch torch --repeats 1 \
      --variants "${variants[0]}" "${variants[2]}" --baseline-variant f32 \
      --name gpu_suite_dry_run.json --timeout 300
  exit 0
fi
python -c "import jax; d = jax.devices()[0]; print(d, d.device_kind); assert d.platform == 'gpu', d"
"${bench[@]}" --dataset ml-1m --experts 100 --modes vmapped fit_epoch torch --repeats 10 \
    --epoch-repeats 3 --variants "${variants[@]}" --name gpu_ml1m_e100.json --timeout 240
"${bench[@]}" --dataset yelp cds --experts 100 --modes vmapped fit_epoch --repeats 5 \
    --variants "${variants[@]:0:3}" --name gpu_yelp_cds_e100.json --timeout 240
