#!/usr/bin/env bash
# Set everything up, link this checkout into the user's Ikomia plugins folder (scripts/link_plugin.py: so that
# Ikomia finds the plugin from Python and Studio too), then generate images through the Ikomia workflow API.
# Usage: scripts/demo.sh [--tiny] [demo.py options]   (--tiny: offline, on tiny random-weight models)
# Runs from the caller's folder: a relative --output is written there. Where another copy of the plugin is in the
# user's plugins folder, it is kept (the link step says so) and the demo runs all the same, from a private folder.
set -euo pipefail
plugin=$(dirname "$0")/..
python=$(bash "$plugin/scripts/setup.sh" requirements-demo.txt)
"$python" "$plugin/scripts/link_plugin.py" || [[ $? == 2 ]]
exec "$python" "$plugin/scripts/demo.py" "$@"
