"""The benchmark scripts keep running: the GPU benchmark end to end on the CPU with tiny models, run once for
the tests that read its report; the script for the next lent GPU; the CPU overhead benchmark."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from report import render  # noqa: E402

# Tiny models, small pictures, few steps: every case of the GPU benchmark runs on the CPU in seconds.
TINY_GPU_BENCHMARK = ["--device", "cpu", "--size", "tiny", "--height", "64", "--width", "64", "--steps", "2"]
TINY_GPU_BENCHMARK += ["--prior-steps", "2", "--repeats", "1"]
# One thread for the GPU benchmark's run, whose report is checked for its cases and shape, not its speed. The script
# does not load ikomia's OpenCV, so OpenMP's teams do not follow the load (see openmp_teams_as_on_the_main_thread in
# infer_kandinsky_2_2_process.py): torch's threads spin at every barrier of every tiny layer while another process
# keeps a core busy. On 2 cores with a load average near 2, its run took 226 s with 2 threads and 24 s with one.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def gpu_benchmark(tmp_path_factory) -> dict:
    """The report of one run of the GPU benchmark with every case that runs on the CPU, a batch of 2."""
    folder = tmp_path_factory.mktemp("gpu_benchmark")
    command = [sys.executable, str(BENCHMARKS / "gpu_benchmark.py"), *TINY_GPU_BENCHMARK, "--num-images", "2"]
    subprocess.run([*command, "--output", str(folder)], check=True, capture_output=True, timeout=600, env=ONE_THREAD)
    return json.loads((folder / "gpu_benchmark.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_the_gpu_benchmark_runs_every_case_the_cpu_can_run_without_error(gpu_benchmark):
    cases = gpu_benchmark["cases"]
    levers = ["bfloat16", "channels_last", "classic_attention"]
    samplers = ["dpmpp_2m_25", "dpmpp_2m_30"]
    graphs = ["gpu_cuda_graphs", "cuda_graphs_switches", "gpu_batch_cuda_graphs"]
    assert list(cases) == [
        "diffusers",
        "gpu",
        "gpu_batch",
        *graphs,
        "visits",
        "inpaint_prepare_mask",
        "inpaint_kept_latents",
        *samplers,
        "gpu_mix",
        "switching_gpu",
        *levers,
        "compile_switches",
    ]
    assert not [name for name, case in cases.items() if "error" in case or "skipped" in case]
    assert cases["diffusers"]["runs"] == 1 and cases["gpu_batch"]["num_images"] == 2
    switching = cases["switching_gpu"]
    assert switching["runs"] == 2 and switching["text2img_median_s"] > 0 and switching["inpaint_median_s"] > 0
    assert set(cases["compile_switches"]) == {"text2img", "batch_2", "guidance_4", "img2img"}
    assert set(cases["cuda_graphs_switches"]) == {"text2img", "batch_2", "guidance_4", "img2img"}
    # diffusers' group offloading needs an accelerator: on the CPU, Parking and .to() only.
    assert set(cases["visits"]) == {
        f"{model}_{way}" for model in ("text_encoder", "decoder_back") for way in ("parking", "to")
    }


@pytest.mark.slow
def test_the_gpu_benchmarks_engine_picture_is_diffusers_own(gpu_benchmark):
    # The same models and seed: the engine's picture is diffusers' own, to the level.
    assert gpu_benchmark["cases"]["gpu"]["max_abs_diff_vs_diffusers"] == 0


@pytest.mark.slow
def test_the_gpu_benchmark_splits_the_decoder_into_unet_steps_and_decode_and_the_report_shows_it(gpu_benchmark):
    gpu = gpu_benchmark["cases"]["gpu"]
    assert gpu["place_s"] > 0
    stages = gpu["stages_median_s"]
    assert set(stages) == {"load", "prior", "decoder", "total", "movq_decode"}
    assert 0 < stages["movq_decode"] < stages["decoder"]
    rows = [line.strip("| ").split(" | ") for line in render(gpu_benchmark).splitlines()]
    stage_rows = {cells[0]: cells[1:] for cells in rows if len(cells) == 5}
    prior, decoder, unet_steps, decode = map(float, stage_rows["engine, `memory_mode` gpu"])
    assert (prior, decoder, decode) == tuple(round(stages[key], 3) for key in ("prior", "decoder", "movq_decode"))
    assert abs(unet_steps + decode - decoder) < 0.0015  # three figures, each rounded to the millisecond


@pytest.mark.slow
def test_the_gpu_benchmark_counts_the_flop_floor_and_each_cases_speedup(gpu_benchmark):
    flops = gpu_benchmark["flops_tera"]
    assert set(flops) == {"text_encoder", "prior", "unet", "movq"} and all(value > 0 for value in flops.values())
    assert gpu_benchmark["flop_floor_s"] > 0 and gpu_benchmark["cases"]["gpu"]["speedup_over_diffusers"] > 0


@pytest.mark.slow
def test_the_script_for_the_next_lent_gpu_asks_for_its_cases_and_logs_the_report(tmp_path):
    # With a budget of 0 s every case the script asks for is recorded as skipped, not run: the cases themselves
    # run in the shared run above.
    options = [*TINY_GPU_BENCHMARK, "--budget", "0"]
    environment = {**os.environ, "PYTHON": sys.executable}
    command = ["bash", str(BENCHMARKS / "on_lent_gpu.sh"), str(tmp_path), *options]
    subprocess.run(command, check=True, capture_output=True, timeout=600, env=environment)
    cases = json.loads((tmp_path / "gpu_benchmark.json").read_text(encoding="utf-8"))["cases"]
    # Only the cases asked for, beside the diffusers baseline; on the CPU the CUDA-only ones are left out.
    graphs = ["gpu_cuda_graphs", "cuda_graphs_switches", "gpu_batch_cuda_graphs"]
    asked = ["gpu", *graphs, "visits", "inpaint_prepare_mask", "inpaint_kept_latents", "dpmpp_2m_25", "dpmpp_2m_30"]
    asked += ["gpu_mix"]
    asked += ["switching_gpu", "classic_attention"]
    assert list(cases) == ["diffusers", *asked]
    assert all(case == {"skipped": "the time budget was spent"} for case in cases.values())
    assert '"switching_gpu": {' in (tmp_path / "log").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_cpu_overhead_benchmark_times_the_task_against_diffusers_with_nothing_loaded_again(tmp_path):
    small = ["--repeats", "2", "--height", "64", "--width", "64", "--steps", "2", "--prior-steps", "2"]
    report_path = tmp_path / "cpu_overhead.json"
    command = [sys.executable, str(BENCHMARKS / "cpu_overhead.py"), *small, "--num-images", "2", "--fixed-pairs", "3"]
    subprocess.run([*command, "--output", str(report_path)], check=True, capture_output=True, timeout=600)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["plugin_through_ikomia"]["runs"] == report["diffusers_combined"]["runs"] == 2
    assert report["run"]["num_inference_steps"] == "2"
    # Changing the sampler loads nothing again either.
    assert report["loads_after_the_first_run"] == {"prior": 0, "decoder": 0}
    assert report["ratio_of_medians"] > 0 and report["median_ratio_of_pairs"] > 0
    samplers = report["samplers_per_picture"]
    assert list(samplers) == ["default at 100 steps", "DPM++ 2M at 30 steps", "DPM++ 2M at 25 steps"]
    assert samplers["default at 100 steps"]["median_s"] > samplers["DPM++ 2M at 25 steps"]["median_s"]
    fixed = report["fixed_cost"]
    assert fixed["run"]["num_inference_steps"] == "1"
    assert fixed["plugin_through_ikomia"]["runs"] == fixed["diffusers_combined"]["runs"] == fixed["pairs"] == 3
    low, high = fixed["quartiles_of_differences_ms"]
    assert low <= fixed["median_difference_ms"] <= high
    assert fixed["progress_report_per_step_us"] > 0
    assert report["batch_per_image"]["num_images"] == 2


@pytest.mark.slow
def test_the_thread_benchmark_times_every_case_from_the_main_thread_and_from_worker_threads(tmp_path):
    small = ["--rounds", "2", "--height", "64", "--width", "64", "--steps", "2", "--prior-steps", "2"]
    report_path = tmp_path / "thread_overhead.json"
    command = [sys.executable, str(BENCHMARKS / "thread_overhead.py"), *small, "--busy", "1"]
    environment = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    subprocess.run(
        [*command, "--output", str(report_path)], check=True, capture_output=True, timeout=600, env=environment
    )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["busy_processes"] == 1 and report["run"]["num_inference_steps"] == "2"
    assert set(report["cases"]) == {
        "plugin, main thread",
        "plugin, threading.Thread",
        "plugin, QThread",
        "diffusers, main thread",
        "diffusers, threading.Thread",
    }
    for name, case in report["cases"].items():
        assert case["runs"] == 2 and case["min_s"] <= case["median_s"] <= case["max_s"]
        assert case["over_main_thread"] == 1.0 if name.endswith("main thread") else case["over_main_thread"] > 0
    assert report["openmp"]["dynamic_main_thread"] == 1 and report["openmp"]["dynamic_new_thread"] == 0


def test_the_gpu_figures_in_benchmarks_md_are_those_of_the_committed_reports():
    reports = sorted((BENCHMARKS / "results").glob("*.json"))
    rendered = "\n\n".join(render(json.loads(path.read_text(encoding="utf-8"))) for path in reports)
    text = (BENCHMARKS.parent / "BENCHMARKS.md").read_text(encoding="utf-8")
    block = text.split("<!-- gpu-results:start -->\n", 1)[1].split("\n<!-- gpu-results:end -->", 1)[0]
    assert reports and block == rendered, "run: python benchmarks/report.py benchmarks/results/*.json"
