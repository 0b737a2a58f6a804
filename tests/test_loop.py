"""The engine owns its denoising loops: no diffusers Kandinsky pipeline runs during a generation, no library object
is patched or hooked, the engine's modules import one another without a cycle, inpainting's mask at the latents'
size is diffusers' own, and every mode gives diffusers' pictures to the bit on the CPU."""

import ast
import functools
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, PriorTransformer, UNet2DConditionModel
from diffusers.pipelines import kandinsky2_2
from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import prepare_mask
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hypothesis_numpy

from helpers import (
    MODE_INPUTS,
    EagerCapture,
    attention_processor_lora,
    authors_negative_prior_reference,
    controlnet_img2img_reference,
    controlnet_reference,
    diffusers_reference,
    img2img_reference,
    inpaint_reference,
    max_difference,
    mix_reference,
    settings_in_mode,
)
from infer_kandinsky_2_2.kandinsky22_engine import generation, graphs
from infer_kandinsky_2_2.kandinsky22_engine.generation import generate, load_models
from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs, prepare_inputs
from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache
from infer_kandinsky_2_2.kandinsky22_engine.modes import MODES
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime
from infer_kandinsky_2_2.kandinsky22_engine.stages import kept_latents

ENGINE = Path(__file__).resolve().parent.parent / "kandinsky22_engine"
# negative_prior_prompt where the mode reads it with the prompt: its second prior run is checked too.
PRIOR_GUIDE = {mode: "ugly" if mode in ("text2img", "mix") else "" for mode in MODES}


@pytest.mark.parametrize("mode", list(MODES))
def test_no_diffusers_kandinsky_pipeline_runs_during_a_generation(
    tiny_strings, tiny_repos, warm_cache, monkeypatch, mode
):
    called = []
    classes = [value for value in vars(kandinsky2_2).values() if isinstance(value, type)]
    for pipeline_class in [each for each in classes if issubclass(each, DiffusionPipeline)]:
        monkeypatch.setattr(pipeline_class, "__call__", lambda *arguments, **keywords: called.append(arguments))
    monkeypatch.setattr(kandinsky2_2.KandinskyV22PriorPipeline, "interpolate", lambda *arguments: called.append(1))
    result = generate(
        settings_in_mode(tiny_strings, tiny_repos, mode, negative_prior_prompt=PRIOR_GUIDE[mode]),
        MODE_INPUTS[mode],
        cache=warm_cache,
    )
    assert called == [] and np.isfinite(result.images[0]).all()


def library_objects(models, scheduler: object) -> dict[str, object]:
    """Every diffusers and transformers object a run uses, by a name: the pipelines, their components and every
    submodule of their models, the image encoder, and the run's scheduler."""
    found = {"scheduler of the run": scheduler} if scheduler is not None else {}
    for name, pipeline in (("prior", models.prior), ("decoder", models.decoder)):
        found[name] = pipeline
        for component, value in pipeline.components.items():
            if value is not None:
                found[f"{name}.{component}"] = value
    if models.image_encoder is not None:
        found["image_encoder"] = models.image_encoder.model
    for name, value in list(found.items()):
        if isinstance(value, torch.nn.Module):
            found.update({f"{name}.{path}": module for path, module in value.named_modules() if path})
    return found


def attached(objects: dict[str, object]) -> dict[tuple[str, str], object]:
    """Every callable held in the instance attributes of ``objects`` (their own, not their class's), by object
    and attribute name."""
    return {
        (name, attribute): held
        for name, value in objects.items()
        for attribute, held in vars(value).items()
        if callable(held) and not isinstance(held, (type, torch.nn.Module, torch.Tensor))
    }


def offloading(held: object) -> bool:
    """Whether ``held`` is the forward wrapper of accelerate's offload hooks, which diffusers'
    ``enable_model_cpu_offload`` and ``enable_sequential_cpu_offload`` install (and ``maybe_free_model_hooks``
    installs again) on the models: the library's own offloading, through its API."""
    return isinstance(held, functools.partial) and getattr(held.func, "__module__", "").startswith("accelerate.")


def patches(objects: dict[str, object], before: dict[tuple[str, str], object]) -> list[str]:
    """What looks like a patch of ``objects``: a hook registered on one of their modules; a callable assigned to
    an attribute since ``before``; and at any time, a callable attribute that comes from this project, wraps
    another (``functools.partial``) or is a method of another object. Offloading's own wrappers aside."""
    found = []
    for name, value in objects.items():
        if isinstance(value, torch.nn.Module):
            hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
            found += [f"{name}: {kind}" for kind in hooks if getattr(value, kind)]
    for (name, attribute), held in attached(objects).items():
        if offloading(held):
            continue
        owner = held.__self__ if isinstance(held, types.MethodType) else objects[name]
        ours = "kandinsky22" in (getattr(held, "__module__", "") or "")
        changed = (name, attribute) in before and before[(name, attribute)] != held
        if ours or changed or isinstance(held, functools.partial) or owner is not objects[name]:
            found.append(f"{name}.{attribute} = {held!r}")
        elif (name, attribute) not in before:
            # A scheduler holds no callable of its own, so the run's, made after ``before``, counts too.
            found.append(f"{name}.{attribute} = {held!r} (new)")
    return found


@pytest.mark.parametrize(
    ("mode", "scheduler", "memory_mode", "cuda_graphs"),
    [
        *[(mode, "default", "none", "False") for mode in MODES],
        ("inpaint", "Euler", "none", "False"),
        ("img2img", "Heun", "none", "False"),
        ("img2img", "LMS", "none", "False"),
        ("controlnet_img2img", "UniPC", "none", "False"),
        ("text2img", "DPM2", "gpu", "True"),
        ("inpaint", "Euler", "prior_offload", "True"),
        ("text2img", "default", "model_offload", "False"),
        ("controlnet_img2img", "LMS", "model_offload", "False"),
        ("inpaint", "lora", "prior_offload", "True"),
        ("text2img", "lora", "model_offload", "False"),
    ],
)
def test_no_library_object_is_patched_or_hooked_at_any_step(
    tiny_strings, tiny_repos, tmp_path, monkeypatch, mode, scheduler, memory_mode, cuda_graphs
):
    # Memory modes as on CUDA with the CPU as the device, CUDA graphs captured by replaying eagerly.
    monkeypatch.setattr(graphs, "CAPTURE", EagerCapture())
    runtime = Runtime("cpu", torch.float32, memory_mode)
    lora = ""
    if scheduler == "lora":
        # LoRAs on both models, added through diffusers' and PEFT's API (adapter layers in the models' tree).
        scheduler, prior = "default", PriorTransformer.from_pretrained(tiny_repos.prior / "prior")
        decoder = UNet2DConditionModel.from_pretrained(tiny_repos.inpaint_decoder / "unet")
        paths = [
            attention_processor_lora(model, name, tmp_path / f"{name}.safetensors", seed=1).path
            for name, model in (("prior", prior), ("unet", decoder))
        ]
        lora = ", ".join(map(str, paths))
    settings = settings_in_mode(
        tiny_strings,
        tiny_repos,
        mode,
        scheduler=scheduler,
        cuda_graphs=cuda_graphs,
        negative_prior_prompt=PRIOR_GUIDE[mode],
        lora=lora,
    )
    cache = ModelCache()
    models = load_models(settings, runtime, cache)
    before = attached(library_objects(models, None))
    assert patches(library_objects(models, None), before) == []
    made = []
    scheduler_for = generation.scheduler_for
    monkeypatch.setattr(
        generation, "scheduler_for", lambda *arguments: made.append(scheduler_for(*arguments)) or made[-1]
    )
    seen = []

    def check() -> None:
        objects = library_objects(models, made[-1] if made else None)
        seen.append(patches(objects, before) + [f"global: {kind}" for kind in global_hooks()])

    generate(settings, MODE_INPUTS[mode], runtime=runtime, cache=cache, on_step=check)
    assert seen and all(found == [] for found in seen), next(found for found in seen if found)


def global_hooks() -> list[str]:
    """The names of torch's global module hooks that are registered."""
    module = torch.nn.modules.module
    kinds = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    return [kind for kind in kinds if getattr(module, kind)]


def engine_imports(folder: Path = ENGINE) -> dict[str, set[str]]:
    """For each module of the engine package in ``folder``, the package's modules it imports: at module level,
    inside functions and under ``TYPE_CHECKING`` alike, relative or absolute."""
    names = {path.stem for path in folder.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for name in names:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                parts = (node.module or "").split(".")
                if node.level == 1 and not node.module:
                    imported |= {alias.name for alias in node.names}
                elif node.level == 1 or "kandinsky22_engine" in parts:
                    imported.add(parts[-1] if parts[-1] != "kandinsky22_engine" else "")
                    if parts[-1] == "kandinsky22_engine":
                        imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if "kandinsky22_engine" in parts and parts[-1] != "kandinsky22_engine":
                        imported.add(parts[-1])
        graph[name] = (imported & names) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle of ``graph``, each as the modules along it, first one repeated at the end."""
    found, path, state = [], [], {}

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                found.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_the_engines_modules_import_one_another_without_a_cycle_in_layers():
    graph = engine_imports()
    assert cycles(graph) == []
    # The bottom: the errors and the constants everyone needs import no other module of the engine.
    assert graph["errors"] == set() and graph["constants"] == set()
    # The run's state above the models; the mode table above the stages it names; the run on top.
    assert "models" in graph["runtime"] and "stages" in graph["modes"]
    assert {"modes", "parameters", "stages", "runtime", "models"} <= graph["generation"]


def test_the_cycle_finder_finds_an_import_inside_a_function_and_one_for_type_checking(tmp_path):
    package = tmp_path / "kandinsky22_engine"
    package.mkdir()
    modules = {
        "a": "def f():\n    from .b import x\n",
        "b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import Settings\n",
        "c": "import infer_kandinsky_2_2.kandinsky22_engine.d\nfrom . import e\n",
        "d": "",
        "e": "from infer_kandinsky_2_2.kandinsky22_engine.a import f\n",
    }
    for name, source in modules.items():
        (package / f"{name}.py").write_text(source, encoding="utf-8")
    graph = engine_imports(package)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"d", "e"}, "d": set(), "e": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "e", "a"]]
    assert cycles({**graph, "e": set()}) == []


@given(
    hypothesis_numpy.arrays(
        np.float32, st.tuples(st.integers(8, 48), st.integers(8, 48)), elements=st.sampled_from([0.0, 1.0])
    ),
    st.sampled_from([(1, 1), (2, 3), (6, 4)]),
)
def test_inpaintings_mask_at_the_latents_size_is_diffusers_own(mask, size):
    rows, columns = mask.shape[0] // size[0] or 1, mask.shape[1] // size[1] or 1
    # diffusers' inpainting pipeline: 1 where kept, scaled down by nearest, then its prepare_mask.
    kept = 1 - torch.from_numpy((mask >= 0.5).astype(np.float32))[None, None]
    expected = prepare_mask(F.interpolate(kept, (rows, columns), mode="nearest"))
    assert torch.equal(kept_latents(mask, (rows, columns), "cpu", torch.float32), expected)


def reference(settings: Settings, inputs: Inputs) -> tuple[np.ndarray, ...]:
    """diffusers' own pipelines' pictures for ``settings`` and ``inputs`` (tests/helpers.py), loaded in float32."""
    seed, mode = settings.seed, settings.mode
    if mode == "text2img":
        if settings.negative_prior_prompt:
            return authors_negative_prior_reference(settings, seed)
        return diffusers_reference(settings, seed)
    if mode == "img2img":
        return img2img_reference(settings, seed, inputs.image, swap_sizes=True)
    if mode == "inpaint":
        return inpaint_reference(settings, seed, inputs.image, (inputs.mask > 0).astype(np.float32))
    if mode == "outpaint":
        prepared = prepare_inputs(settings, inputs, Runtime("cpu", torch.float32))
        return inpaint_reference(settings, seed, prepared.image, prepared.mask)
    if mode == "controlnet_depth":
        return controlnet_reference(settings, seed, inputs.depth)
    if mode == "controlnet_img2img":
        return controlnet_img2img_reference(settings, seed, inputs.image, inputs.depth)
    return mix_reference(settings, seed, list(inputs.mix_images))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(
    "changes",
    [
        {"guidance_scale": "1.0", "negative_prompt": ""},
        {"guidance_scale": "3.0", "prior_guidance_scale": "1.0", "num_images": "2", "negative_prompt": "blurry"},
        {"guidance_scale": "3.0", "negative_prompt": ""},
    ],
    ids=["unguided", "guided-batch", "guided-zero-embedding"],
)
def test_every_mode_gives_diffusers_pictures_to_the_bit_on_the_cpu(tiny_strings, tiny_repos, warm_cache, mode, changes):
    settings = settings_in_mode(tiny_strings, tiny_repos, mode, negative_prior_prompt=PRIOR_GUIDE[mode], **changes)
    pictures = generate(settings, MODE_INPUTS[mode], cache=warm_cache).images
    expected = reference(settings, MODE_INPUTS[mode])
    assert [max_difference(mine, theirs) for mine, theirs in zip(pictures, expected, strict=True)] == [0] * len(
        pictures
    )


def test_the_stages_run_without_autograd_wherever_they_are_called_from(tiny_strings, tiny_repos, warm_cache):
    settings = settings_in_mode(tiny_strings, tiny_repos, "inpaint")
    runtime = Runtime("cpu", torch.float32)
    models = load_models(settings, runtime, warm_cache)
    prepared = prepare_inputs(settings, MODE_INPUTS["inpaint"], runtime)
    generator = torch.Generator().manual_seed(0)
    assert torch.is_grad_enabled()
    embeds = generation.run_prior(models, settings, prepared, runtime, generator, lambda index, total: None)
    decoded = generation.run_decoder(models, settings, prepared, runtime, embeds, generator, lambda index, total: None)
    assert not any(tensor.requires_grad for tensor in (*embeds, decoded))
