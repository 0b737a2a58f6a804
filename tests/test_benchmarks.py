"""The benchmark scripts keep running: the GPU benchmark end to end on the CPU with tiny models."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_gpu_benchmark_runs_end_to_end_on_the_cpu_with_tiny_models(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "gpu_benchmark.py"), "--device", "cpu", "--size", "tiny"]
    command += ["--height", "64", "--width", "64", "--steps", "2", "--prior-steps", "2", "--repeats", "1"]
    command += ["--num-images", "2", "--output", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text(encoding="utf-8"))
    assert set(report["engine"]) == {"gpu", "gpu_batch"}
    assert report["engine"]["gpu_batch"]["num_images"] == 2
    assert report["diffusers"]["runs"] == 1
    assert set(report["levers"]) == {"bfloat16", "channels_last"}
    flops = report["flops_tera"]
    assert set(flops) == {"text_encoder", "prior", "unet", "movq"} and all(value > 0 for value in flops.values())
    assert report["flop_floor_s"] > 0 and report["speedup_over_diffusers"] > 0
