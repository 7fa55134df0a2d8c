#!/usr/bin/env bash
# Set up, then train FGSM and N-FGSM side by side in the CPU-scale CO setting (configs/quickstart.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python launch.py --config=configs/quickstart.py --workdir="${1:-runs/quickstart}"
