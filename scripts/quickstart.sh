#!/usr/bin/env bash
# Set up, then train FGSM and N-FGSM in the CPU-scale CO setting of configs/quickstart.py,
# print their per-epoch tables and write their comparison report (accuracy curves of both runs
# with the CO onset marked). Usage: bash scripts/quickstart.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-runs/quickstart}"
for method in fgsm n_fgsm; do
  .venv/bin/fat-jax-train --config="configs/quickstart.py:$method" --workdir="$out/$method"
done
.venv/bin/python -m fat_jax.reports.summary "$out/fgsm" "$out/n_fgsm"
report=$(.venv/bin/fat-jax-report "$out/fgsm" "$out/n_fgsm" --out="$out/report")
echo
echo "Comparison report: $report (figure: $(dirname "$report")/comparison.png)"
