"""A run from a worker thread, as Ikomia Studio starts one, uses OpenMP as a run from the main thread does."""

import ctypes
import os
import sys
import threading

import pytest

from helpers import diffusers_reference, max_difference
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings

ikomia_workflow = pytest.importorskip("ikomia.dataprocess.workflow")


def gnu_openmp() -> ctypes.CDLL:
    """The libgomp that torch and ikomia's OpenCV share in this process."""
    return ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)


@pytest.mark.skipif(sys.platform != "linux", reason="GNU OpenMP (libgomp) is torch's OpenMP on Linux")
def test_a_run_from_a_worker_thread_turns_on_openmp_dynamic_teams_for_the_run_only(tiny_strings):
    workflow = ikomia_workflow.Workflow()
    task = workflow.add_task(name="infer_kandinsky_2_2", public_hub=False)
    task.set_parameters({**tiny_strings, "cuda": "False"})
    module = sys.modules[type(task).__module__]
    runtime = gnu_openmp()
    real_generate = module.generate
    seen: dict[str, int] = {}

    def generate(*args, **kwargs):
        seen["during the run"] = runtime.omp_get_dynamic()
        return real_generate(*args, **kwargs)

    def run() -> None:
        seen["before"] = runtime.omp_get_dynamic()
        workflow.run()
        seen["after"] = runtime.omp_get_dynamic()

    module.generate = generate
    try:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    finally:
        module.generate = real_generate
    # ikomia's OpenCV turned it on in the thread that loaded it; libgomp keeps it per thread.
    assert runtime.omp_get_dynamic() == 1
    assert seen == {"before": 0, "during the run": 1, "after": 0}
    settings = Settings.from_strings(task.get_parameters())
    assert max_difference(task.get_output(0).get_image(), diffusers_reference(settings, settings.seed)[0]) <= 1
