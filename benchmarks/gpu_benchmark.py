"""Time and measure the engine against plain diffusers on full-size Kandinsky 2.2 architectures.

Builds the published models' architectures with random weights directly on the device (speed and
memory depend on the sizes, not the weights), then, on one card in one run: plain diffusers
(``KandinskyV22CombinedPipeline``, every model on the device), the engine in each memory mode, a
batch, and levers not in the engine yet (bfloat16, channels_last), each timed over several warm runs
with its peak memory; the FLOP floor comes from
``benchmarks/flops.py`` and the card's matrix-product speed measured here. Needs no Ikomia.

GPU:  python benchmarks/gpu_benchmark.py --output results/
CPU check of the whole script on tiny models:
      python benchmarks/gpu_benchmark.py --device cpu --size tiny --height 256 --width 256 --output results/
"""

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import diffusers
from flops import count_flops

from kandinsky22_engine.generation import choose_runtime, generate
from kandinsky22_engine.models import ModelCache
from kandinsky22_engine.parameters import Settings
from kandinsky22_engine.reference import combine
from kandinsky22_engine.tiny import FULL, TINY, build_decoder_pipeline, build_prior_pipeline, write_tokenizer

PROMPT = "portrait of a young women, blue eyes, cinematic"
NEGATIVE = "low quality, bad quality"


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(function: Callable[[], object], device: str, repeats: int) -> dict:
    """Median and spread of ``repeats`` warm runs (after one warm-up), and the peak memory of the device."""
    function()
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    result = {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs": repeats}
    if device == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def matmul_tflops(device: str, dtype: torch.dtype) -> float:
    """The device's speed on large matrix products in ``dtype``, measured."""
    size = 8192 if device == "cuda" else 1024
    first, second = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    result = timed(lambda: first @ second, device, 10)
    return 2 * size**3 / result["min_s"] / 1e12


def build(architecture, device: str, dtype: torch.dtype, tokenizer):
    """A fresh prior and decoder with random weights, built on the device in ``dtype``."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return build_prior_pipeline(architecture, tokenizer), build_decoder_pipeline(architecture)
    finally:
        torch.set_default_dtype(default_dtype)


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure_diffusers(pipelines: tuple, settings: Settings, repeats: int) -> dict:
    """Plain diffusers: the combined pipeline over the same models, every model on the device."""
    prior, decoder = pipelines
    combined = combine(prior, decoder)
    return timed(
        lambda: combined(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.num_inference_steps,
            prior_num_inference_steps=settings.prior_num_inference_steps,
            guidance_scale=settings.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(settings.seed),
        ),
        decoder.device.type,
        repeats,
    )


def measure_engine(pipelines: tuple, settings: Settings, repeats: int, batch: int = 0, name: str = "") -> dict:
    """The engine in ``settings.memory_mode`` on the given models; with ``batch``, a batch of that many too."""
    runtime = choose_runtime(settings)
    cache = ModelCache()
    prior, decoder = pipelines
    cache.adopt("prior", runtime.key(settings.prior_model_name), prior)
    cache.adopt("decoder", runtime.key(settings.model_name), decoder)
    name = name or settings.memory_mode
    results = {name: timed(lambda: generate(settings, cache=cache), runtime.device, repeats)}
    if batch:
        batched = Settings(**{**settings.__dict__, "num_images": batch})
        result = timed(lambda: generate(batched, cache=cache), runtime.device, repeats)
        results[f"{settings.memory_mode}_batch"] = {
            **result,
            "num_images": batch,
            "per_image_s": result["median_s"] / batch,
        }
    cache.release()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=4, help="batch size of the throughput measurement")
    parser.add_argument("--output", type=Path, required=True)
    arguments = parser.parse_args()
    device, architecture = arguments.device, FULL if arguments.size == "full" else TINY
    dtype = torch.float16 if device == "cuda" else torch.float32
    arguments.output.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    settings = Settings(
        model_name="benchmark/decoder",
        prior_model_name="benchmark/prior",
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        prior_num_inference_steps=arguments.prior_steps,
        num_inference_steps=arguments.steps,
        height=arguments.height,
        width=arguments.width,
        seed=42,
        cuda=device == "cuda",
    )
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "size": arguments.size,
        "dtype": str(dtype).removeprefix("torch."),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "run": {
            key: getattr(settings, key)
            for key in ("height", "width", "num_inference_steps", "prior_num_inference_steps")
        },
    }

    report["diffusers"] = measure_diffusers(build(architecture, device, dtype, tokenizer), settings, arguments.repeats)
    free(device)
    report["engine"] = {}
    for memory_mode in ("gpu", "model_offload", "sequential_offload") if device == "cuda" else ("gpu",):
        pipelines = build(architecture, device, dtype, tokenizer)
        mode_settings = Settings(**{**settings.__dict__, "memory_mode": memory_mode})
        batch = arguments.num_images if memory_mode == "gpu" else 0
        report["engine"].update(measure_engine(pipelines, mode_settings, arguments.repeats, batch))
        free(device)
    # Levers not in the engine yet: measured here, on the gpu memory mode, to decide whether they pay.
    report["levers"] = {}
    for lever, lever_dtype in (("bfloat16", torch.bfloat16), ("channels_last", dtype)):
        prior, decoder = build(architecture, device, lever_dtype, tokenizer)
        if lever == "channels_last":
            decoder.unet.to(memory_format=torch.channels_last)
            decoder.movq.to(memory_format=torch.channels_last)
        report["levers"].update(measure_engine((prior, decoder), settings, arguments.repeats, name=lever))
        del prior, decoder
        free(device)

    flops = count_flops(
        architecture,
        settings.height,
        settings.width,
        settings.num_inference_steps,
        settings.prior_num_inference_steps,
        settings.guidance_scale,
    )
    peak = matmul_tflops(device, dtype)
    report["flops_tera"] = {name: value / 1e12 for name, value in flops.items()}
    report["matmul_tflops_measured"] = peak
    report["flop_floor_s"] = sum(flops.values()) / 1e12 / peak
    fastest = report["engine"]["gpu"]["median_s"]
    report["speedup_over_diffusers"] = report["diffusers"]["median_s"] / fastest
    report["times_flop_floor"] = fastest / report["flop_floor_s"]
    (arguments.output / "gpu_benchmark.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
