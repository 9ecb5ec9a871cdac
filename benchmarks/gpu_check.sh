#!/usr/bin/env bash
# GPU check (issue 14): every semi-supervised method at the published size in fp32 / bf16 /
# channels_last / compiled, SparK ResNet-50 at 224 (batch 64), sliding-window inference; iterations/s,
# TFLOP/s against the datasheet peak, peak memory. At most eight minutes: no case starts after 420 s
# (benchmarks/gpu_check.py --budget-s) and the whole call is cut at 470 s.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (writes OUT_DIR/gpu_check.{json,md}; default
# benchmarks/results). Needs torch with CUDA and medssl's Python deps (on a bare GPU image, pydantic
# can be installed from wheels carried in .whl/). CPU dry run of the same logic: python3
# benchmarks/gpu_check.py --tiny OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
if [ -d .whl ] && ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
timeout 470 python3 benchmarks/gpu_check.py "$out" --budget-s 420
