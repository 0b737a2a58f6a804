#!/usr/bin/env bash
# Set everything up, then lint and run the whole test suite (offline, on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/setup.sh requirements-test.txt)
"$python" -m ruff check .
"$python" -m ruff format --check .
QT_QPA_PLATFORM=offscreen exec "$python" -m pytest "$@"
