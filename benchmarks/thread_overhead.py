"""A run started from a worker thread, as Ikomia Studio starts one, against the same run from the main thread.

Tiny models, one process, ikomia loaded before torch as in Studio:
python benchmarks/thread_overhead.py [--rounds 7 --height 128 --width 128 --steps 10 --prior-steps 10 --busy 0]
(run it with the environment that scripts/test.sh sets up, which has ikomia and PyQt6; with
QT_QPA_PLATFORM=offscreen where there is no display).

Each round runs every case once, in an order turned by one place at each round, so that every case
takes every place and all see the same noise: the task through the Ikomia API (``wf.run()``) from the
main thread, from a new ``threading.Thread`` and from a new ``QThread`` (Studio runs tasks in QThreads),
then diffusers' own ``KandinskyV22CombinedPipeline`` with the same arguments from the main thread and
from a new ``threading.Thread``, which the task's OpenMP setting does not reach. ``--busy N`` keeps N
more processes spinning on the CPU during the timed rounds, to see the cores busy with other work.

The report gives each case's median, min and max in seconds, its median over the main thread's median
for the same call, the load averages before and after the timed rounds, and how OpenMP is set up: the
library loaded, and whether dynamic team sizes are on in the main thread and in a new thread.
"""

import argparse
import ctypes
import importlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tiny_task import add_run_arguments, ikomia_root, summary, tiny_task, write_report

# Each stops itself after ``seconds`` should this script be killed before it stops them.
SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def in_thread(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` run in a new ``threading.Thread``, the caller waiting for it; its error is raised here."""

    def run() -> None:
        errors: list[BaseException] = []

        def body() -> None:
            try:
                call()
            except BaseException as error:  # raised again in the calling thread
                errors.append(error)

        worker = threading.Thread(target=body)
        worker.start()
        worker.join()
        if errors:
            raise errors[0]

    return run


def in_qthread(call: Callable[[], object]) -> Callable[[], object] | None:
    """``call`` run in a new ``QThread``, the caller waiting for it; None where PyQt6 cannot be imported."""
    try:
        from PyQt6.QtCore import QCoreApplication, QThread
    except ImportError:
        return None

    class Worker(QThread):
        def __init__(self) -> None:
            super().__init__()
            self.errors: list[BaseException] = []

        def run(self) -> None:
            try:
                call()
            except BaseException as error:  # raised again in the calling thread
                self.errors.append(error)

    application = QCoreApplication.instance() or QCoreApplication([])

    def run() -> None:
        worker = Worker()
        worker.start()
        worker.wait()
        if worker.errors:
            raise worker.errors[0]

    run.application = application  # kept alive while the case is
    return run


def openmp_setup() -> dict:
    """The OpenMP library loaded and its dynamic team sizes (0 off, 1 on) in this thread and in a new one."""
    maps = Path(f"/proc/{os.getpid()}/maps")
    libraries = sorted({line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line})
    if not libraries:
        return {"libraries": []}
    runtime = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    in_new_thread: list[int] = []
    worker = threading.Thread(target=lambda: in_new_thread.append(runtime.omp_get_dynamic()))
    worker.start()
    worker.join()
    return {
        "libraries": libraries,
        "dynamic_main_thread": runtime.omp_get_dynamic(),
        "dynamic_new_thread": in_new_thread[0],
    }


def rounds_of(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of every case in each of ``rounds`` rounds, the order turned by one place at each round."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--busy", type=int, default=0, help="processes kept spinning during the timed rounds")
    parser.add_argument("--busy-limit", type=float, default=1800.0, help="seconds after which they stop anyway")
    add_run_arguments(parser, size=128, steps=10)
    arguments = parser.parse_args()

    folder = ikomia_root("thread_overhead_")
    # Studio has ikomia's libraries (OpenCV, and the libgomp it brings) loaded before any plugin loads torch.
    importlib.import_module("ikomia.dataprocess.workflow")
    import torch

    from infer_kandinsky_2_2.kandinsky22_devkit.reference import combined_arguments
    from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings

    tiny = tiny_task(folder, arguments)
    parameters, workflow, combined = tiny.parameters, tiny.workflow, tiny.combined
    settings = Settings.from_strings(parameters)

    def run_diffusers() -> object:
        return combined(**combined_arguments(settings))

    cases = {
        "plugin, main thread": workflow.run,
        "plugin, threading.Thread": in_thread(workflow.run),
        "plugin, QThread": in_qthread(workflow.run),
        "diffusers, main thread": run_diffusers,
        "diffusers, threading.Thread": in_thread(run_diffusers),
    }
    cases = {name: case for name, case in cases.items() if case is not None}
    for case in cases.values():
        case()
    load_before = os.getloadavg()
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPIN, str(arguments.busy_limit)]) for _ in range(arguments.busy)
    ]
    try:
        times = rounds_of(cases, arguments.rounds)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    load_after = os.getloadavg()
    main_median = {call: statistics.median(times[f"{call}, main thread"]) for call in ("plugin", "diffusers")}
    report = {
        "run": {key: value for key, value in parameters.items() if "model" not in key},
        "rounds": arguments.rounds,
        "busy_processes": arguments.busy,
        "cpus": os.cpu_count(),
        "load_average_1_5_15_min": {"before": load_before, "after": load_after},
        "torch_threads": torch.get_num_threads(),
        "openmp": openmp_setup(),
        "cases": {
            name: {
                **summary(seconds),
                "over_main_thread": statistics.median(seconds) / main_median[name.split(",")[0]],
            }
            for name, seconds in times.items()
        },
    }
    write_report(report, arguments.output)


if __name__ == "__main__":
    main()
