#!/usr/bin/env bash
# All set-up on a fresh machine: pinned dependencies (requirements.txt), then the compiled ops
# (CPU kernels always; CUDA kernels when nvcc and a CUDA build of torch are present).
#
# torch: the CUDA build pinned in requirements.txt where an NVIDIA GPU (/dev/nvidia*,
# nvidia-smi) or a CUDA toolkit (nvcc) is present, else the CPU build on its `cpu-torch:` line
# (no torchvision). GRADALIGN_TORCH=SPEC overrides both (e.g. GRADALIGN_TORCH=torch==2.13.0).
# With a GPU the kernels are built for its architecture only (setup.py), unless
# TORCH_CUDA_ARCH_LIST is set.
#
# `bash scripts/setup.sh --dry-run` prints the choice and the requirements, and installs nothing.
# Quick to run again: pip runs only when a pin is not met, the editable install only when the
# project's metadata changed, and the build is incremental (ninja; objects kept in build/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
T0=$SECONDS
mkdir -p build

# ------------------------------------------------------------------ which torch
GPU=""
if compgen -G '/dev/nvidia[0-9]*' >/dev/null; then GPU="/dev/nvidia*"; fi
if [[ -z $GPU ]] && command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  GPU="nvidia-smi"
fi
# The toolkit: $CUDA_HOME, /usr/local/cuda, else the folder above the nvcc on PATH where it has
# the CUDA headers (an nvcc on PATH may be a wrapper script in /usr/local/bin).
NVCC="" CUDA_DIR=""
for d in "${CUDA_HOME:-}" /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent)")")")"; do
  if [[ -n $d && -x $d/bin/nvcc ]]; then NVCC=$d/bin/nvcc CUDA_DIR=$d; break; fi
done
if [[ -z $NVCC ]] && command -v nvcc >/dev/null; then NVCC=$(command -v nvcc); fi
REQS=build/requirements-setup.txt
if [[ -n ${GRADALIGN_TORCH:-} ]]; then
  TORCH_SPEC=$GRADALIGN_TORCH
  WHY="GRADALIGN_TORCH"
elif [[ -n $GPU || -n $NVCC ]]; then
  TORCH_SPEC=$(grep -E '^(torch|torchvision)==' requirements.txt | paste -sd' ')
  WHY="CUDA build: ${GPU:+NVIDIA GPU ($GPU)}${GPU:+${NVCC:+, }}${NVCC:+CUDA toolkit ($NVCC)}"
else
  TORCH_SPEC=$(sed -n 's/^# cpu-torch: *//p' requirements.txt)
  WHY="CPU build: no NVIDIA GPU and no CUDA toolkit found"
fi
{ grep -v -E '^(torch|torchvision)==' requirements.txt; tr ' ' '\n' <<<"$TORCH_SPEC"; } \
  | grep -v -E '^\s*(#|$)' > "$REQS"
NODEPS=$(sed -n 's/^# no-deps: *//p' requirements.txt)
echo "set-up: torch $TORCH_SPEC ($WHY)"
if [[ ${1:-} == --dry-run ]]; then cat "$REQS"; echo "no-deps: $NODEPS"; exit 0; fi

# ------------------------------------------------------------------ dependencies
# pip only when an installed version misses a pin (pip itself takes ~10 s to find that out).
if ! "$PY" - "$REQS" $NODEPS <<'PYEOF'; then
import importlib.metadata as md
import sys

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
reqs = [l.strip() for l in open(sys.argv[1])] + sys.argv[2:]
unmet = []
for line in reqs:
    r = Requirement(line)
    try:
        have = md.version(r.name)
    except md.PackageNotFoundError:
        unmet.append(f"{line} (absent)")
        continue
    if not r.specifier.contains(have, prereleases=True):
        unmet.append(f"{line} (have {have})")
if unmet:
    print("set-up: installing " + ", ".join(unmet))
sys.exit(1 if unmet else 0)
PYEOF
  "$PY" -m pip install -q -r "$REQS"
  # No dependencies: its metadata pins requests~=2.25.1, which it never imports.
  [[ -z $NODEPS ]] || "$PY" -m pip install -q --no-deps $NODEPS
fi

# ------------------------------------------------------------------ the compiled ops
if [[ -z ${CUDA_HOME:-} && -n $CUDA_DIR ]]; then export CUDA_HOME=$CUDA_DIR; fi
# In place, objects in build/temp-*: ninja recompiles only what changed. The compiler's output
# goes to build/build.log (shown only when the build fails).
if ! "$PY" setup.py -q build_ext --inplace > build/build.log 2>&1; then
  tail -n 60 build/build.log
  echo "set-up: the build of the compiled ops failed; the full log is build/build.log" >&2
  exit 1
fi
grep -F '[gradalign_fast]' build/build.log | sed 's/^\[gradalign_fast\] /set-up: /' || true
# The editable install (imports from anywhere, the gradalign-fast command) only when it is
# missing or the project's metadata changed; its build step finds the objects up to date.
STAMP="$("$PY" -c 'import sys; print(sys.executable)') $(cat pyproject.toml setup.py gradalign_fast/_version.py | cksum)"
if ! "$PY" - "$PWD" <<'PYEOF' || [[ "$(cat build/editable.stamp 2>/dev/null)" != "$STAMP" ]]; then
import importlib.metadata as md
import json
import sys
from urllib.parse import unquote, urlparse

try:
    url = json.loads(md.distribution("gradalign_fast").read_text("direct_url.json") or "{}")
except md.PackageNotFoundError:
    sys.exit(1)
ok = (url.get("dir_info", {}).get("editable")
      and unquote(urlparse(url.get("url", "")).path).rstrip("/") == sys.argv[1])
sys.exit(0 if ok else 1)
PYEOF
  "$PY" -m pip install -q --no-build-isolation --no-deps -e .
  echo "$STAMP" > build/editable.stamp
fi
"$PY" - <<'PYEOF'
import gradalign_fast as g
from gradalign_fast._build_info import BUILD_INFO as b
assert g.has_ops(), f"compiled ops did not load: {g.ops_error()}"
import torchattacks  # noqa: F401  (the AutoAttack test must not skip)
archs = f" for {b['torch_cuda_arch_list']}" if b["with_cuda"] else ""
print(f"gradalign_fast: compiled ops loaded (CUDA kernels: {g.has_cuda_ops()}{archs}; "
      f"built against torch {b['torch_version']})")
PYEOF
echo "set-up: done in $((SECONDS - T0)) s"
