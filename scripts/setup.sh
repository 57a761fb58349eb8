#!/usr/bin/env bash
# All set-up on a fresh machine: pinned dependencies, then the compiled ops (CPU kernels always,
# CUDA kernels when nvcc and a CUDA build of torch are present). Safe to run again: the build is
# incremental (ninja).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ -n "${GRADALIGN_TORCH:-}" ]]; then
  grep -v -E '^(torch|torchvision)==' requirements.txt > /tmp/gradalign_fast_reqs.txt
  "$PY" -m pip install -q "$GRADALIGN_TORCH" -r /tmp/gradalign_fast_reqs.txt
else
  "$PY" -m pip install -q -r requirements.txt
fi
if [[ -z "${CUDA_HOME:-}" && -x /usr/local/cuda/bin/nvcc ]]; then export CUDA_HOME=/usr/local/cuda; fi
"$PY" -m pip install -q --no-build-isolation -e .
"$PY" - <<'PYEOF'
import gradalign_fast as g
assert g.has_ops(), f"compiled ops did not load: {g.ops_error()}"
print(f"gradalign_fast: compiled ops loaded (CUDA kernels: {g.has_cuda_ops()})")
PYEOF
