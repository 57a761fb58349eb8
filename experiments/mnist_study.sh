#!/usr/bin/env bash
# The MNIST study of docs/results.md: FGSM, FGSM-RS, exact GradAlign, its three approximate modes
# and PGD-10 AT, 3 seeds, at eps = 90/255 (catastrophic-overfitting regime) and 76.5/255 (0.3).
# Resumable: run it again after an interruption. Two sweeps run side by side, one thread each
# (about 30 minutes per eps on a 2-core CPU). Then the tables and Fig. A plots are rebuilt from
# all finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${MNIST_DIR:-../shared/data}
OUT=${OUT:-runs/mnist_study}
for EPS in 90 76.5; do
  COMMON=(--dataset mnist --recipe mnist_sgd_ramp --data-dir "$DATA" --n-train 10000 --epochs 8 --eps-warmup-epochs 4
          --eps "$EPS" --seeds 0,1,2 --n-eval 1000 --eval-attacks clean,pgd-50-10,autoattack
          --monitor-every 20 --out "$OUT" --no-plots)
  OMP_NUM_THREADS=1 python -m gradalign_fast sweep "${COMMON[@]}" --method fgsm \
      --method gradalign:lam=2 --method gradalign:lam=2:every=4 --method pgd &
  OMP_NUM_THREADS=1 python -m gradalign_fast sweep "${COMMON[@]}" --method fgsm_rs \
      --method gradalign:lam=2:fraction=0.25 --method gradalign:lam=1:mode=linearity:fraction=0.25
  wait
done
# exact GradAlign and its two cheapest modes at lambda = 1 (lambda = 2 diverged on 2 of 3 seeds)
OMP_NUM_THREADS=1 python -m gradalign_fast sweep --dataset mnist --recipe mnist_sgd_ramp --data-dir "$DATA" --n-train 10000 \
    --epochs 8 --eps-warmup-epochs 4 --eps 90 --seeds 0,1,2 --n-eval 1000 \
    --eval-attacks clean,pgd-50-10,autoattack --monitor-every 20 --out "$OUT" --no-plots \
    --method gradalign:lam=1 --method gradalign:lam=1:fraction=0.25 --method gradalign:lam=1:every=4
# GradAlign on a fifth of the batch (the mode under 1.3x FGSM), both radii
for EPS in 76.5 90; do
  OMP_NUM_THREADS=1 python -m gradalign_fast sweep --dataset mnist --recipe mnist_sgd_ramp --data-dir "$DATA" --n-train 10000 \
      --epochs 8 --eps-warmup-epochs 4 --eps "$EPS" --seeds 0,1,2 --n-eval 1000 \
      --eval-attacks clean,pgd-50-10,autoattack --monitor-every 20 --out "$OUT" --no-plots \
      --method gradalign:lam=2:fraction=0.2
done
# all runs in one table, and the plots (reads the finished runs back: no training)
python -m gradalign_fast sweep --report-only --dataset mnist --recipe mnist_sgd_ramp --data-dir "$DATA" --n-train 10000 --epochs 8 \
    --eps-warmup-epochs 4 --eps 90 --eps 76.5 --seeds 0,1,2 --n-eval 1000 \
    --eval-attacks clean,pgd-50-10,autoattack --monitor-every 20 --out "$OUT" \
    --method fgsm --method fgsm_rs --method gradalign:lam=2 --method gradalign:lam=2:fraction=0.25 \
    --method gradalign:lam=2:every=4 --method gradalign:lam=1:mode=linearity:fraction=0.25 \
    --method pgd --method gradalign:lam=1 --method gradalign:lam=1:fraction=0.25 \
    --method gradalign:lam=1:every=4 --method gradalign:lam=2:fraction=0.2
