#!/usr/bin/env bash
set -euo pipefail
# Study v2, gradient fidelity: an exact-GradAlign trajectory on the modes study's cell (first
# 10k MNIST training images, eps 0.3, lambda 2, 8 epochs, eps ramp 4) with weight snapshots every
# 50 iterations, then each mode's regulariser gradient against exact GradAlign's at each one.
# FGSM overfits catastrophically around iteration 360 in this cell (study v1).
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m gradalign_fast fidelity --run "${OUT:-runs/study_v2}/fid_traj" \
  --dataset mnist --recipe mnist_sgd_ramp --data-dir "${MNIST_DIR:-../shared/data}" --n-train 10000 --epochs 8 \
  --eps-warmup-epochs 4 --eps 76.5 --lam 2 --snapshot-every 50 --eval-attacks clean,pgd-50-10 \
  --n-eval 500 --monitor-every 0 --draws 16 --ref-draws 32 --batch 128 --co-iteration 360 \
  --mode gradalign:fraction=0.2 --mode gradalign:fraction=0.25 --mode gradalign:every=4 \
  --mode gradalign:mode=linearity:fraction=0.25 --mode elle:lam=10000
