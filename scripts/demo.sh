#!/usr/bin/env bash
# Set everything up, then generate one image through the Ikomia workflow API.
# Usage: scripts/demo.sh [--tiny] [demo.py options]   (--tiny: offline, on tiny random-weight models)
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/setup.sh requirements-demo.txt)
exec "$python" scripts/demo.py "$@"
