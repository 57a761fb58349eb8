#!/usr/bin/env bash
set -euo pipefail
# Study v2, part 1: the CO regime on all 60k MNIST training images (eps 0.35, 10 epochs, eps ramp 4);
# exact GradAlign at lam 2 and lam 1 (the lam grid of this cell), FGSM-RS at alpha = 1.25 eps;
# then the learning-rate cell and the capacity screening.
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m gradalign_fast sweep --dataset mnist --recipe mnist_sgd_ramp --data-dir "${MNIST_DIR:-../shared/data}" \
  --model mnist_cnn --epochs 10 --eps-warmup-epochs 4 --lr-max 0.05 --eps 89.25 \
  --method gradalign:lam=2 --method gradalign:lam=1 --method fgsm_rs --seeds 0,1,2,3,4 --n-eval 1000 \
  --eval-attacks clean,pgd-50-10,pgd-50-10+autoattack --monitor-every 100 --no-plots \
  --reference gradalign:lam=2 --out "${OUT:-runs/study_v2}/regime"

# The learning-rate cell: the cyclic lr's peak at 0.02 instead of 0.05, FGSM-RS at alpha = 2 eps
# and 1.25 eps (stopped for futility after seeds 0-2; docs/results.md)
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m gradalign_fast sweep --dataset mnist --recipe mnist_sgd_ramp --data-dir "${MNIST_DIR:-../shared/data}" \
  --model mnist_cnn --epochs 10 --eps-warmup-epochs 4 --lr-max 0.02 --eps 89.25 \
  --method gradalign:lam=2 --method fgsm_rs:alpha=0.7 --method fgsm_rs --seeds 0,1,2 --n-eval 1000 \
  --eval-attacks clean,pgd-50-10,pgd-50-10+autoattack --monitor-every 100 --no-plots \
  --reference gradalign:lam=2 --out "${OUT:-runs/study_v2}/regime_lr02"

# Model capacity (screening, seed 0): the 4x wider MNIST CNN in the modes cell
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m gradalign_fast sweep --dataset mnist --recipe mnist_sgd_ramp --data-dir "${MNIST_DIR:-../shared/data}" \
  --model mnist_cnn_wide --n-train 10000 --epochs 8 --eps-warmup-epochs 4 --eps 76.5 --seeds 0 --n-eval 500 \
  --eval-attacks clean,pgd-50-10,pgd-50-10+autoattack --monitor-every 100 --no-plots \
  --out "${OUT:-runs/study_v2}/wide" --method fgsm_rs --method gradalign:lam=2 --method fgsm
