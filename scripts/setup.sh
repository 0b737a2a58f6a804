#!/usr/bin/env bash
# Create or update the virtual environment of the demo and the tests, then print its python on stdout (all
# else goes to stderr).
# Usage: scripts/setup.sh REQUIREMENTS_FILE   (a path from the plugin folder, e.g. requirements-test.txt)
# The environment lives outside the plugin folder (Ikomia HUB zips that folder when it publishes):
# $KANDINSKY_VENV, by default ~/.venvs/infer_kandinsky_2_2. $KANDINSKY_CONSTRAINTS, when set, names a pip
# constraints file applied as well (CI pins the lowest supported versions with .ci/lowest-constraints.txt).
# A torch already in the environment is kept, whatever its build: pip may not replace it. Only an environment
# without torch gets torch==2.13.0, the release CI runs.
# A call with the same requirement files, constraints and set-up script as the last successful one for this
# REQUIREMENTS_FILE does not run pip: a stamp in the environment holds their hash.
set -euo pipefail
venv=$(realpath -m "${KANDINSKY_VENV:-$HOME/.venvs/infer_kandinsky_2_2}")
constraints=${KANDINSKY_CONSTRAINTS:+$(realpath "$KANDINSKY_CONSTRAINTS")}
cd "$(dirname "$0")/.."
requirements=$1
python="$venv/bin/python"
say() { echo "setup: $*" >&2; }

# Every requirement file, as they include one another (-r).
digest=$(cat scripts/setup.sh "$requirements" requirements*.txt ${constraints:+"$constraints"} | sha256sum | cut -d " " -f 1)
stamp="$venv/.infer_kandinsky_2_2-setup-$(basename "$requirements").sha256"
if [[ -x "$python" && -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
  echo "$python"
  exit 0
fi

if [[ ! -x "$python" ]]; then
  say "creating the environment $venv"
  python3 -m venv "$venv" >&2
fi
pip=("$python" -m pip install --disable-pip-version-check --progress-bar off)
torch_version=$("$python" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || true)
if [[ -z "$torch_version" ]]; then
  # Pinned: an unpinned torch would pull a newer, several-GB build where a CPU one is at hand.
  say "installing torch==2.13.0 (the environment has none)"
  "${pip[@]}" torch==2.13.0 >&2
  torch_version=$("$python" -c 'from importlib.metadata import version; print(version("torch"))')
else
  say "keeping torch $torch_version, found in the environment"
fi
keep_torch="$venv/.infer_kandinsky_2_2-setup-torch.txt"
echo "torch==$torch_version" >"$keep_torch"
say "installing $requirements${constraints:+ within $constraints} (the first time: a few minutes)"
if ! "${pip[@]}" -r "$requirements" ${constraints:+-c "$constraints"} -c "$keep_torch" >&2; then
  say "pip failed (above). torch $torch_version was kept: if requirements.txt's torch range excludes it, install a" \
    "torch in that range into $venv yourself, then run this again."
  exit 1
fi
echo "$digest" >"$stamp"
echo "$python"
