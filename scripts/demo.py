"""Generate images with infer_kandinsky_2_2 through the Ikomia workflow API.

Real Kandinsky 2.2 weights by default (downloaded once into the Hugging Face cache); ``--tiny``
runs offline on tiny random-weight models instead, which checks the whole path in seconds but
paints noise (at 512 x 256 with 25 decoder steps, unless set otherwise), each mode with its own tiny
decoder. ``--input`` gives the mode's input images, in the order of its image inputs (inpaint: the photo, then
the mask). Every picture of the run is written: one to ``--output``, several (``--set num_images=3``) to
``--output``'s name with ``_1``, ``_2``... before its suffix. Run it through ``scripts/demo.sh``, which sets up
the environment first.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ikomia_home import CHECKOUT, PLUGIN_NAME, use_ikomia_home

DEMO_HOME = Path.home() / ".cache" / PLUGIN_NAME / "ikomia-home"
# Noise needs no 768 x 768 pixels: the tiny run stays at a few seconds on a laptop CPU.
# 512 wide: outpaint's default margins (128 on either side) then leave the image 256 x 256.
TINY_DEFAULTS = {"height": "256", "width": "512", "num_inference_steps": "25"}


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
    return parser.parse_args()


def picture_paths(output: Path, count: int) -> list[Path]:
    """Where the ``count`` pictures of a run go: ``output`` for one; for several, ``output`` with ``_1``,
    ``_2``... added to its stem (``out.png`` gives ``out_1.png``, ``out_2.png``...)."""
    if count == 1:
        return [output]
    return [output.with_stem(f"{output.stem}_{index}") for index in range(1, count + 1)]


def feed_inputs(workflow: object, task: object, paths: list[Path]) -> None:
    """Give ``task`` the images at ``paths``, one per image input in order (a drawing input is skipped): the first
    through the workflow's input, to which input 0 is connected, so that Ikomia runs the task; exit with a
    message naming the mode's inputs when their number differs."""
    from ikomia import core
    from PIL import Image

    indices = [
        index
        for index in range(task.get_input_count())
        if task.get_input(index).data_type != core.IODataType.INPUT_GRAPHICS
    ]
    if len(paths) != len(indices):
        names = ", ".join(f"{task.get_input(index).name!r}" for index in indices) or "none"
        sys.exit(f"this mode's image inputs are: {names}; --input was given {len(paths)} time(s).")
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


def main() -> None:
    arguments = parse_arguments()
    sys.path.insert(0, str(plugins_folder()))
    from ikomia.dataprocess.workflow import Workflow
    from PIL import Image

    parameters = dict(item.split("=", 1) for item in arguments.set)
    with tempfile.TemporaryDirectory(prefix="tiny_kandinsky_") as tiny_folder:
        if arguments.tiny:
            from infer_kandinsky_2_2.kandinsky22_devkit.tiny import build_tiny_repos
            from infer_kandinsky_2_2.kandinsky22_engine.modes import MODES

            repos = build_tiny_repos(tiny_folder)
            mode = MODES[parameters.get("mode", "text2img")]
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
        feed_inputs(workflow, task, arguments.input)
        workflow.run()

    metadata = task.get_output(1).data
    # Output 0 holds picture 1, output 1 the metadata, outputs 2 and on pictures 2 and on.
    outputs = [0, *range(2, metadata["num_images"] + 1)]
    print(json.dumps(metadata, indent=2))
    for index, path in zip(outputs, picture_paths(arguments.output, len(outputs)), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(task.get_output(index).get_image()).save(path)
        print(f"Image written to {path.resolve()}")


if __name__ == "__main__":
    main()
