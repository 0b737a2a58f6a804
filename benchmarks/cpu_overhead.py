"""The task's overhead on the CPU: a warm run through the Ikomia API against diffusers' own call.

Tiny models, one process, the two measured in pairs with the same arguments and seed, each first in
every other pair:
python benchmarks/cpu_overhead.py [--repeats 9 --height 256 --width 256 --steps 25 --prior-steps 25]
(run it with the environment that scripts/test.sh sets up, which has ikomia).

Then the fixed cost of a run, what the task adds to diffusers' call where the models' arithmetic is
least: the same pairs at the smallest run (64 x 64, 2 prior steps, 1 decoder step), reported as the
median difference of many pairs in milliseconds; and the progress report the task sends Ikomia after
every step, timed alone.

Last, the time per picture of the default sampler (DDPM) at 100 decoder steps against DPM++ 2M at 30 and
25: what choosing a sampler that is run at fewer steps saves.
"""

import argparse
import statistics
import sys
import time
import timeit
from collections.abc import Callable

from tiny_task import add_run_arguments, ikomia_root, summary, tiny_task, write_report

SMALLEST_RUN = {"height": "64", "width": "64", "num_inference_steps": "1", "prior_num_inference_steps": "2"}


def in_pairs(first: Callable[[], object], second: Callable[[], object], pairs: int) -> tuple[list, list]:
    """Seconds of ``pairs`` runs of each, taken in pairs, each first in every other pair so that neither
    gains from its place in the pair."""
    times: tuple[list, list] = ([], [])
    for pair in range(pairs):
        order = ((times[0], first), (times[1], second))
        for seconds, run in order if pair % 2 == 0 else reversed(order):
            started = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--fixed-pairs", type=int, default=41, help="pairs of the smallest run (2 or more)")
    add_run_arguments(parser, size=256, steps=25)
    arguments = parser.parse_args()

    folder = ikomia_root("cpu_overhead_")
    import torch

    from infer_kandinsky_2_2.kandinsky22_devkit.reference import combined_arguments
    from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings

    tiny = tiny_task(folder, arguments)
    parameters, workflow, task, combined = tiny.parameters, tiny.workflow, tiny.task, tiny.combined
    main_run_shown = {key: value for key, value in parameters.items() if "model" not in key}

    def use(changes: dict[str, str]) -> Callable[[], object]:
        """Set ``changes`` on the task, and return diffusers' call with the same arguments; run each once
        untimed."""
        parameters.update(changes)
        task.set_parameters(parameters)
        settings = Settings.from_strings(parameters)

        def run_diffusers() -> object:
            return combined(**combined_arguments(settings))

        workflow.run()
        run_diffusers()
        return run_diffusers

    run_diffusers = use({})
    cache = sys.modules[type(task).__module__].cache_for("cpu")
    loads = dict(cache.load_counts)
    plugin, reference = in_pairs(workflow.run, run_diffusers, arguments.repeats)

    main_run = {key: parameters[key] for key in SMALLEST_RUN}
    run_smallest = use(SMALLEST_RUN)
    plugin_smallest, reference_smallest = in_pairs(workflow.run, run_smallest, arguments.fixed_pairs)
    differences_ms = [1000 * (mine - theirs) for mine, theirs in zip(plugin_smallest, reference_smallest, strict=True)]
    quartiles = statistics.quantiles(differences_ms, n=4)
    fixed_ms = statistics.median(differences_ms)
    # What each further denoising step adds: the task reports its progress to Ikomia after every step.
    progress_report_us = timeit.timeit(task.emit_step_progress, number=20000) / 20000 * 1e6

    use(main_run | {"num_images": str(arguments.num_images)})
    batch = []
    for _ in range(max(3, arguments.repeats // 3)):
        started = time.perf_counter()
        workflow.run()
        batch.append((time.perf_counter() - started) / arguments.num_images)
    # The decoder's samplers at the steps they are run at (DDPM's default 100; DPM++ 2M's usual 25 to 30).
    samplers = {}
    for name, steps in (("default", 100), ("DPM++ 2M", 30), ("DPM++ 2M", 25)):
        use(main_run | {"num_images": "1", "scheduler": name, "num_inference_steps": str(steps)})
        seconds = []
        for _ in range(max(3, arguments.repeats // 3)):
            started = time.perf_counter()
            workflow.run()
            seconds.append(time.perf_counter() - started)
        samplers[f"{name} at {steps} steps"] = summary(seconds)
    report = {
        "run": main_run_shown,
        "torch_threads": torch.get_num_threads(),
        "plugin_through_ikomia": summary(plugin),
        "diffusers_combined": summary(reference),
        "ratio_of_medians": statistics.median(plugin) / statistics.median(reference),
        "median_ratio_of_pairs": statistics.median(
            mine / theirs for mine, theirs in zip(plugin, reference, strict=True)
        ),
        "loads_after_the_first_run": {role: cache.load_counts[role] - loads.get(role, 0) for role in cache.load_counts},
        "fixed_cost": {
            "run": SMALLEST_RUN,
            "pairs": arguments.fixed_pairs,
            "plugin_through_ikomia": summary(plugin_smallest),
            "diffusers_combined": summary(reference_smallest),
            "median_difference_ms": fixed_ms,
            "quartiles_of_differences_ms": [quartiles[0], quartiles[2]],
            "as_a_ratio_of_the_main_run": 1 + fixed_ms / 1000 / statistics.median(reference),
            "progress_report_per_step_us": progress_report_us,
        },
        "batch_per_image": {**summary(batch), "num_images": arguments.num_images},
        "batch_speedup_per_image": statistics.median(plugin) / statistics.median(batch),
        "samplers_per_picture": samplers,
    }
    write_report(report, arguments.output)


if __name__ == "__main__":
    main()
