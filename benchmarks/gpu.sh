#!/usr/bin/env bash
# The prepared GPU check (about 6 minutes at most): bash benchmarks/gpu.sh
#  1. all three configurations, every strategy in float32 and bfloat16, evaluation of 600 tasks
#     ("ours vmap batched" against "ours task" in "5w5s 32x32x3 B=32" is the issue's
#     vmap-over-32-tasks vs task-by-task comparison);
#  2. torch.compile'd bodies on the B=32 configuration only (compilation takes a while);
#  3. the default job, `python train.py`, on the GPU (wall time and test accuracy).
# A failing variant prints an error row; each part has its own time limit. Results and logs go
# to $OUT (else /tmp): bench_cuda.json, bench_cuda_compile.json, *.log, run/summary.json.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import torch, numpy, PIL; print('torch', torch.__version__, 'numpy', numpy.__version__, 'pillow', PIL.__version__)"
timeout 200 "$py" benchmarks/bench.py --device cuda --repeats 10 --eval-repeats 2 \
    --json "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.log"
echo "part 1 exit status ${PIPESTATUS[0]}"
timeout 100 "$py" benchmarks/bench.py --device cuda --repeats 10 --compile --configs 0 \
    --json "$out/bench_cuda_compile.json" > "$out/bench_cuda_compile.log" 2>&1
echo "part 2 exit status $?"
grep -E "compiled|==|variant|reference|Error|error" "$out/bench_cuda_compile.log" | tail -20
SECONDS=0
timeout 150 "$py" train.py --device cuda --data-root /tmp/data --out "$out/run" > "$out/train_cuda.log" 2>&1
echo "part 3 exit status $?; train.py wall ${SECONDS}s (includes generating the dataset)"
grep -E "^(ANIL|speed|untrained|test accuracy|iter +600)|wall|rror" "$out/train_cuda.log"
