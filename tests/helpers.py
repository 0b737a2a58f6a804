"""Helpers shared by the tests: the task in an Ikomia workflow, test images, and what diffusers' own pipelines
return, which a plugin image must equal.

Each reference calls diffusers the way its documentation does, with ``torch.Generator("cpu").manual_seed(seed)``,
and returns the pictures. The pipelines are loaded once per repo folder and kept: a call sets its scheduler's
timesteps and draws from its own generator, so a kept pipeline gives the pixels of a fresh one.
"""

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    KandinskyV22CombinedPipeline,
    KandinskyV22ControlnetImg2ImgPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22Img2ImgCombinedPipeline,
    KandinskyV22InpaintCombinedPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorEmb2EmbPipeline,
    KandinskyV22PriorPipeline,
)
from PIL import Image
from safetensors.torch import save_file
from torch.utils import _pytree as pytree

from infer_kandinsky_2_2.kandinsky22_devkit.reference import combine, combined_arguments
from infer_kandinsky_2_2.kandinsky22_engine.generation import load_models, runtime_for
from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs
from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
from infer_kandinsky_2_2.kandinsky22_engine.runtime import Models

TASK_NAME = "infer_kandinsky_2_2"
# The output size of the quick runs (conftest's TINY_RUN): not square, so that a transposition shows.
HEIGHT, WIDTH = 64, 128


def random_image(seed: int, shape: tuple[int, ...] = (HEIGHT, WIDTH, 3)) -> np.ndarray:
    """A uint8 picture of random pixels, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file of a repo folder, by its path in the repo."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def stop_at_step(task, step: int) -> list[int]:
    """Make ``task`` ask to stop at its ``step``-th step callback; the returned list grows by one per callback."""
    steps: list[int] = []

    def step_then_stop() -> None:
        steps.append(1)
        if len(steps) == step:
            task.stop()

    task.emit_step_progress = step_then_stop
    return steps


def left_half_mask(dtype: type = np.uint8, value: object = 255, shape: tuple[int, ...] = (HEIGHT, WIDTH)) -> np.ndarray:
    """A mask of ``dtype``: ``value`` over the left half of every channel, 0 elsewhere (by default white, repaint)."""
    mask = np.zeros(shape, dtype)
    mask[:, : shape[1] // 2] = value
    return mask


@functools.cache
def _image_source_class() -> type:
    from ikomia import dataprocess

    class ImageSource(dataprocess.CWorkflowTask):
        """A task that outputs a fixed image: what a depth, segmentation or loader task gives in a real workflow."""

        def __init__(self, image: np.ndarray) -> None:
            dataprocess.CWorkflowTask.__init__(self, "image_source")
            self.add_output(dataprocess.CImageIO())
            self.image = image

        def run(self) -> None:
            self.begin_task_run()
            self.get_output(0).set_image(self.image)
            self.end_task_run()

    return ImageSource


def workflow_with(parameters: dict[str, str], sources: dict[int, np.ndarray] | None = None) -> tuple:
    """A new workflow holding the task, loaded by name, with ``parameters``; image sources feed its inputs by
    index. Returns the workflow and the task."""
    from ikomia.dataprocess.workflow import Workflow

    workflow = Workflow()
    task = workflow.add_task(name=TASK_NAME, public_hub=False)
    task.set_parameters(parameters)
    for index, image in (sources or {}).items():
        source = _image_source_class()(image)
        workflow.add_task(source)
        workflow.connect_tasks(source, task, [(0, index)])
    return workflow, task


def run_workflow(parameters: dict[str, str], sources: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
    """Run the task once in a new workflow; its first picture and its metadata."""
    workflow, task = workflow_with(parameters, sources)
    workflow.run()
    return task.get_output(0).get_image(), task.get_output(1).data


def load_for(settings: Settings, cache: ModelCache) -> Models:
    """The models a run of ``settings`` loads into ``cache``, on the runtime the settings ask for."""
    return load_models(settings, runtime_for(settings), cache)


def model_cache(task, device: str = "cpu"):
    """The process-wide cache the task uses on ``device`` (Ikomia reloads plugin modules when it loads them)."""
    return sys.modules[type(task).__module__].cache_for(device)


@functools.cache
def _loaded(pipeline_class: type[DiffusionPipeline], folder: str) -> DiffusionPipeline:
    # float32 as the engine's CPU runs: the prior repo's image encoder config asks for float16, which transformers
    # would load it in.
    pipeline = pipeline_class.from_pretrained(folder, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _combined(combined_class: type, decoder_class: type, settings: Settings) -> DiffusionPipeline:
    prior = _loaded(KandinskyV22PriorPipeline, settings.prior_model_name)
    return combine(prior, _loaded(decoder_class, settings.model_name), combined_class)


def _pictures(images: list) -> tuple[np.ndarray, ...]:
    pictures = tuple(np.asarray(image) for image in images)
    for picture in pictures:
        picture.flags.writeable = False  # a cached reference must not change under a later test
    return pictures


@functools.cache
def diffusers_reference(settings: Settings, seed: int) -> tuple[np.ndarray, ...]:
    """text2img: diffusers' ``KandinskyV22CombinedPipeline``; computed once for the same settings and seed."""
    combined = _combined(KandinskyV22CombinedPipeline, KandinskyV22Pipeline, settings)
    return _pictures(combined(**combined_arguments(settings, seed)).images)


def img2img_reference(settings: Settings, seed: int, image: np.ndarray, *, swap_sizes: bool) -> tuple[np.ndarray, ...]:
    """img2img: ``KandinskyV22Img2ImgCombinedPipeline`` on an image that already has the output size.

    diffusers resizes the image with height and width swapped; ``swap_sizes`` asks for the swapped size,
    which leaves the image as it is, so that the reference is free of that bug.
    """
    combined = _combined(KandinskyV22Img2ImgCombinedPipeline, KandinskyV22Pipeline, settings)
    arguments = combined_arguments(settings, seed)
    if swap_sizes:
        arguments["height"], arguments["width"] = settings.width, settings.height
    return _pictures(combined(**arguments, image=Image.fromarray(image), strength=settings.strength).images)


def inpaint_reference(settings: Settings, seed: int, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """inpaint: ``KandinskyV22InpaintCombinedPipeline``, mask white (1) where to repaint.

    Arrays go in as lists of one per picture: the combined pipeline repeats only PIL images.
    """
    combined = _combined(KandinskyV22InpaintCombinedPipeline, KandinskyV22InpaintPipeline, settings)
    count = settings.num_images
    return _pictures(
        combined(**combined_arguments(settings, seed), image=[image] * count, mask_image=[mask] * count).images
    )


def controlnet_reference(settings: Settings, seed: int, depth: np.ndarray) -> tuple[np.ndarray, ...]:
    """controlnet_depth: the prior, then ``KandinskyV22ControlnetPipeline`` with the same generator.

    The hint is built as in diffusers' example: the depth map over three channels, divided by 255.
    """
    prior = _loaded(KandinskyV22PriorPipeline, settings.prior_model_name)
    decoder = _loaded(KandinskyV22ControlnetPipeline, settings.model_name)
    generator = torch.Generator("cpu").manual_seed(seed)
    image_embeds, negative_image_embeds = prior(
        settings.prompt,
        negative_prompt=settings.negative_prompt or None,
        num_images_per_prompt=settings.num_images,
        num_inference_steps=settings.prior_num_inference_steps,
        guidance_scale=settings.prior_guidance_scale,
        generator=generator,
        return_dict=False,
    )
    return _decode(decoder, settings, (image_embeds, negative_image_embeds), generator, hint=_hint(settings, depth))


def _hint(settings: Settings, depth: np.ndarray) -> torch.Tensor:
    """The ControlNet hint of a uint8 depth map, one per picture, as diffusers' guide builds it (``make_hint``)."""
    rgb = np.repeat(depth[:, :, None], 3, axis=2) if depth.ndim == 2 else depth
    return torch.from_numpy(rgb).float().div(255).permute(2, 0, 1).unsqueeze(0).repeat(settings.num_images, 1, 1, 1)


def controlnet_img2img_reference(
    settings: Settings, seed: int, image: np.ndarray, depth: np.ndarray
) -> tuple[np.ndarray, ...]:
    """controlnet_img2img as diffusers' Kandinsky 2.2 guide writes it: ``KandinskyV22PriorEmb2EmbPipeline`` on
    the prompt and the image at ``prior_strength``, again on the negative prompt at strength 1 (its negative
    embedding when the negative prompt is empty), then ``KandinskyV22ControlnetImg2ImgPipeline``, one generator.

    The image already has the output size; the decoder is asked for the swapped size, which leaves it as it is
    (diffusers resizes with height and width swapped, see ``img2img_reference``).
    """
    prior = _loaded(KandinskyV22PriorEmb2EmbPipeline, settings.prior_model_name)
    decoder = _loaded(KandinskyV22ControlnetImg2ImgPipeline, settings.model_name)
    generator = torch.Generator("cpu").manual_seed(seed)
    picture = Image.fromarray(image)
    arguments = {
        "image": picture,
        "num_images_per_prompt": settings.num_images,
        "num_inference_steps": settings.prior_num_inference_steps,
        "guidance_scale": settings.prior_guidance_scale,
        "generator": generator,
    }
    embeds = prior(
        settings.prompt,
        strength=settings.prior_strength,
        negative_prompt=settings.negative_prior_prompt or None,
        **arguments,
    )
    negative = prior(settings.negative_prompt, strength=1.0, **arguments)
    negative_embeds = negative.negative_image_embeds if settings.negative_prompt == "" else negative.image_embeds
    images = decoder(
        image=[picture] * settings.num_images,
        image_embeds=embeds.image_embeds,
        negative_image_embeds=negative_embeds,
        hint=_hint(settings, depth),
        height=settings.width,
        width=settings.height,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        strength=settings.strength,
        generator=generator,
    ).images
    return _pictures(images)


def authors_negative_prior_reference(settings: Settings, seed: int) -> tuple[np.ndarray, ...]:
    """text2img with ``negative_prior_prompt`` as the authors' package defines it (``generate_text2img`` in
    ai-forever/Kandinsky-2's ``kandinsky2_2_model.py``), over diffusers' pipelines with one generator: the prior
    on the prompt guided away from the negative prior prompt; the prior on the negative (decoder) prompt alone,
    whose negative embedding (the zero-image one) is taken when that prompt is empty, its image embedding
    otherwise; then the decoder."""
    prior = _loaded(KandinskyV22PriorPipeline, settings.prior_model_name)
    decoder = _loaded(KandinskyV22Pipeline, settings.model_name)
    generator = torch.Generator("cpu").manual_seed(seed)
    arguments = {
        "num_images_per_prompt": settings.num_images,
        "num_inference_steps": settings.prior_num_inference_steps,
        "guidance_scale": settings.prior_guidance_scale,
        "generator": generator,
    }
    image_embeds = prior(settings.prompt, negative_prompt=settings.negative_prior_prompt, **arguments).image_embeds
    negative = prior(settings.negative_prompt, **arguments)
    negative_embeds = negative.negative_image_embeds if settings.negative_prompt == "" else negative.image_embeds
    return _decode(decoder, settings, (image_embeds, negative_embeds), generator)


def mix_reference(settings: Settings, seed: int, images: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """mix: ``KandinskyV22PriorPipeline.interpolate`` over the images then the prompt, then the decoder."""
    prior = _loaded(KandinskyV22PriorPipeline, settings.prior_model_name)
    decoder = _loaded(KandinskyV22Pipeline, settings.model_name)
    generator = torch.Generator("cpu").manual_seed(seed)
    items = [Image.fromarray(image) for image in images] + ([settings.prompt] if settings.prompt else [])
    embeddings = prior.interpolate(
        items,
        list(settings.mix_weight_values()),
        num_images_per_prompt=settings.num_images,
        num_inference_steps=settings.prior_num_inference_steps,
        generator=generator,
        negative_prompt=settings.negative_prompt,
        negative_prior_prompt=settings.negative_prior_prompt or None,
        guidance_scale=settings.prior_guidance_scale,
    )
    embeds = (embeddings.image_embeds, embeddings.negative_image_embeds)
    return _decode(decoder, settings, embeds, generator)


def _decode(decoder, settings: Settings, embeds: tuple, generator: torch.Generator, **extra) -> tuple[np.ndarray, ...]:
    """A decoder pipeline's pictures from the prior's (image, negative) embeddings, as diffusers documents it."""
    images = decoder(
        image_embeds=embeds[0],
        negative_image_embeds=embeds[1],
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        generator=generator,
        output_type="pil",
        **extra,
    ).images
    return _pictures(images)


def max_difference(first: np.ndarray, second: np.ndarray) -> int:
    """The largest difference between two pictures of the same shape, in levels of 0-255."""
    assert first.shape == second.shape
    return int(np.abs(first.astype(int) - second.astype(int)).max())


class EagerGraph:
    """A "graph" whose replay runs the captured forward again on the static inputs, into the static outputs."""

    def __init__(self, run, outputs) -> None:
        self.run, self.outputs = run, outputs

    def replay(self) -> None:
        for static, fresh in zip(pytree.tree_leaves(self.outputs), pytree.tree_leaves(self.run()), strict=True):
            static.copy_(fresh)


class EagerCapture:
    """Stands in for ``graphs.CudaCapture`` on the CPU, which has no CUDA graphs: a capture runs the forward once,
    and a replay runs it again on the static inputs (``EagerGraph``)."""

    def pool(self) -> object:
        return object()

    def __call__(self, run, pool, device):
        outputs = run()
        return EagerGraph(run, outputs), outputs


# One input of each kind a mode reads, at the quick runs' size.
MODE_INPUTS = {
    "text2img": Inputs(),
    "img2img": Inputs(image=random_image(1)),
    "inpaint": Inputs(image=random_image(2), mask=left_half_mask()),
    "outpaint": Inputs(image=random_image(2)),
    "controlnet_depth": Inputs(depth=random_image(4)[:, :, 0]),
    "controlnet_img2img": Inputs(image=random_image(1), depth=random_image(4)[:, :, 0]),
    "mix": Inputs(mix_images=(random_image(5), random_image(6))),
}


def settings_in_mode(tiny_strings: dict, tiny_repos, mode: str, **changes: str) -> Settings:
    """A quick run in ``mode`` on its tiny decoder, with guidance, an empty negative prompt (the zero-image
    embedding), strength 0.5 and a 64-pixel outpaint margin, and ``changes``."""
    decoder = {"inpaint": "inpaint_decoder", "outpaint": "inpaint_decoder"}.get(mode, "decoder")
    if mode.startswith("controlnet"):
        decoder = "controlnet_decoder"
    return Settings.from_strings(
        {
            **tiny_strings,
            "mode": mode,
            "model_name": str(getattr(tiny_repos, decoder)),
            "guidance_scale": "2.0",
            "negative_prompt": "",
            "strength": "0.5",
            "outpaint_left": "64",
            "outpaint_right": "0",
            "outpaint_overlap": "8",
            **changes,
        }
    )


# The layers a LoRAAttnAddedKVProcessor (the decoder's attentions) and a LoRAAttnProcessor (the prior's) held.
PROCESSOR_LAYERS = ("to_q", "to_k", "to_v", "to_out", "add_k_proj", "add_v_proj")


@dataclass(frozen=True)
class Written:
    """A LoRA file a test wrote: where, for which component of its repo (unet, prior), and each layer's change
    at scale 1 (alpha / rank x up @ down), by layer path."""

    path: Path
    deltas: dict[str, dict[str, torch.Tensor]]


def attention_processor_lora(model: torch.nn.Module, component: str, path: Path, seed: int, rank: int = 4) -> Written:
    """A LoRA as ``save_attn_procs`` wrote it for the Kandinsky 2.2 training scripts: one processor per attention
    (``model.attn_processors``), its layers' down and up matrices under ``<processor>.<layer>_lora``."""
    generator = torch.Generator().manual_seed(seed)
    state, deltas = {}, {}
    for processor in model.attn_processors:
        attention = processor.removesuffix(".processor")
        for layer in PROCESSOR_LAYERS:
            name = f"{attention}.{'to_out.0' if layer == 'to_out' else layer}"
            try:
                linear = model.get_submodule(name)
            except AttributeError:
                continue
            down = torch.randn(rank, linear.in_features, generator=generator) / linear.in_features**0.5
            up = torch.randn(linear.out_features, rank, generator=generator) / rank**0.5
            state[f"{processor}.{layer}_lora.down.weight"] = down
            state[f"{processor}.{layer}_lora.up.weight"] = up
            deltas[name] = up @ down
    save_file(state, path)
    return Written(path, {component: deltas})
