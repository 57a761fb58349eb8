#!/usr/bin/env bash
set -euo pipefail
# Study v2, part 2: the cheaper methods against exact GradAlign, paired seeds, on the study-v1
# cell (first 10k MNIST training images, eps 0.3, 8 epochs, eps ramp 4) where exact GradAlign
# does not collapse and FGSM does; the linearity mode; and exact GradAlign under two bf16
# precision policies (issue 15: bf16 autocast as is, and with GradAlign's pass in float32).
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m gradalign_fast sweep --dataset mnist --recipe mnist_sgd_ramp --data-dir "${MNIST_DIR:-../shared/data}" \
  --n-train 10000 --epochs 8 --eps-warmup-epochs 4 --eps 76.5 --seeds 0,1,2,3,4 --n-eval 1000 \
  --eval-attacks clean,pgd-50-10,pgd-50-10+autoattack --monitor-every 100 --no-plots \
  --reference gradalign:lam=2 --out "${OUT:-runs/study_v2}/modes" \
  --method gradalign:lam=2 --method gradalign_adaptive:lam=2 --method fgsm_rs --method nfgsm \
  --method gradalign:lam=2:fraction=0.2 --method gradalign:lam=2:every=4 --method elle_a:lam=1000 \
  --method gradalign:lam=2:mode=linearity --method gradalign:lam=2:amp=bf16 \
  --method gradalign:lam=2:amp=bf16-reg-fp32
