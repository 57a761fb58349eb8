#!/usr/bin/env bash
set -euo pipefail
# Study v2, total training cost (issue "Below the arithmetic floor"): every method trained once on
# the modes cell (first 10k MNIST training images, eps 0.3, 8 epochs, eps ramp 4, seed 0), in two
# passes whose method order is reversed (ABBA: a drift in machine load hits both ends alike);
# evaluation reduced to clean accuracy on 100 points (only the training time is read here).
# Table: python experiments/cost_table.py "${OUT:-runs/study_v2}/cost"
cd "$(dirname "$0")/.."
# METHODS_LIST="fgsm m1 m2": time only these (include fgsm: the ratios' denominator)
DEFAULT="fgsm fgsm_rs nfgsm gradalign:lam=2 gradalign:lam=2:fraction=0.2
  gradalign:lam=2:every=4 gradalign:lam=2:every=8 gradalign:lam=2:mode=linearity
  gradalign_adaptive:lam=2 gradalign_adaptive:lam=2:rule=threshold:threshold=0.85 elle:lam=1000
  elle_a:lam=1000"
# shellcheck disable=SC2206  # word splitting intended: method labels hold no spaces or globs
METHODS=(${METHODS_LIST:-$DEFAULT})
run_pass() {  # $1: output folder; the rest: methods in the order to train them
  local out=$1; shift
  local args=()
  for m in "$@"; do args+=(--method "$m"); done
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m gradalign_fast sweep --dataset mnist --recipe mnist_sgd_ramp \
    --data-dir "${MNIST_DIR:-../shared/data}" --n-train 10000 --epochs 8 --eps-warmup-epochs 4 \
    --eps 76.5 --seeds 0 --n-eval 100 --eval-attacks clean --monitor-every 0 --no-plots \
    --out "$out" "${args[@]}"
}
REVERSED=()
for ((i = ${#METHODS[@]} - 1; i >= 0; i--)); do REVERSED+=("${METHODS[i]}"); done
# PASSES="1" / PASSES="2": one pass only (e.g. both at once, one per core: each then runs beside
# the other, the same load for both)
for p in ${PASSES:-1 2}; do
  if [ "$p" = 1 ]; then run_pass "${OUT:-runs/study_v2}/cost/pass1" "${METHODS[@]}"
  else run_pass "${OUT:-runs/study_v2}/cost/pass2" "${REVERSED[@]}"; fi
done
