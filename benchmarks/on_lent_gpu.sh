#!/usr/bin/env bash
# The GPU cases still to be measured (BENCHMARKS.md, "On a lent GPU machine without network"), as run on a lent GPU machine: no network;
# torch, transformers and accelerate installed; the diffusers and importlib_metadata wheels carried in .whl/.
# Usage: bash benchmarks/on_lent_gpu.sh OUTPUT_FOLDER [gpu_benchmark.py options, e.g. --device cpu --size tiny]
# $PYTHON, by default python3, runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
out="${1:?usage: bash benchmarks/on_lent_gpu.sh OUTPUT_FOLDER [options]}"
shift
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$python" -m pip install --quiet --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
if command -v nvidia-smi > /dev/null; then
  nvidia-smi > "$out/nvidia-smi.txt"
fi
# The cases run in the script's order; the budget stops new ones after 330 s, the timeout the whole at 450 s.
PYTHONUNBUFFERED=1 timeout 450 "$python" benchmarks/gpu_benchmark.py --output "$out" --budget 330 "$@" \
  --only gpu gpu_cuda_graphs cuda_graphs_switches prior_offload_cuda_graphs gpu_batch_cuda_graphs visits inpaint_prepare_mask inpaint_kept_latents dpmpp_2m_25 dpmpp_2m_30 gpu_mix prior_offload switching_prior_offload switching_gpu prior_offload_compile_reduce-overhead \
  model_offload classic_attention compile_prior_and_unet 2>&1 | tee "$out/log"
