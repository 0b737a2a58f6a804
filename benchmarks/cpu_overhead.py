"""The task's overhead on the CPU: a warm run through the Ikomia API against diffusers' own call.

Tiny models, one process, the two measured in pairs with the same arguments and seed, each first in
every other pair:
python benchmarks/cpu_overhead.py [--repeats 9 --height 256 --width 256 --steps 25 --prior-steps 25]
(run it with the environment that scripts/test.sh sets up, which has ikomia).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from ikomia_home import PLUGIN_NAME, use_ikomia_home  # noqa: E402


def summary(seconds: list[float]) -> dict:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs": len(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--output", type=Path, help="also write the report to this JSON file")
    arguments = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="cpu_overhead_"))
    use_ikomia_home(folder / "home")
    sys.path.insert(0, str(folder / "home" / "Ikomia" / "Plugins" / "Python"))
    import torch
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline
    from ikomia.dataprocess.workflow import Workflow

    from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
    from infer_kandinsky_2_2.kandinsky22_engine.reference import combine, combined_arguments
    from infer_kandinsky_2_2.kandinsky22_engine.tiny import build_tiny_repos

    repos = build_tiny_repos(folder / "models")
    parameters = {
        "model_name": str(repos.decoder),
        "prior_model_name": str(repos.prior),
        "height": str(arguments.height),
        "width": str(arguments.width),
        "num_inference_steps": str(arguments.steps),
        "prior_num_inference_steps": str(arguments.prior_steps),
        "seed": "42",
        "cuda": "False",
    }
    workflow = Workflow()
    task = workflow.add_task(name=PLUGIN_NAME, public_hub=False)
    task.set_parameters(parameters)

    combined = combine(
        KandinskyV22PriorPipeline.from_pretrained(repos.prior), KandinskyV22Pipeline.from_pretrained(repos.decoder)
    )

    settings = Settings.from_strings(parameters)

    def run_diffusers(num_images: int = 1) -> None:
        combined(**combined_arguments(replace(settings, num_images=num_images)))

    workflow.run()
    run_diffusers()
    cache = sys.modules[type(task).__module__].MODEL_CACHE
    loads = dict(cache.load_counts)
    plugin, reference = [], []
    for repeat in range(arguments.repeats):
        # Each goes first every other time, so that neither gains from its place in the pair.
        pair = ((plugin, workflow.run), (reference, run_diffusers))
        for seconds, run in pair if repeat % 2 == 0 else reversed(pair):
            started = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - started)
    task.set_parameters({"num_images": str(arguments.num_images)})
    workflow.run()
    batch = []
    for _ in range(max(3, arguments.repeats // 3)):
        started = time.perf_counter()
        workflow.run()
        batch.append((time.perf_counter() - started) / arguments.num_images)
    report = {
        "run": {key: value for key, value in parameters.items() if key not in ("model_name", "prior_model_name")},
        "torch_threads": torch.get_num_threads(),
        "plugin_through_ikomia": summary(plugin),
        "diffusers_combined": summary(reference),
        "ratio_of_medians": statistics.median(plugin) / statistics.median(reference),
        "median_ratio_of_pairs": statistics.median(
            mine / theirs for mine, theirs in zip(plugin, reference, strict=True)
        ),
        "loads_during_timed_runs": {role: cache.load_counts[role] - loads.get(role, 0) for role in cache.load_counts},
        "batch_per_image": {**summary(batch), "num_images": arguments.num_images},
        "batch_speedup_per_image": statistics.median(plugin) / statistics.median(batch),
    }
    print(json.dumps(report, indent=2))
    if arguments.output:
        arguments.output.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
