#!/usr/bin/env bash
# Set up, then run the default test suite (add `-m slow` for the long checks).
set -euo pipefail
cd "$(dirname "$0")/.."
FAT_JAX_SKIP_DATA=1 bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
