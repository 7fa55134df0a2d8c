#!/usr/bin/env bash
# CI: install fat_jax as a user would, into a fresh venv (`pip install .`, not editable, from a
# clean copy of the working tree), then run the console commands from another folder on the
# quickstart recipe (tiny overrides): fat-jax-train finds configs/quickstart.py in the package,
# fat-jax-report writes the run's report. Also checks that TFDS is not installed by default.
# Needs PyPI (pip's cache is reused) and Fashion-MNIST (scripts/setup.sh installs it).
# Usage: bash scripts/check_install.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

mkdir "$tmp/src"
(cd "$root" && git ls-files -co --exclude-standard -z | tar -c --null -T - | tar -x -C "$tmp/src")
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q "$tmp/src"
rm -rf "$tmp/src"  # nothing below may read the source tree
echo "check_install: installed in $((SECONDS - start)) s"

cd "$tmp"
if "$tmp/venv/bin/python" -c 'import tensorflow_datasets' 2>/dev/null; then
  echo "check_install: tensorflow-datasets was installed without the [tfds] extra" >&2
  exit 1
fi
"$tmp/venv/bin/fat-jax-train" --config=configs/quickstart.py:n_fgsm --workdir="$tmp/run" \
  --config.num_epochs=1 --config.data.n_train=512 --config.batch_size=128 \
  --config.eval.n=64 --config.eval.monitor_n=64 --config.eval.pgd_steps=2 \
  --config.eval.pgd_restarts=1 --config.eval.check_pgd_steps=2 --config.progress=False
test -f "$tmp/run/results.json"
report=$("$tmp/venv/bin/fat-jax-report" "$tmp/run" --out="$tmp/report")
test -f "$report" && test -f "$tmp/report/accuracy.png"
if [ -f "$root/fat_jax/formats/convert.py" ] || [ -d "$root/fat_jax/convert" ]; then
  "$tmp/venv/bin/fat-jax-convert" --help >/dev/null
fi
echo "check_install: OK in $((SECONDS - start)) s ($report)"
