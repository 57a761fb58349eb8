#!/usr/bin/env bash
set -euo pipefail
# Study v2, part 1: the CO regime on all 60k MNIST training images (eps 0.35, 10 epochs, eps ramp 4);
# exact GradAlign at lam 2 and lam 1 (the lam grid of this cell), FGSM-RS at alpha = 1.25 eps.
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m gradalign_fast sweep --dataset mnist --data-dir "${MNIST_DIR:-../shared/data}" \
  --model mnist_cnn --epochs 10 --eps-warmup-epochs 4 --lr-max 0.05 --eps 89.25 \
  --method gradalign:lam=2 --method gradalign:lam=1 --method fgsm_rs --seeds 0,1,2,3,4 --n-eval 1000 \
  --eval-attacks clean,pgd-50-10,pgd-50-10+autoattack --monitor-every 100 --no-plots \
  --reference gradalign:lam=2 --out "${OUT:-runs/study_v2}/regime"
