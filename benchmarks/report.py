"""Render a ``gpu_benchmark.py`` report as the Markdown tables of BENCHMARKS.md.

python benchmarks/report.py benchmarks/results/h200_2026-11-27.json [more reports...]

BENCHMARKS.md quotes this output between its ``gpu-results`` markers, and a test keeps the two equal,
so every GPU figure there comes from a committed report.
"""

import argparse
import json
from pathlib import Path

CASES = {
    "diffusers": "plain diffusers: `KandinskyV22CombinedPipeline`, every model on the GPU",
    "gpu": "engine, `memory_mode` gpu",
    "gpu_batch": "engine, gpu, a batch (`num_images`), time per picture",
    "gpu_mix": "engine, gpu, mix of 2 images and the prompt (the image encoder copied in for the prior stage)",
    "prior_offload": "engine, `memory_mode` prior_offload",
    "gpu_cuda_graphs": "engine, gpu, `cuda_graphs` on",
    "gpu_batch_cuda_graphs": "engine, gpu, `cuda_graphs` on, a batch",
    "prior_offload_cuda_graphs": "engine, prior_offload, `cuda_graphs` on",
    "prior_offload_compile_reduce-overhead": "engine, prior_offload, `compile_unet` reduce-overhead",
    "switching_prior_offload": "engine, prior_offload, text2img and inpaint in turn (one decoder on the GPU), per run",
    "switching_gpu": "engine, gpu, text2img and inpaint in turn (both decoders on the GPU), per run",
    "dpmpp_2m_25": "engine, gpu, `scheduler` DPM++ 2M at 25 decoder steps",
    "dpmpp_2m_30": "engine, gpu, `scheduler` DPM++ 2M at 30 decoder steps",
    "model_offload": "engine, `memory_mode` model_offload",
    "inpaint_prepare_mask": "diffusers' inpainting `prepare_mask` alone, once per inpaint run (a host loop per pixel)",
    "inpaint_kept_latents": "the engine's `kept_latents`, the same mask in tensor operations, once per inpaint run",
    "sequential_offload": "engine, `memory_mode` sequential_offload (1 timed run)",
    "bfloat16": "lever not kept: the models in bfloat16",
    "channels_last": "lever not kept: UNet and MoVQ in channels_last",
    "cudnn_benchmark": "lever not kept: `torch.backends.cudnn.benchmark`",
    "classic_attention": "lever: UNet and prior attention in plain matrix products instead of SDPA",
    "model_offload_text_encoder_first": "lever: model_offload with the prior's order text_encoder->prior",
    "compile_default": "engine, gpu, `compile_unet` default",
    "compile_reduce-overhead": "engine, gpu, `compile_unet` reduce-overhead (CUDA graphs)",
    "compile_prior_and_unet": "lever: gpu, the UNet and the prior transformer compiled with reduce-overhead",
}
SWITCHES = {
    "text2img": "text2img, one picture (compiles)",
    "batch_4": "then `num_images` 4 (a new batch size)",
    "guidance_4": "then `guidance_scale` 4 (the UNet's batch doubles)",
    "img2img": "then img2img (same sizes)",
}

# The cases of one cache through runs that change the UNet's inputs: the case, the table's title, and what the
# first run does.
SWITCHING_CASES = (
    ("compile_switches", "one compiled cache (`compile_unet` reduce-overhead)", "(compiles)"),
    ("cuda_graphs_switches", "one cache with `cuda_graphs` on", "(captures)"),
)
VISITS = {
    "text_encoder_parking": "the prior's text encoder, one forward: `Parking` (pinned, nothing copied back)",
    "text_encoder_to": "the prior's text encoder, one forward: `.to()` there and back",
    "text_encoder_group_offload_streams": (
        "the prior's text encoder, one forward: diffusers' group offloading with streams"
    ),
    "decoder_back_parking": "a decoder (UNet and MoVQ) brought back and set aside: `Parking`",
    "decoder_back_to": "a decoder (UNet and MoVQ) brought back and set aside: `.to()`",
}


def render(report: dict) -> str:
    """The report's header line and tables, in Markdown."""
    versions = report["versions"]
    run = report["run"]
    matmul = ", ".join(f"{dtype} {value:.0f}" for dtype, value in report["matmul_tflops_measured"].items())
    lines = [
        f"{report['device']}, {report['size']}-size models in {report['dtype']}; torch {versions['torch']} "
        f"(CUDA {versions['cuda']}), diffusers {versions['diffusers']}, transformers {versions['transformers']}, "
        f"Python {versions['python']}. {run['height']} x {run['width']}, {run['prior_num_inference_steps']} prior "
        f"and {run['num_inference_steps']} decoder steps, guidance {run['guidance_scale']}. Matrix products "
        f"measured: {matmul} TFLOP/s; FLOP floor {report['flop_floor_s']:.3f} s."
        + "".join(
            f" Host to GPU, {kind}: {speed:.1f} GB/s." for kind, speed in report.get("host_to_device_gbps", {}).items()
        ),
        "",
    ]
    cases = report["cases"]
    timed = {name: case for name, case in cases.items() if "median_s" in case}
    if timed:
        lines += [
            "| case | median s | min s | max s | first run s | placing s | peak GB | x diffusers | x floor "
            "| diff max / mean |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, case in timed.items():
            per_image = case.get("num_images", 1)
            replayed = f" (replayed: {', '.join(case['graphed']) or 'nothing'})" if "graphed" in case else ""
            cells = [
                f"{CASES.get(name, name)}{f' of {per_image}' if per_image > 1 else ''}{replayed}",
                f"{case.get('per_image_s', case['median_s']):.3f}",
                f"{case['min_s'] / per_image:.3f}",
                f"{case['max_s'] / per_image:.3f}",
                f"{case['first_run_s']:.1f}",
                f"{case['place_s']:.1f}" if "place_s" in case else "",
                f"{case['peak_memory_gb']:.2f}" if "peak_memory_gb" in case else "",
                f"{case['speedup_over_diffusers']:.2f}" if "speedup_over_diffusers" in case else "",
                f"{case['times_flop_floor']:.1f}" if "times_flop_floor" in case else "",
                f"{case['max_abs_diff_vs_diffusers']} / {case['mean_abs_diff_vs_diffusers']:.2f}"
                if "max_abs_diff_vs_diffusers" in case
                else "",
            ]
            lines.append(f"| {' | '.join(cells)} |")
    lines += stage_table(report, timed)
    for case, title, first in SWITCHING_CASES:
        switches = cases.get(case, {})
        if "text2img" in switches:
            lines += ["", f"| {title}, run after run | first run s | next run s |", "|---|---|---|"]
            lines += [
                f"| {SWITCHES.get(name, name).replace('(compiles)', first)} | {step['first_run_s']:.1f} "
                f"| {step['warm_run_s']:.3f} |"
                for name, step in switches.items()
            ]
    visits = {name: visit for name, visit in cases.get("visits", {}).items() if isinstance(visit, dict)}
    if visits:
        lines += [
            "",
            "| a model kept in CPU memory, visiting the GPU | median s | min s | max s | peak GB | resident GB |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {VISITS.get(name, name)} | {visit['median_s']:.3f} | {visit['min_s']:.3f} | {visit['max_s']:.3f} "
            f"| {visit.get('peak_memory_gb', 0):.2f} | {visit['resident_gb']:.2f} |"
            for name, visit in visits.items()
        ]
    return "\n".join(lines)


def stage_table(report: dict, timed: dict) -> list[str]:
    """Where the engine's time went in the one-picture text2img cases, stage by stage, beside each stage's
    own FLOP floor: which stage is furthest from the card's limit. The decoder splits into the UNet's steps
    and the MoVQ decode where the report timed the decode (not in the offload modes, whose decode also
    moves weights)."""
    key = "stages_median_s" if any("stages_median_s" in case for case in timed.values()) else "stages_last_run_s"
    staged = {
        name: case[key]
        for name, case in timed.items()
        if key in case and case.get("mode", "text2img") == "text2img" and case.get("num_images", 1) == 1
    }
    if not staged:
        return []
    flops, speed = report["flops_tera"], report["matmul_tflops_measured"][report["dtype"]]
    floors = {
        "prior": (flops["text_encoder"] + flops["prior"]) / speed,
        "unet": flops["unet"] / speed,
        "movq": flops["movq"] / speed,
    }
    which = "median of the timed runs" if key == "stages_median_s" else "last timed run"
    lines = [
        "",
        f"| where the time went, one text2img picture, {which} | prior stage s (floor {floors['prior']:.3f}) "
        f"| decoder stage s | its UNet steps s (floor {floors['unet']:.3f}) "
        f"| its MoVQ decode s (floor {floors['movq']:.3f}) |",
        "|---|---|---|---|---|",
    ]
    for name, stages in staged.items():
        decode = stages.get("movq_decode")
        split = ["", ""] if decode is None else [f"{stages['decoder'] - decode:.3f}", f"{decode:.3f}"]
        cells = [CASES.get(name, name), f"{stages['prior']:.3f}", f"{stages['decoder']:.3f}", *split]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+")
    arguments = parser.parse_args()
    print("\n\n".join(render(json.loads(path.read_text(encoding="utf-8"))) for path in arguments.reports))


if __name__ == "__main__":
    main()
