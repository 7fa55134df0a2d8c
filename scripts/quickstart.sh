#!/usr/bin/env bash
# Set up, then train FGSM and N-FGSM in the CPU-scale CO setting of configs/quickstart.py
# and print their per-epoch tables. Usage: bash scripts/quickstart.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-runs/quickstart}"
for method in fgsm n_fgsm; do
  .venv/bin/python launch.py --config="configs/quickstart.py:$method" --workdir="$out/$method"
done
.venv/bin/python -m fat_jax.summary "$out/fgsm" "$out/n_fgsm"
