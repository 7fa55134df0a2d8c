#!/usr/bin/env bash
# Creates .venv with fat_jax's requirements and, where apt is available, installs the
# Fashion-MNIST data set from Debian (dataset-fashion-mnist → /usr/share/datasets/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
if [ "${FAT_JAX_SKIP_DATA:-0}" != 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
    && command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
