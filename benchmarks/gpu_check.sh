#!/usr/bin/env bash
# One GPU check of gradalign_fast, for a lent GPU machine (torch, a CUDA toolkit, no internet):
# fits 8 minutes on one H100/H200, so one 15-minute device allowance (machine start included)
# leaves time for a rerun.
#
#   bash benchmarks/gpu_check.sh OUTDIR            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run OUTDIR  # here, no GPU: the same stages on the CPU
#                                                  # (small), sanitizers listed, not run
#
# Stages, most important first, each under its own cap (seconds); the caps add up to the
# budget, so a stage never loses time to an earlier one that kept to its cap. The caps are
# estimates for an H200 (16 cores) until a first run measures them: see stage_s in results.
#   env          5  device name, nvidia-smi, torch / nvcc / setuptools versions
#   build      135  setup.py build_ext --inplace for this GPU's architecture only
#                   (TORCH_CUDA_ARCH_LIST from nvidia-smi unless set; SKIP_BUILD=1 skips)
#   info        30  python -m gradalign_fast info --json: versions, kernels, self-check of every
#                   op on cpu and cuda against the reference, GradAlignLoss vs the authors'
#   test_cuda   75  pytest -m cuda, without the CUDA-graph tests
#   memcheck    50  compute-sanitizer memcheck over benchmarks/sanitizer_driver.py (all ops,
#                   4 dtypes, every layout path)
#   racecheck   25  compute-sanitizer racecheck over the driver's cosine cases (float, double:
#                   the only kernels with shared memory)
#   bench_ops   30  benchmarks/bench_ops_bandwidth.py --reps 30 (achieved vs copy bandwidth;
#                   CIFAR batches 128-512 and an ImageNet batch, fp32 and bf16)
#   steps       50  benchmarks/gpu_steps.py steps: FGSM, plain and exact GradAlign, fp32 and
#                   bf16 autocast (+ the bf16-reg-fp32 and bf16-bn-fp32 policies), NCHW and
#                   channels_last; CUDA-graph capture vs eager
#   epoch       30  benchmarks/gpu_steps.py epoch: FGSM and GradAlign over 10,000 synthetic
#                   CIFAR-shaped images (fp32, bf16) -> seconds per 50,000-image epoch
#   epoch_time  25  python -m gradalign_fast bench --epoch: the authors' CIFAR-10 recipe
#                   (PreActResNet-18, batch 128, synthetic CIFAR-shaped data) for FGSM, the
#                   authors' and the exact GradAlign, every=8, N-FGSM: 3 blocks of 16 timed
#                   iterations each, extrapolated to minutes per 30 epochs beside the authors'
#                   V100 figures (--dry-run: bench --epoch --dry-run)
#   test_graphs 20  pytest -m cuda, the CUDA-graph tests (CapturedStep, random_delta in a graph)
#   ------------
#   budget     475  (GPU_CHECK_BUDGET; bundling adds a few seconds: <= 8 min in all)
#
# OUTDIR gets at most 4 files (the device tool brings back 8): summary.md (device, stages,
# key numbers), results.json (stage status and times, device, info, benchmark results),
# logs.tar.gz (every log, the JUnit XML, nvidia-smi, env), and the exit status in summary.md.
# Exit status: the number of failed stages (0: all passed).
set -uo pipefail

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
[[ $# -eq 1 ]] || { echo "usage: $0 [--dry-run] OUTDIR" >&2; exit 2; }
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-475}
# --dry-run: caps and budget x4 (a shared CPU machine, not an H200)
SCALE=${GPU_CHECK_CAP_SCALE:-$((DRY ? 4 : 1))}
BUDGET=$((BUDGET * SCALE))
START=$(date +%s)
FAILED=0
WORK=$(mktemp -d)  # logs and partial results; bundled into OUT at the end
trap 'rm -rf "$WORK"' EXIT
: > "$WORK/stages.tsv"

note() { echo "$*" | tee -a "$WORK/summary.txt"; }

# stage NAME CAP CMD...: CMD under min(CAP, budget left), output tee'd to NAME.log.
stage() {
  local name=$1 cap=$(($2 * SCALE)) left lim t0 rc dt status
  shift 2
  left=$((BUDGET - ($(date +%s) - START)))
  lim=$((cap < left ? cap : left))
  if ((lim < 5)); then
    note "$name: SKIPPED (out of time budget)"
    printf '%s\t%s\t%s\t%s\n' "$name" skipped 0 "$cap" >> "$WORK/stages.tsv"
    FAILED=$((FAILED + 1))
    return 0
  fi
  echo "=== $name (limit ${lim}s): $*" | tee "$WORK/$name.log"
  t0=$(date +%s)
  timeout -k 5 "$lim" "$@" 2>&1 | tee -a "$WORK/$name.log"
  rc=${PIPESTATUS[0]}
  dt=$(($(date +%s) - t0))
  if ((rc == 0)); then
    status=ok
  elif ((rc == 124 || rc == 137)); then
    status=timeout
    FAILED=$((FAILED + 1))
  else
    status="failed:$rc"
    FAILED=$((FAILED + 1))
  fi
  note "$name: $status (${dt}s of ${cap}s)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$dt" "$cap" >> "$WORK/stages.tsv"
  return 0
}

# ---------------------------------------------------------------------------- env (5 s)
if ((DRY)); then
  DEVICE="dry-run on $(uname -n) (CPU)"
  DEV=cpu QUICK=--quick
else
  DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  DEVICE=${DEVICE:-unknown-gpu}
  DEV=cuda QUICK=""
fi
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
{
  echo "device: $DEVICE (compute capability ${CAP:-unknown})"
  date -u +%FT%TZ
  timeout 60 "$PY" -c "import sys, torch, setuptools; print('python', sys.version.split()[0], sys.executable); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('setuptools', setuptools.__version__)"
  (command -v nvcc >/dev/null && nvcc --version) || /usr/local/cuda/bin/nvcc --version || echo "no nvcc"
  echo "cores: $(nproc)"
  nvidia-smi 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
    --format=csv 2>&1
} > "$WORK/env.log" 2>&1
note "device: $DEVICE"
printf '%s\t%s\t%s\t%s\n' env ok "$(($(date +%s) - START))" $((5 * SCALE)) >> "$WORK/stages.tsv"

# ---------------------------------------------------------------------------- build (135 s)
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  if [[ -z ${TORCH_CUDA_ARCH_LIST:-} && -n $CAP ]]; then export TORCH_CUDA_ARCH_LIST=$CAP; fi
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  stage build 135 "$PY" setup.py build_ext --inplace
else
  printf '%s\t%s\t%s\t%s\n' build skipped 0 135 >> "$WORK/stages.tsv"
fi

# ---------------------------------------------------------------------------- correctness
export GRADALIGN_FAST_REQUIRE_OPS=1 PYTHONUNBUFFERED=1
# The in-place build is not installed: benchmarks/*.py import the package from this checkout.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
stage info 30 bash -c "'$PY' -m gradalign_fast info --json > '$WORK/info.json'; rc=\$?; \
  '$PY' -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"summary\"])' '$WORK/info.json'; exit \$rc"
GRAPH_TESTS="captured or cuda_graph"
stage test_cuda 75 "$PY" -m pytest -q -p no:cacheprovider tests -m cuda -k "not ($GRAPH_TESTS)" \
  -rs --junitxml "$WORK/test_cuda.xml"

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
SAN_ARGS=(--error-exitcode 1 --report-api-errors no --print-limit 50)
if ((DRY)); then
  stage memcheck 50 "$PY" benchmarks/sanitizer_driver.py --list
  stage racecheck 25 "$PY" benchmarks/sanitizer_driver.py --list --ops cosine --dtypes float32,float64
elif [[ -n $SAN ]]; then
  stage memcheck 50 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck "${SAN_ARGS[@]}" \
    "$PY" benchmarks/sanitizer_driver.py
  stage racecheck 25 "$SAN" --tool racecheck "${SAN_ARGS[@]}" \
    "$PY" benchmarks/sanitizer_driver.py --ops cosine --dtypes float32,float64
else
  note "memcheck, racecheck: FAILED (no compute-sanitizer found)"
  printf '%s\t%s\t%s\t%s\n' memcheck failed:nosanitizer 0 50 racecheck failed:nosanitizer 0 25 \
    >> "$WORK/stages.tsv"
  FAILED=$((FAILED + 2))
fi

# ---------------------------------------------------------------------------- speed
stage bench_ops 30 "$PY" benchmarks/bench_ops_bandwidth.py --device "$DEV" ${QUICK:---reps 30} \
  --out "$WORK/bench_ops.json"
stage steps 50 "$PY" benchmarks/gpu_steps.py steps --device "$DEV" $QUICK --out "$WORK/steps.json"
stage epoch 30 "$PY" benchmarks/gpu_steps.py epoch --device "$DEV" --out "$WORK/epoch.json"
EPOCH_ARGS=(--iters 16 --blocks 3 --warmup 2)
if ((DRY)); then EPOCH_ARGS=(--dry-run); fi
stage epoch_time 25 "$PY" -m gradalign_fast bench --epoch --device "$DEV" "${EPOCH_ARGS[@]}" \
  --out "$WORK/epoch_time.json"
stage test_graphs 20 "$PY" -m pytest -q -p no:cacheprovider tests -m cuda -k "$GRAPH_TESTS" \
  -rs --junitxml "$WORK/test_graphs.xml"

# ---------------------------------------------------------------------------- bundle
TOTAL=$(($(date +%s) - START))
note "total: ${TOTAL}s of ${BUDGET}s, failed stages: $FAILED"
"$PY" - "$WORK" "$OUT" "$DEVICE" "$TOTAL" "$BUDGET" "$FAILED" "$DRY" <<'PYEOF'
import json, os, sys

work, out, device, total, budget, failed, dry = sys.argv[1:]
def load(name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def table(head, rows):
    """Markdown table lines: header, separator, one line per row (cells formatted by str).
    Not gradalign_fast.studies.tables.md_table: the summary must be written even when the
    package failed to build or import on the GPU machine."""
    return (["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])
stages = []
for line in open(os.path.join(work, "stages.tsv")):
    name, status, sec, cap = line.rstrip("\n").split("\t")
    stages.append({"stage": name, "status": status, "seconds": int(sec), "cap_s": int(cap)})
res = {"device": device, "dry_run": dry == "1", "total_s": int(total), "budget_s": int(budget),
       "failed_stages": int(failed), "stages": stages, "info": load("info.json"),
       "bench_ops": load("bench_ops.json"), "steps": load("steps.json"),
       "epoch": load("epoch.json"), "epoch_time": load("epoch_time.json")}
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(res, f, indent=1, default=str)

md = [f"# gradalign_fast GPU check: {device}", "",
      f"{'DRY RUN (CPU, small sizes; sanitizers listed, not run). ' if dry == '1' else ''}"
      f"Total {total} s of a {budget} s budget; failed stages: {failed}.", ""]
md += table(["stage", "status", "seconds", "cap"],
            [[s["stage"], s["status"], s["seconds"], s["cap_s"]] for s in stages])
info = res["info"]
if info:
    v = info["versions"]
    b = v.get("build") or {}
    md += ["", f"**info:** {info['summary']}", "",
           f"torch {v['torch']['version']} (built against {b.get('torch_version')}), CUDA "
           f"toolkit {b.get('cuda_toolkit')}, archs {b.get('torch_cuda_arch_list')}; GPUs: "
           + ("; ".join(f"{g['name']} ({g['capability']}, kernels run: {g['kernels_run']})"
                        for g in v["gpus"]) or "none")]
st = res["steps"]
if st:
    md += ["", f"**steps** ({st['model']}, batch {st['batch']}; ms per step, ratio to FGSM, "
           "peak MiB)", ""]
    md += table(["amp", "channels_last", "step", "ms", "x FGSM", "peak MiB"],
                [[r["amp"], r["channels_last"], r["step"], r["ms"], r["ratio"], r["peak_mib"]]
                 for r in st["eager"]])
    if st["cuda_graph"]:
        md += [""] + table(["CUDA graph", "amp", "eager ms", "graph ms", "speed-up"],
                           [[r["step"], r["amp"], r.get("eager_ms"), r.get("graph_ms"),
                             r.get("speedup", r.get("error"))] for r in st["cuda_graph"]])
ep = res["epoch"]
if ep:
    md += ["", f"**epoch** ({ep['model']}, batch {ep['batch']}, {ep['n_train']} synthetic "
           "CIFAR-shaped images timed)", ""]
    md += table(["method", "amp", "ms/step", "s per 50k epoch"],
                [[r["method"], r["amp"], r["ms_per_step"], r["cifar10_epoch_s"]]
                 for r in ep["runs"]])
et = res["epoch_time"]
if et:
    m = et["meta"]
    md += ["", f"**epoch_time** (the authors' CIFAR-10 recipe, {m['model']}, batch "
           f"{m['batch_size']}; {m['data']}; {m['blocks']} blocks of {m['iters']} iterations "
           f"per method, extrapolated to {m['steps_per_epoch']} iterations x {m['epochs']} "
           "epochs: minutes per 30 epochs, median [min, max] over the blocks)", ""]
    md += table(["method", "min / 30 epochs", "[min, max]", "x FGSM", "authors V100 min",
                 "authors x FGSM"],
                [[r["text"].strip(), f"{r['min_30ep']:.3g}",
                  f"[{r['min_30ep_lo']:.3g}, {r['min_30ep_hi']:.3g}]",
                  f"{r['x_fgsm']:.2f}" if r["x_fgsm"] is not None else "-",
                  r["authors_v100_min"] or "-",
                  f"{r['authors_x_fgsm']:.2f}" if r["authors_x_fgsm"] else "-"]
                 for r in et["rows"]])
bo = res["bench_ops"]
if bo and bo.get("rows"):
    md += ["", "**op bandwidth** (bytes the op must move / GPU time; x ref: time over the "
           "pure-PyTorch reference's)", ""]
    md += table(["op", "dtype", "shape", "us", "GB/s", "% of copy", "x ref"],
                [[r["op"], r["dtype"], r["shape"], f"{r['time_us']:.1f}", f"{r['GBps']:.0f}",
                  f"{r['pct_copy']:.0f}", f"{r['x_ref']:.2f}"] for r in bo["rows"]])
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(md) + "\n")
PYEOF
tar -czf "$OUT/logs.tar.gz" -C "$WORK" .
echo "results: $OUT/summary.md, $OUT/results.json, $OUT/logs.tar.gz"
exit "$FAILED"
