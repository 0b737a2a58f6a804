#!/usr/bin/env bash
# Set everything up, then generate images through the Ikomia workflow API.
# Usage: scripts/demo.sh [--tiny] [demo.py options]   (--tiny: offline, on tiny random-weight models)
# Runs from the caller's folder: a relative --output is written there.
set -euo pipefail
plugin=$(dirname "$0")/..
python=$(bash "$plugin/scripts/setup.sh" requirements-demo.txt)
exec "$python" "$plugin/scripts/demo.py" "$@"
