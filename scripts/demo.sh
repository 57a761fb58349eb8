#!/usr/bin/env bash
# The main job of the README: set-up, then FGSM, FGSM-RS and FGSM+GradAlign on MNIST (a few CPU minutes).
# Extra arguments go to `python -m gradalign_fast demo` (e.g. --dataset mnist --data-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m gradalign_fast demo "$@"
