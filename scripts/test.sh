#!/usr/bin/env bash
# Set everything up, then lint and run the whole test suite (offline, on the CPU), one pytest worker per core
# (pytest-xdist's -n auto; -n 0 runs the tests in this process).
# Usage: scripts/test.sh [pytest options]
set -euo pipefail
python=$(bash "$(dirname "$0")/setup.sh" requirements-test.txt)
cd "$(dirname "$0")/.."
"$python" -m ruff check .
"$python" -m ruff format --check .
QT_QPA_PLATFORM=offscreen exec "$python" -m pytest -n auto "$@"
