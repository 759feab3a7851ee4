#!/usr/bin/env bash
# Installs RadVault into .venv and runs the main job on the embedded default
# (no server): a local vault in ./radvault-demo with the shipped sample images.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/radvault demo "$@"
