"""What the CPU benchmarks share: an offline Ikomia root holding the plugin, the task on tiny random-weight
models in a workflow, diffusers' own combined pipeline over the same models, and a summary of timings."""

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from ikomia_home import PLUGIN_NAME, use_ikomia_home  # noqa: E402


def add_run_arguments(parser: argparse.ArgumentParser, *, size: int, steps: int) -> None:
    """The run's options: ``--height`` and ``--width`` (pixels, ``size`` by default), ``--steps`` and
    ``--prior-steps`` (``steps`` by default), and ``--output``, a JSON file for the report."""
    parser.add_argument("--height", type=int, default=size)
    parser.add_argument("--width", type=int, default=size)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--prior-steps", type=int, default=steps)
    parser.add_argument("--output", type=Path, help="also write the report to this JSON file")


def ikomia_root(prefix: str) -> Path:
    """A new temporary folder whose ``home`` is the Ikomia root, with this checkout as its plugin, set up before
    anything imports ikomia; returns the folder."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    use_ikomia_home(folder / "home")
    sys.path.insert(0, str(folder / "home" / "Ikomia" / "Plugins" / "Python"))
    return folder


@dataclass
class TinyTask:
    """The task in its workflow with ``parameters`` set, and diffusers' ``KandinskyV22CombinedPipeline`` over
    the same tiny models."""

    parameters: dict[str, str]
    workflow: object
    task: object
    combined: object


def tiny_task(folder: Path, arguments: argparse.Namespace) -> TinyTask:
    """Build the tiny repos in ``folder`` (made by ``ikomia_root``) and the task of a run at ``arguments``' size
    and steps, seed 42, on the CPU."""
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline
    from ikomia.dataprocess.workflow import Workflow

    from infer_kandinsky_2_2.kandinsky22_devkit.reference import combine
    from infer_kandinsky_2_2.kandinsky22_devkit.tiny import build_tiny_repos

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
    return TinyTask(parameters, workflow, task, combined)


def summary(seconds: list[float]) -> dict:
    """The median, min and max in seconds, and the count, of ``seconds``."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs": len(seconds)}


def write_report(report: dict, output: Path | None) -> None:
    """Print ``report`` as JSON, and write it to ``output`` too when given."""
    print(json.dumps(report, indent=2))
    if output:
        output.write_text(json.dumps(report, indent=2), encoding="utf-8")
