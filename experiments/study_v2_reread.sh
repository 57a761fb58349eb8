#!/usr/bin/env bash
set -euo pipefail
# Issue 24, item 4: the modes cell (experiments/study_v2_modes.sh: exact GradAlign, FGSM-RS,
# N-FGSM, every=8 at seeds 0-4, retrained with --eval-attacks clean,pgd-50-10) re-read with the
# standard AutoAttack: clean and PGD-50-10 on the first 1,000 test points, the worst case of
# PGD-50-10 and AutoAttack on PGD's survivors, eval seed = run seed. One JSON per checkpoint in
# $OUT/reread/; docs/study_v2/modes_reread.csv holds the committed numbers.
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/study_v2/modes}
OUT=${OUT:-runs/study_v2}
mkdir -p "$OUT/reread"
for seed in 0 1 2 3 4; do
  for m in gradalign_lam2 fgsm_rs nfgsm gradalign_lam2_every8; do
    out="$OUT/reread/${m}_seed$seed.json"
    [[ -f $out ]] && continue
    OMP_NUM_THREADS=1 python -m gradalign_fast eval --checkpoint "$RUNS/$m/eps76.5/seed$seed/checkpoint.pt" \
      --n 1000 --attacks clean,pgd-50-10,pgd-50-10+autoattack --seed "$seed" --no-progress \
      --out "$out"
  done
done
