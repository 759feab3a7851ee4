#!/usr/bin/env bash
# Installs everything the tests need and runs the whole test suite.
# This is the README's test command; .ci/run calls it unchanged.
#  - Python packages into .venv (RadVault with its test extras; torch is the CPU build);
#  - Debian packages for the external peers the tests talk to (DCMTK, Orthanc),
#    by tools/install_test_services.sh, only when missing.
# PostgreSQL (127.0.0.1:5432, database test) and Redis (127.0.0.1:6379) are used
# when running; their tests skip with a reason when they are not, except in CI
# (CI=true), where any skip of a test not marked `optional` fails (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
bash tools/install_test_services.sh
if [ "${CI:-}" = "true" ]; then
    # In CI a missing peer must fail loudly rather than let its tests skip.
    for tool in storescu echoscu findscu Orthanc; do
        command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; exit 1; }
    done
fi
.venv/bin/ruff check src tests benchmarks tools
.venv/bin/python -m pytest "$@"
