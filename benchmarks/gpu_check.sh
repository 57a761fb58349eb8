#!/usr/bin/env bash
# One GPU check of gradalign_fast, for a machine with a GPU, torch and a CUDA toolkit but no
# internet; fits a 10-minute command on an H100 (GPU_CHECK_BUDGET seconds, default 570).
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Steps, each with its own time limit inside the budget, logs tee'd to OUTDIR/<step>.log and a
# line per step in OUTDIR/summary.txt:
#   env        device name (OUTDIR/device.txt), nvidia-smi, torch/nvcc versions
#   build      pip install --no-build-isolation --no-deps -e .  (TORCH_CUDA_ARCH_LIST=9.0 unless
#              set; SKIP_BUILD=1 skips it when the extension is already built)
#   test_cuda  pytest tests -m cuda          (every CUDA test)
#   memcheck   compute-sanitizer --tool memcheck  over benchmarks/sanitizer_driver.py
#   racecheck  compute-sanitizer --tool racecheck over benchmarks/sanitizer_driver.py
#   bench      benchmarks/bench_ops_bandwidth.py -> OUTDIR/bench_ops_<device>.json
#   test_rest  pytest tests -m "not cuda"    (with test_cuda: the whole suite)
# Exit status: the number of failed steps (0: all passed).
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET:-570}
START=$(date +%s)
FAILED=0
: > "$OUT/summary.txt"

note() { echo "$*" | tee -a "$OUT/summary.txt"; }

# step NAME CAP_SECONDS CMD...: runs CMD under min(CAP, time left), output tee'd to NAME.log.
step() {
  local name=$1 cap=$2 left lim t0 rc
  shift 2
  left=$((BUDGET - ($(date +%s) - START)))
  lim=$((cap < left ? cap : left))
  if ((lim < 15)); then
    note "$name: SKIPPED (out of time budget)"
    FAILED=$((FAILED + 1))
    return 0
  fi
  echo "=== $name (limit ${lim}s): $*" | tee "$OUT/$name.log"
  t0=$(date +%s)
  timeout -k 10 "$lim" "$@" 2>&1 | tee -a "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  if ((rc == 0)); then
    note "$name: ok ($(($(date +%s) - t0))s)"
  else
    note "$name: FAILED rc=$rc ($(($(date +%s) - t0))s$( ((rc == 124)) && echo ", timed out"))"
    FAILED=$((FAILED + 1))
  fi
  return 0
}

# ---------------------------------------------------------------------------- env
DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
DEVICE=${DEVICE:-unknown-gpu}
SLUG=$(echo "$DEVICE" | tr -cs 'A-Za-z0-9.-' '_' | sed 's/_*$//')
echo "$DEVICE" > "$OUT/device.txt"
{
  date -u +%FT%TZ
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  (command -v nvcc >/dev/null && nvcc --version) || /usr/local/cuda/bin/nvcc --version || echo "no nvcc"
  nproc
} > "$OUT/env.txt" 2>&1
{
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
    --format=csv
} > "$OUT/nvidia-smi.txt" 2>&1
note "device: $DEVICE"

# ---------------------------------------------------------------------------- build
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  step build 300 "$PY" -m pip install --no-build-isolation --no-deps -v -e .
fi
step check_ops 60 "$PY" -c "import torch, gradalign_fast as gf; assert torch.cuda.is_available(), 'no GPU visible'; assert gf.has_cuda_ops(), gf.ops_error(); print('CUDA kernels loaded')"

# ---------------------------------------------------------------------------- tests, sanitizers
export GRADALIGN_FAST_REQUIRE_OPS=1
step test_cuda 150 "$PY" -m pytest -q -p no:cacheprovider tests -m cuda \
  --junitxml "$OUT/test_cuda.xml"

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [[ -n $SAN ]]; then
  step memcheck 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck \
    --error-exitcode 1 --report-api-errors no --print-limit 50 "$PY" benchmarks/sanitizer_driver.py
  step racecheck 90 "$SAN" --tool racecheck --error-exitcode 1 --print-limit 50 \
    "$PY" benchmarks/sanitizer_driver.py
else
  note "memcheck, racecheck: SKIPPED (no compute-sanitizer found)"
  FAILED=$((FAILED + 1))
fi

# ---------------------------------------------------------------------------- bandwidth, rest
step bench 90 "$PY" benchmarks/bench_ops_bandwidth.py --out "$OUT/bench_ops_${SLUG}.json"
step test_rest 240 "$PY" -m pytest -q -p no:cacheprovider tests -m "not cuda" \
  --junitxml "$OUT/test_rest.xml"

note "total: $(($(date +%s) - START))s, failed steps: $FAILED"
exit "$FAILED"
