#!/usr/bin/env bash
# Creates .venv and installs fat_jax into it the way a user would (pip install -e '.[EXTRAS]'),
# then, where apt is available, the Fashion-MNIST data set from Debian (dataset-fashion-mnist →
# /usr/share/datasets/fashion-mnist). Usage: bash scripts/setup.sh [EXTRAS], e.g. test,tfds.
# Once done for a pyproject.toml and these extras it installs nothing again, so the commands
# that call it work offline after the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/fat_jax-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) [${extras}]"
if ! grep -qxF "$want" "$stamp" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  echo "$want" >> "$stamp"
fi
if [ "${FAT_JAX_SKIP_DATA:-0}" != 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
    && command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
