#!/usr/bin/env bash
# Set up (with the test tools, TFDS and grain, whose tests are skipped without them), then run the
# default test suite in two worker processes (pytest-xdist). Pass `-m slow` for the long
# checks, which use the real Fashion-MNIST that the set-up installs, and `-n 0` to run in one
# process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,tfds,stream
.venv/bin/python -m pytest -q -n 2 "$@"
