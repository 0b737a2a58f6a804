"""Generate images with infer_kandinsky_2_2 through the Ikomia workflow API.

Real Kandinsky 2.2 weights by default (downloaded once into the Hugging Face cache); ``--tiny``
runs offline on tiny random-weight models instead, which checks the whole path in seconds but
paints noise (at 512 x 256 with 25 decoder steps, unless set otherwise), each mode with its own tiny
decoder. ``--input`` gives the mode's input images, in the order of its image inputs (inpaint: the photo, then
the mask). Every picture of the run is written: one to ``--output``, several (``--set num_images=3``) to
``--output``'s name with ``_1``, ``_2``... before its suffix. Run it through ``scripts/demo.sh``, which sets up
the environment first. A failure prints the task's own message, not Ikomia's traceback (``--traceback`` shows it).
"""

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from ikomia_home import CHECKOUT, PLUGIN_NAME, use_ikomia_home

DEMO_HOME = Path.home() / ".cache" / PLUGIN_NAME / "ikomia-home"
# Noise needs no 768 x 768 pixels: the tiny run stays at a few seconds on a laptop CPU.
# 512 wide: outpaint's default margins (128 on either side) then leave the image 256 x 256.
TINY_DEFAULTS = {"height": "256", "width": "512", "num_inference_steps": "25"}
# Ikomia raises a task's error again as a RuntimeError whose text holds the class, the message and the traceback:
# "<class 'RuntimeError'>: <class '...kandinsky22_engine.errors.ModelLoadError'>: MESSAGE:   File ... (Code 18)".
WRAPPED_TASK_ERROR = re.compile(r"kandinsky22_engine\.errors\.(\w+)'>: (.*?)(?::   File \"| \(Code -?\d+\)|\Z)", re.S)
TINY_HINT = "To try the demo with no hub, add --tiny: tiny random-weight models, made on the spot, paint noise offline."


class DemoError(Exception):
    """A failure the demo explains itself: the message says what was wrong and what is accepted."""


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="run offline on tiny random-weight models")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("kandinsky_2_2_demo.png"),
        help="PNG file to write, from the current folder; several pictures get _1, _2... before the suffix",
    )
    parser.add_argument(
        "--input",
        metavar="PATH",
        type=Path,
        action="append",
        default=[],
        help="an input image of the mode, from the current folder, in the order of its image inputs (repeatable)",
    )
    parser.add_argument(
        "--set",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="set a task parameter, e.g. --set seed=42 --set prompt='a red cat' (repeatable)",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on a failure, show the full traceback (Ikomia's, around the task's) rather than the task's message",
    )
    return parser.parse_args()


def parse_sets(items: list[str]) -> dict[str, str]:
    """The ``--set`` options as task parameters: ``NAME=VALUE`` each, the value everything after the first ``=``.

    Raises ``DemoError`` naming an option with no ``=`` or no name, and the accepted form.
    """
    parameters = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise DemoError(f"--set {item}: accepted: NAME=VALUE, e.g. --set seed=42 or --set prompt='a red cat'.")
        parameters[name.strip()] = value
    return parameters


def check_sets(parameters: dict[str, str]) -> str:
    """Check the ``--set`` parameters as the task will (``Settings.from_strings``) and return the mode they run.

    Raises ``DemoError`` with a line per refused option: an unknown name with the closest known ones, a value with
    what its parameter accepts. Needs the plugin's folder on ``sys.path``.
    """
    from infer_kandinsky_2_2.kandinsky22_engine.errors import SettingsError
    from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings

    try:
        return Settings.from_strings(parameters).mode
    except SettingsError as error:
        raise DemoError("\n".join(f"--set {line}" for line in str(error).splitlines())) from error


def explain(error: Exception) -> str:
    """What to print for ``error``, raised by the task or by Ikomia around it: the task's own message, taken out
    of Ikomia's wrapping (``WRAPPED_TASK_ERROR``), followed by ``TINY_HINT`` when the hub could not be reached;
    for any other error, its type and first line, and how to see its traceback."""
    if type(error).__module__.endswith("kandinsky22_engine.errors"):
        kind, message = type(error).__name__, str(error)
    elif match := WRAPPED_TASK_ERROR.search(str(error)):
        kind, message = match.group(1), match.group(2).strip()
    else:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{PLUGIN_NAME}: {type(error).__name__}: {first} (--traceback shows where it came from)"
    return f"{PLUGIN_NAME}: {message}" + (f" {TINY_HINT}" if kind == "HubUnreachable" else "")


def picture_paths(output: Path, count: int) -> list[Path]:
    """Where the ``count`` pictures of a run go: ``output`` for one; for several, ``output`` with ``_1``,
    ``_2``... added to its stem (``out.png`` gives ``out_1.png``, ``out_2.png``...)."""
    if count == 1:
        return [output]
    return [output.with_stem(f"{output.stem}_{index}") for index in range(1, count + 1)]


def feed_inputs(workflow: object, task: object, mode_name: str, paths: list[Path]) -> None:
    """Give ``task`` the images at ``paths``, one per image input in order (a drawing input is skipped): the first
    through the workflow's input, to which input 0 is connected, so that Ikomia runs the task; exit with a
    message naming the mode, its inputs and what to give when their number differs."""
    from ikomia import core
    from PIL import Image

    indices = [
        index
        for index in range(task.get_input_count())
        if task.get_input(index).data_type != core.IODataType.INPUT_GRAPHICS
    ]
    if len(paths) != len(indices):
        names = ", ".join(f"{task.get_input(index).name!r}" for index in indices)
        wanted = (
            f"{mode_name} takes {len(indices)} image input(s), {names}: give --input PATH once for each, in that order"
            if indices
            else f"{mode_name} takes no image input: leave --input out"
        )
        sys.exit(f"{wanted}; --input was given {len(paths)} time(s).")
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    if arrays:
        workflow.connect_tasks(workflow.root(), task, [(0, indices[0])])
        workflow.set_image_input(arrays[0], index=0)
    for index, array in zip(indices[1:], arrays[1:], strict=True):
        task.get_input(index).set_image(array)


def plugins_folder() -> Path:
    """The Ikomia plugins folder to run from: the user's when the checkout is installed there."""
    if CHECKOUT.name == PLUGIN_NAME and CHECKOUT.parent.name == "Python" and CHECKOUT.parent.parent.name == "Plugins":
        return CHECKOUT.parent
    use_ikomia_home(DEMO_HOME)
    return DEMO_HOME / "Ikomia" / "Plugins" / "Python"


def generate(arguments: argparse.Namespace) -> None:
    """Run the task once as ``arguments`` say and write its pictures. Raises ``DemoError`` for a bad ``--set``;
    the task's errors come as Ikomia raises them."""
    from ikomia.dataprocess.workflow import Workflow
    from PIL import Image

    parameters = parse_sets(arguments.set)
    mode_name = check_sets(parameters)
    with tempfile.TemporaryDirectory(prefix="tiny_kandinsky_") as tiny_folder:
        if arguments.tiny:
            from infer_kandinsky_2_2.kandinsky22_devkit.tiny import build_tiny_repos
            from infer_kandinsky_2_2.kandinsky22_engine.modes import MODES

            repos = build_tiny_repos(tiny_folder)
            mode = MODES[mode_name]
            parameters = {
                # The tiny repos are named by their decoder's cache role.
                "model_name": str(getattr(repos, mode.decoder.role)),
                "prior_model_name": str(repos.prior),
                **TINY_DEFAULTS,
                **parameters,
            }
        workflow = Workflow()
        task = workflow.add_task(name=PLUGIN_NAME, public_hub=False)
        task.set_parameters(parameters)
        feed_inputs(workflow, task, mode_name, arguments.input)
        workflow.run()

    metadata = task.get_output(1).data
    # Output 0 holds picture 1, output 1 the metadata, outputs 2 and on pictures 2 and on.
    outputs = [0, *range(2, metadata["num_images"] + 1)]
    print(json.dumps(metadata, indent=2))
    for index, path in zip(outputs, picture_paths(arguments.output, len(outputs)), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(task.get_output(index).get_image()).save(path)
        print(f"Image written to {path.resolve()}")


def main() -> None:
    arguments = parse_arguments()
    sys.path.insert(0, str(plugins_folder()))
    try:
        generate(arguments)
    except DemoError as error:
        sys.exit(str(error))
    except Exception as error:
        if arguments.traceback:
            raise
        sys.exit(explain(error))


if __name__ == "__main__":
    main()
