"""Rewrite the generated blocks of the README and of the pages under docs/ (``DOCUMENTS`` says which block lives
in which file): the Python example, the mode table, the parameter tables, the samplers, the memory modes, and what
each mode downloads.

The Python example, which sets every parameter to its default, and the parameter tables (the README's with each
summary, docs/parameters.md's with each whole help) come from the single parameter definition. The downloads come
from the published repos' file list (``kandinsky22_devkit/published_configs/files.json``) and the rule the task
fetches by (``hub.needed_files``, over the components each mode's pipelines load): a table of bytes per mode in the
README, and in docs/downloads.md the ``hf download`` commands that fetch exactly those files for offline use.

Usage: python scripts/update_readme.py (a test fails while any of these files differs from it).
"""

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from diffusers import KandinskyV22PriorPipeline  # noqa: E402

from kandinsky22_devkit.published import file_sizes  # noqa: E402
from kandinsky22_engine.constants import DEFAULT_PRIOR, PINNED_REVISIONS  # noqa: E402
from kandinsky22_engine.hub import needed_files  # noqa: E402
from kandinsky22_engine.memory import markdown_table as memory_table  # noqa: E402
from kandinsky22_engine.models import IMAGE_ENCODER, pipeline_components  # noqa: E402
from kandinsky22_engine.modes import DRAWING_INPUT, MIX_INPUTS, MODES, input_names  # noqa: E402
from kandinsky22_engine.parameters import PARAMETERS, Parameter, markdown_table, summary_table  # noqa: E402
from kandinsky22_engine.schedulers import DEFAULT_SCHEDULER, SAMPLERS  # noqa: E402

README = CHECKOUT / "README.md"
DOCS = CHECKOUT / "docs"


@dataclass(frozen=True)
class Part:
    """Files of one published repo that some modes fetch, with their sizes (None: not in the file list)."""

    name: str
    repo: str
    revision: str
    sizes: dict[str, int | None]

    def known_bytes(self) -> int:
        return sum(size for size in self.sizes.values() if size is not None)

    def unknown(self) -> list[str]:
        return [path for path, size in self.sizes.items() if size is None]

    def command(self) -> str:
        revision = "" if self.revision == "main" else f" --revision {self.revision}"
        return f"hf download {self.repo}{revision} \\\n  " + " ".join(self.sizes)


def _part(name: str, repo: str, components: list[str], skip_index: bool = False) -> Part:
    revision = PINNED_REVISIONS.get(repo, "main")
    listed = file_sizes()[repo][revision]
    paths = [path for path in needed_files(listed, components) if not (skip_index and path == "model_index.json")]
    return Part(name, repo, revision, {path: listed[path] for path in paths})


def parts() -> dict[str, Part]:
    """What the modes fetch, by part: the prior, its image encoder, and each decoder (by the modes using it)."""
    prior = [name for name in pipeline_components(KandinskyV22PriorPipeline) if name != IMAGE_ENCODER]
    result = {
        "prior": _part("the prior: every mode", DEFAULT_PRIOR, prior),
        IMAGE_ENCODER: _part(
            "its CLIP image encoder: mix, or an empty negative prompt", DEFAULT_PRIOR, [IMAGE_ENCODER], skip_index=True
        ),
    }
    for mode in MODES.values():
        decoder = mode.decoder
        if decoder.default_model not in result:
            users = ", ".join(name for name, each in MODES.items() if each.decoder == decoder)
            components = pipeline_components(decoder.pipeline_class)
            result[decoder.default_model] = _part(f"the decoder of {users}", decoder.default_model, components)
    return result


def mode_parts(mode: str, empty_negative_prompt: bool = False) -> list[str]:
    """The keys of ``parts()`` that a first run of ``mode`` fetches."""
    encoder = [IMAGE_ENCODER] if MODES[mode].embedded_inputs or empty_negative_prompt else []
    return ["prior", *encoder, MODES[mode].decoder.default_model]


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def downloads_block() -> str:
    """The README's table of what a first run of each mode downloads."""
    every = parts()
    rows = [
        "| mode | a first run downloads (negative prompt set) | with an empty negative prompt |",
        "|---|---|---|",
    ]
    for mode in MODES:
        sizes = [sum(every[key].known_bytes() for key in mode_parts(mode, empty)) for empty in (False, True)]
        rows.append(f"| {mode} | {_gigabytes(sizes[0])} | {_gigabytes(sizes[1])} |")
    return "\n".join(rows)


def download_commands() -> str:
    """docs/downloads.md's note on the README's sizes, and the ``hf download`` commands that fetch ahead, part by
    part, what the modes load."""
    every = parts()
    unknown = sorted({path for part in every.values() for path in part.unknown()})
    lines = [
        f"The sizes are those of the repos' file lists, without {' and '.join(unknown)}, which the list gives no "
        "size for; the inpainting UNet's is computed from its architecture (`scripts/safetensors_size.py`). A later "
        "run of another mode fetches only what is new to it: its own decoder, or the image encoder.",
        "",
        "```bash",
    ]
    for part in every.values():
        lines += [f"# {part.name} ({_gigabytes(part.known_bytes())})", part.command()]
    lines += ["export HF_HUB_OFFLINE=1  # from now on, never reach for the hub", "```"]
    return "\n".join(lines)


def example_value(parameter: Parameter) -> tuple[str, str]:
    """The string the Python example sets ``parameter`` to, and the comment beside it ("" for none).

    The value is the default; a default that depends on the machine (``cuda``) is shown as it is where it
    matters, so that the README is the same on every machine.
    """
    notes = []
    if parameter.default_text is None:
        value = parameter.to_string(parameter.default)
    elif parameter.type is bool:
        value = parameter.to_string(True)
        notes.append(f"default: {parameter.default_text}")
    else:
        raise ValueError(f"{parameter.name}: no example value for a default of {parameter.default_text!r}")
    if parameter.modes:
        notes.append(", ".join(parameter.modes) + " only")
    if parameter.cuda_only:
        notes.append("CUDA only")
    return value, "; ".join(notes)


def python_example() -> str:
    """The README's example of the Python API: a text2img run that sets every parameter to its default."""
    lines = [
        "```python",
        "from ikomia.dataprocess.workflow import Workflow",
        "",
        "wf = Workflow()",
        'algo = wf.add_task(name="infer_kandinsky_2_2")  # add public_hub=False to use a local copy only',
        "algo.set_parameters(",
        "    {",
    ]
    for parameter in PARAMETERS:
        value, note = example_value(parameter)
        lines.append(f'        "{parameter.name}": {json.dumps(value)},' + (f"  # {note}" if note else ""))
    lines += [
        "    }",
        ")",
        "wf.init_long_process()  # optional: load the models now rather than at the first run",
        "wf.run()  # text2img has no input; the other modes need theirs connected (below)",
        "",
        "image = algo.get_output(0).get_image()  # numpy array, height x width x 3, RGB, uint8",
        "metadata = algo.get_output(1).data  # dict: the seed used, device, models, seconds per stage, ...",
        'print(metadata["seed"], metadata["seconds"])',
        "```",
    ]
    return "\n".join(lines)


def _inputs_cell(inputs: tuple[str, ...]) -> str:
    """A mode's inputs as the mode table lists them: by index, the drawing marked as graphics."""
    cells = []
    for index, name in enumerate(inputs):
        if name == MIX_INPUTS:
            last = "`mix_images` - 1" if index == 0 else f"{index} + `mix_images` - 1"
            cells.append(f"{index} to {last}: images")
        else:
            cells.append(f"{index}: {name}" + (" (graphics)" if name == DRAWING_INPUT else ""))
    return ", ".join(cells) or "none"


def modes_table(decoders: bool = True) -> str:
    """The table of modes, from the mode table: what each does, its inputs, its decoder when model_name is left at
    its default (shared between the modes that use the same; docs/inputs.md's table only, ``decoders``), and the
    parameters only it reads."""
    decoder_column = " decoder when `model_name` is left at its default |" if decoders else ""
    rows = [
        f"| mode | what it does | inputs |{decoder_column} its own parameters |",
        "|---|---|---|" + ("---|" if decoders else "") + "---|",
    ]
    first_user: dict[str, str] = {}
    for name, mode in MODES.items():
        repo = mode.decoder.default_model
        decoder = f"the {first_user[repo]} decoder, shared" if repo in first_user else f"`{repo}`"
        first_user.setdefault(repo, name)
        own = ", ".join(f"`{parameter}`" for parameter in mode.parameters) or "none"
        inputs = _inputs_cell(mode.inputs)
        if "depth_model" in mode.parameters:
            estimating = input_names(name, depth_model="set")
            inputs += f"; with `depth_model` set, {_inputs_cell(estimating)} (the photo)"
        decoder_cell = f" {decoder} |" if decoders else ""
        rows.append(f"| `{name}` | {mode.help} | {inputs} |{decoder_cell} {own} |")
    return "\n".join(rows)


def samplers_table() -> str:
    """The README's table of the decoder's samplers, from ``schedulers.SAMPLERS``: each name, the diffusers
    scheduler and options it stands for, and what it is for."""
    rows = [
        "| `scheduler` | diffusers scheduler (from the repo's config, trailing spacing) | what it is |",
        "|---|---|---|",
        f"| `{DEFAULT_SCHEDULER}` | the repo's own `DDPMScheduler`, as it is | stochastic; 100 steps by default |",
    ]
    for name, sampler in SAMPLERS.items():
        options = ", ".join(f"{key}={value!r}" for key, value in sampler.options.items())
        scheduler = f"`{sampler.scheduler_class.__name__}`" + (f" ({options})" if options else "")
        rows.append(f"| `{name}` | {scheduler} | {sampler.help} |")
    return "\n".join(rows)


# Which generated blocks live in which file.
DOCUMENTS: dict[Path, dict[str, Callable[[], str]]] = {
    README: {
        "python-example": python_example,
        "modes": lambda: modes_table(decoders=False),
        "parameters": summary_table,
        "downloads": downloads_block,
    },
    DOCS / "inputs.md": {"modes": modes_table},
    DOCS / "parameters.md": {"parameters": markdown_table},
    DOCS / "samplers.md": {"samplers": samplers_table},
    DOCS / "hardware.md": {"memory-modes": memory_table},
    DOCS / "downloads.md": {"download-commands": download_commands},
}


def rewrite(text: str, path: Path = README) -> str:
    """``text``, the content of ``path`` (a key of ``DOCUMENTS``), with every block generated in that file replaced
    by what it is generated from now. Exits naming the file and the block when a block's markers are missing."""
    for name, generate in DOCUMENTS[path].items():
        block = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.S)
        if not block.search(text):
            sys.exit(f"{path.relative_to(CHECKOUT)} has no <!-- {name}:start --> ... <!-- {name}:end --> block")
        content = generate()
        text = block.sub(lambda match, content=content: match.group(1) + content + match.group(2), text)
    return text


def main() -> None:
    for path in DOCUMENTS:
        path.write_text(rewrite(path.read_text(encoding="utf-8"), path), encoding="utf-8")


if __name__ == "__main__":
    main()
