#!/usr/bin/env bash
# Set up, then run the default test suite (pass `-m slow` for the long checks, which use the
# real Fashion-MNIST that the set-up installs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
