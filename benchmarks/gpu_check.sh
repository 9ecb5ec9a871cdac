#!/usr/bin/env bash
# CORN at the published size on a CUDA GPU (fp32 and bf16), with dual_branch / supervised in the same
# run. Usage: bash benchmarks/gpu_check.sh [OUT_DIR]. Needs torch with CUDA and medssl's Python deps
# (on a bare GPU image, pydantic can be installed from wheels carried in .whl/).
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
python3 benchmarks/gpu_check.py "$out"
