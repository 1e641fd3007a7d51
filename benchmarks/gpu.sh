#!/usr/bin/env bash
# The prepared GPU benchmark (under 4 minutes): bash benchmarks/gpu.sh
#  1. all three configurations, every strategy in float32 and bfloat16, evaluation of 600 tasks
#     ("ours vmap batched" against "ours task" in "5w5s 32x32x3 B=32" is the issue's
#     vmap-over-32-tasks vs task-by-task comparison);
#  2. torch.compile'd bodies on the B=32 configuration only (compilation takes a while).
# A failing variant prints an error row; each part has its own time limit. JSON results go to
# $OUT/bench_cuda.json and $OUT/bench_cuda_compile.json when OUT is set (else /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 140 python benchmarks/bench.py --device cuda --repeats 10 --json "$out/bench_cuda.json"
echo "part 1 exit status $?"
timeout 80 python benchmarks/bench.py --device cuda --repeats 10 --compile --configs 0 \
    --json "$out/bench_cuda_compile.json" 2>&1 | grep -E "compiled|==|variant|reference|wrote|Error|error"
echo "part 2 exit status ${PIPESTATUS[0]}"
