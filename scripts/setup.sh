#!/usr/bin/env bash
# Create or update the virtual environment of the demo and the tests, then print its python.
# Usage: scripts/setup.sh REQUIREMENTS_FILE
# The environment lives outside the plugin folder (Ikomia HUB zips that folder when it publishes):
# $KANDINSKY_VENV, by default ~/.venvs/infer_kandinsky_2_2.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${KANDINSKY_VENV:-$HOME/.venvs/infer_kandinsky_2_2}"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" >&2
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first, pinned: an unpinned torch would pull a newer, several-GB build when a CPU one is at hand.
"${pip[@]}" torch==2.13.0 >&2
"${pip[@]}" -r "$1" >&2
echo "$venv/bin/python"
