#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one run of under 8 minutes, logs under $OUT:
#   1. pytest -m gpu       the GPU kernels and every GPU entry point against their CPU twins
#                          (tests/test_gpu.py: the shared cases with torch CUDA tensors and cupy)
#   2. compare.py gpu      every family at N = 10M against torch CUDA exhaustive search, and the
#                          batched code solver (B = 256) against its CPU twin
#   3. the GPU benchmarks  benchmarks/bench_gpu.py through asv where asv is installed, else timed
#                          by the module itself
# Without a GPU (no cupy, or no device) it says so and exits 0: nothing here can pass falsely.
# Usage: OUT=/some/folder PYTHON=python3 benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "from qkernels import _gpu; import sys; sys.exit(0 if _gpu.available() else 1)" \
        2>"$OUT/no-gpu.log"; then
    echo "gpu_check: skipped, no NVIDIA GPU with cupy here ($PY: $("$PY" -m qkernels 2>/dev/null \
        | grep -E '^ *cupy' | head -1 | tr -s ' '))" | tee "$OUT/summary.txt"
    exit 0
fi

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout "$seconds" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}

"$PY" -m qkernels >"$OUT/show-config.log" 2>&1
nvidia-smi >"$OUT/nvidia-smi.log" 2>&1 || true
step pytest-gpu 180 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
step compare-gpu 200 "$PY" benchmarks/compare.py gpu --repeat 5
if "$PY" -c "import asv" 2>/dev/null; then
    step asv-gpu 90 "$PY" -m asv run --quick --show-stderr --bench GPU \
        --environment "existing:$(command -v "$PY")"
else
    step bench-gpu 90 "$PY" -m benchmarks.bench_gpu
fi
exit $status
