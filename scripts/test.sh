#!/usr/bin/env bash
# The test command of the README: set-up, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRADALIGN_FAST_REQUIRE_OPS=1
exec "${PYTHON:-python3}" -m pytest -q "$@"
