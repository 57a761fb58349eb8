#!/usr/bin/env bash
# Issue 15: rounding error of the mixed-precision policies (gradalign_fast.precision) along
# (1) the exact-GradAlign MNIST CNN trajectory of study_v2_fidelity.sh (run that first) and
# (2) a short PreActResNet-18 (narrow, BatchNorm) trajectory on MNIST, trained here.
# Tables in docs/results.md ("Mixed precision"); ~1 h on a 2-core CPU (bf16 is emulated).
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/study_v2}"
P="--precision bf16 --precision bf16-reg-fp32 --precision bf16-bn-fp32 --precision fp16"
OMP_NUM_THREADS=1 python -m gradalign_fast fidelity --run "$OUT/fid_traj" $P --draws 4 \
  --batch 128 --out "$OUT/fid_traj/precision"
OMP_NUM_THREADS=1 python -m gradalign_fast fidelity --run "$OUT/prec_bn_traj" --dataset mnist --recipe mnist_sgd_ramp \
  --data-dir "${MNIST_DIR:-../shared/data}" --model preact_resnet18_std_narrow --n-train 1280 \
  --batch-size 128 --epochs 2 --eps 76.5 --eps-warmup-epochs 1 --lam 2 --snapshot-every 5 \
  --eval-attacks clean --n-eval 100 $P --draws 3 --batch 64 --out "$OUT/prec_bn_traj/precision"
