"""Every mode of the task, defined once.

``MODES`` holds one ``Mode`` per mode: the decoder it uses (cache role, diffusers pipeline, the UNet it
needs, its default repo), the inputs the task offers for it, the parameters only it reads, how its inputs
are checked and prepared, its prior stage, its decoder call and how many denoising steps each stage runs.
The task's inputs, the widget, the README's mode table, progress counting and validation all read this
table; adding a mode is one entry and its own functions. ``generation.py`` runs a mode's stages in order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    KandinskyV22ControlnetImg2ImgPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorEmb2EmbPipeline,
)
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from .images import (
    PASTE_BACK_FEATHER,
    InputError,
    as_rgb,
    depth_hint,
    fit,
    kept_inverted,
    mask_from,
    outpaint_canvas,
    paste_back_ramp,
)
from .schedulers import cut_by_order

if TYPE_CHECKING:
    from .generation import Pipelines, Runtime
    from .parameters import Settings

DEFAULT_DECODER = "kandinsky-community/kandinsky-2-2-decoder"
DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
DEFAULT_INPAINT_DECODER = "kandinsky-community/kandinsky-2-2-decoder-inpaint"
DEFAULT_CONTROLNET_DECODER = "kandinsky-community/kandinsky-2-2-controlnet-depth"
# Known repos whose default branch cannot serve the task, and the revision loaded instead: the ControlNet depth
# repo's main branch holds its weights as pickles only; its safetensors are at its open pull request #5.
PINNED_REVISIONS = {DEFAULT_CONTROLNET_DECODER: "08632524a2b7e3bed39a7901d92cdd07e37544d0"}

IMAGE_INPUT = "image"
DRAWING_INPUT = "mask drawing"
MASK_INPUT = "mask"
DEPTH_INPUT = "depth map"
# Stands for mix_images inputs named "image 1", "image 2", ... in a mode's inputs.
MIX_INPUTS = "image {number}"
OUTPAINT_MARGINS = ("outpaint_top", "outpaint_bottom", "outpaint_left", "outpaint_right")
# The image keeps at least 64 x 64 pixels of the output in outpaint (8 x 8 latents): content to carry into the margins.
OUTPAINT_MIN_SIDE = 64

# A step callback for ``callback_on_step_end``: (pipeline, step, timestep, tensors) -> tensors.
StepEndCallback = Callable[..., dict]
# Gives the step callback of one prior or decoder run of the given number of steps.
Callbacks = Callable[[int], StepEndCallback]
Embeddings = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Decoder:
    """The decoder a mode uses: its cache role, the diffusers pipeline it loads as, the UNet it needs (input
    channels and added embedding type, from the UNet's config), what such a decoder is called, and its
    default repo. Modes that share a role share the loaded decoder."""

    role: str
    pipeline_class: type[DiffusionPipeline]
    in_channels: int
    addition_embed_type: str
    kind: str
    default_model: str


TEXT2IMG_DECODER = Decoder("decoder", KandinskyV22Pipeline, 4, "image", "a text-to-image decoder", DEFAULT_DECODER)
# The UNet reads the latents, the masked image's latents and the mask: 4 + 4 + 1 channels.
INPAINT_DECODER = Decoder(
    "inpaint_decoder", KandinskyV22InpaintPipeline, 9, "image", "an inpainting decoder", DEFAULT_INPAINT_DECODER
)
CONTROLNET_DECODER = Decoder(
    "controlnet_decoder",
    KandinskyV22ControlnetPipeline,
    8,
    "image_hint",
    "a ControlNet depth decoder",
    DEFAULT_CONTROLNET_DECODER,
)


@dataclass(frozen=True)
class Inputs:
    """The images a run reads, as arrays (height x width, or height x width x channels); each mode reads its own.

    ``image``: the input named "image" (img2img, inpaint, outpaint; a photo to estimate depth from). ``mask`` and
    ``drawn_mask``: inpaint, white where to repaint (the two are combined; one is enough). ``depth``: the
    ControlNet modes' depth map. ``mix_images``: mix, in order.
    """

    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    drawn_mask: np.ndarray | None = None
    depth: np.ndarray | None = None
    mix_images: tuple[np.ndarray | None, ...] = ()


NO_INPUTS = Inputs()


@dataclass
class Prepared:
    """A run's inputs at the output size, ready for the pipelines, and notes on what was done to them.

    ``image``: height x width x 3 uint8 (outpaint: the canvas). ``mask``: height x width float32, 1 where to
    repaint (inpaint, outpaint). ``hint``: the ControlNet hint, (1, 3, height, width) in 0..1 on the run's device
    and dtype (None while a depth_model has yet to estimate it from ``image``, see
    ``generation.estimate_depth``). ``mix_images``: PIL images
    at their own size. ``notes``: for every input read, its size and what was done to it.
    """

    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    hint: torch.Tensor | None = None
    mix_images: tuple[Image.Image, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)


def _no_check(settings: Settings) -> None:
    """A mode whose parameters need no check beyond their own ranges."""


def _no_inputs(settings: Settings, inputs: Inputs, prepared: Prepared, runtime: Runtime) -> None:
    """text2img reads no input."""


def _all_steps(settings: Settings) -> int:
    return settings.num_inference_steps


def strength_steps(settings: Settings) -> int:
    """The decoder steps an image-to-image run makes: diffusers skips the first (1 - strength) of the schedule
    (``get_timesteps`` of its img2img pipelines)."""
    return _steps_at(settings.num_inference_steps, settings.strength)


def prior_strength_steps(settings: Settings) -> int:
    """The prior steps of the image-to-embedding run: ``KandinskyV22PriorEmb2EmbPipeline`` skips the first
    (1 - strength) of the prior's schedule, as diffusers' img2img pipelines skip the decoder's."""
    return _steps_at(settings.prior_num_inference_steps, settings.prior_strength)


def _steps_at(steps: int, strength: float) -> int:
    return min(int(steps * strength), steps)


def _no_step(settings: Settings, strength: str, steps: str, stage: str) -> list[str]:
    """The refusal of a ``strength`` that leaves no step of ``stage``'s ``steps``, if it does: diffusers would
    then fail in the decoder, and return no embedding at all, without an error, in the prior."""
    if _steps_at(getattr(settings, steps), getattr(settings, strength)) >= 1:
        return []
    return [
        f"{strength}: received '{getattr(settings, strength)}' with {steps} {getattr(settings, steps)}; "
        f"accepted: a {strength} that leaves {settings.mode} at least one {stage} step ({steps} x {strength} >= 1)."
    ]


def _refuse(problems: list[str]) -> None:
    """Raise ``SettingsError`` listing every problem at once, if there is any."""
    from .parameters import SettingsError

    if problems:
        raise SettingsError("\n".join(problems))


def _check_strength(settings: Settings) -> None:
    _refuse(_no_step(settings, "strength", "num_inference_steps", "decoder"))


def _check_strengths(settings: Settings) -> None:
    _refuse(
        _no_step(settings, "strength", "num_inference_steps", "decoder")
        + _no_step(settings, "prior_strength", "prior_num_inference_steps", "prior")
    )


def _check_mix(settings: Settings) -> None:
    settings.mix_weight_values()


def _check_outpaint(settings: Settings) -> None:
    """Refuse margins that paint nothing, and margins that leave the image less than 64 x 64 pixels."""
    problems = []
    if not any(getattr(settings, name) for name in OUTPAINT_MARGINS):
        problems.append(
            f"outpaint: every margin is 0 ({', '.join(OUTPAINT_MARGINS)}); accepted: at least one margin above 0, "
            "in pixels of the output to paint beyond the image."
        )
    for first, second, side in (
        ("outpaint_left", "outpaint_right", "width"),
        ("outpaint_top", "outpaint_bottom", "height"),
    ):
        size, margins = getattr(settings, side), (getattr(settings, first), getattr(settings, second))
        if sum(margins) > size - OUTPAINT_MIN_SIDE:
            problems.append(
                f"{first} + {second}: received {margins[0]} + {margins[1]} = {sum(margins)} with {side} {size}; "
                f"accepted: at most {side} - {OUTPAINT_MIN_SIDE} = {size - OUTPAINT_MIN_SIDE}, so that the image "
                f"keeps at least {OUTPAINT_MIN_SIDE} pixels of the {side}."
            )
    _refuse(problems)


def _prior_arguments(settings: Settings, generator: torch.Generator) -> dict:
    """The arguments every prior run of a generation shares: the batch, steps, guidance and generator, and the
    embeddings returned as tensors, (image, negative)."""
    return {
        "num_images_per_prompt": settings.num_images,
        "num_inference_steps": settings.prior_num_inference_steps,
        "guidance_scale": settings.prior_guidance_scale,
        "generator": generator,
        "output_type": "pt",
        "return_dict": False,
    }


def _text_prior_runs(settings: Settings) -> tuple[int, ...]:
    return (settings.prior_num_inference_steps,) * (2 if settings.negative_prior_prompt else 1)


def text_prior(
    pipelines: Pipelines, settings: Settings, prepared: Prepared, generator: torch.Generator, callbacks: Callbacks
) -> Embeddings:
    """The prior stage from the prompt: the image embedding of every picture and the negative embedding.

    With ``negative_prior_prompt`` empty, as ``KandinskyV22CombinedPipeline`` does it: one prior run on the
    prompt, guided away from the negative prompt, gives both embeddings (the negative one is the negative
    prompt's, or the zero-image embedding when it is empty). With ``negative_prior_prompt`` set, as the authors'
    package defines it (``generate_text2img`` in ai-forever/Kandinsky-2's ``kandinsky2_2_model.py``): the prompt's
    run is guided away from ``negative_prior_prompt``, and a second run, on the negative prompt alone, gives
    the negative embedding (the zero-image embedding when the negative prompt is empty).
    """
    arguments = _prior_arguments(settings, generator)
    if not settings.negative_prior_prompt:
        return pipelines.prior(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt or None,
            callback_on_step_end=callbacks(settings.prior_num_inference_steps),
            **arguments,
        )
    image_embeds, _ = pipelines.prior(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prior_prompt,
        callback_on_step_end=callbacks(settings.prior_num_inference_steps),
        **arguments,
    )
    with _zero_embedding_unused(pipelines.prior, unused=settings.negative_prompt != ""):
        negative = pipelines.prior(
            prompt=settings.negative_prompt,
            callback_on_step_end=callbacks(settings.prior_num_inference_steps),
            **arguments,
        )
    return image_embeds, _negative_embedding(settings, negative)


@contextmanager
def _zero_embedding_unused(prior: DiffusionPipeline, unused: bool) -> Iterator[None]:
    """While the block runs, when ``unused``, answer the prior's ``get_zero_embed`` with zeros of its shape.

    A prior run without a negative prompt always asks for the zero-image embedding as its negative (diffusers
    0.40.0 to 0.42.1, tests/test_upstream.py), which needs the 3.69 GB CLIP image encoder; the run on a
    non-empty negative prompt in the authors' definition discards it, so the encoder need not be loaded for it.
    """
    if not unused:
        yield
        return
    answer = prior.get_zero_embed
    size = prior.prior.config.embedding_dim

    def zeros(batch_size: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros(batch_size, size, device=device, dtype=prior.prior.dtype)

    prior.get_zero_embed = zeros
    try:
        yield
    finally:
        prior.get_zero_embed = answer


def _negative_embedding(settings: Settings, run: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The decoder's negative embedding from a prior run on the negative prompt: the zero-image embedding (the
    run's own negative) when the negative prompt is empty, else the run's image embedding; the rule of the
    authors' package and of diffusers' ``interpolate``."""
    image_embeds, zero_embeds = run
    return zero_embeds if settings.negative_prompt == "" else image_embeds


def _mix_prior_runs(settings: Settings) -> tuple[int, ...]:
    return (settings.prior_num_inference_steps,) * (2 if settings.prompt else 1)


def mix_prior(
    pipelines: Pipelines, settings: Settings, prepared: Prepared, generator: torch.Generator, callbacks: Callbacks
) -> Embeddings:
    """The weighted sum of the items' image embeddings, and the negative embedding.

    This is ``KandinskyV22PriorPipeline.interpolate`` step for step (the images, then the prompt), with the
    step callback passed to every prior run, which ``interpolate`` cannot do: progress and stop then work in
    mix as in every other mode. ``negative_prior_prompt`` (``interpolate``'s argument of that name) guides every
    run on text, the negative prompt's included; the negative embedding is that run's image embedding, or its
    own negative when the negative prompt is empty (the zero-image embedding, unless ``negative_prior_prompt``
    is set).
    """
    prior = pipelines.prior
    items: list[Image.Image | str] = [*prepared.mix_images, *([settings.prompt] if settings.prompt else [])]
    prior_arguments = _prior_arguments(settings, generator)
    weighted = []
    for item, weight in zip(items, settings.mix_weight_values(), strict=True):
        if isinstance(item, str):
            embedding = prior(
                item,
                negative_prompt=settings.negative_prior_prompt or None,
                callback_on_step_end=callbacks(settings.prior_num_inference_steps),
                **prior_arguments,
            )[0].unsqueeze(0)
        else:
            embedding = _clip_embedding(pipelines, item).repeat(settings.num_images, 1).unsqueeze(0)
        weighted.append(embedding * weight)
    negative = prior(
        settings.negative_prompt,
        negative_prompt=settings.negative_prior_prompt or None,
        callback_on_step_end=callbacks(settings.prior_num_inference_steps),
        **prior_arguments,
    )
    return torch.cat(weighted).sum(dim=0), _negative_embedding(settings, negative)


def _emb2emb_prior_runs(settings: Settings) -> tuple[int, ...]:
    return (prior_strength_steps(settings), settings.prior_num_inference_steps)


def emb2emb_prior(
    pipelines: Pipelines, settings: Settings, prepared: Prepared, generator: torch.Generator, callbacks: Callbacks
) -> Embeddings:
    """The prior stage from the input image and the prompt, as diffusers' Kandinsky 2.2 guide does it for
    ControlNet image-to-image: ``KandinskyV22PriorEmb2EmbPipeline`` moves the image's CLIP embedding towards the
    prompt (``prior_strength`` of the prior's schedule, guided away from ``negative_prior_prompt`` when it is
    set), then a second run, on the negative prompt from the same image at strength 1, gives the negative
    embedding (the zero-image embedding when the negative prompt is empty, as elsewhere).

    The image is embedded once, by the run's image encoder, and passed to both runs as its embedding, which
    diffusers reads as such; it equals diffusers embedding the picture itself. The pipeline takes no step
    callback, so each denoising step is reported from the prior transformer's forward pass, one per step.
    """
    emb2emb = KandinskyV22PriorEmb2EmbPipeline(**pipelines.prior.components)
    emb2emb.set_progress_bar_config(disable=True)
    # Patch of a diffusers internal (diffusers 0.40.0 to 0.42.1), as for the prior in ``load_pipelines``.
    emb2emb.get_zero_embed = pipelines.prior.get_zero_embed
    embedding = _clip_embedding(pipelines, Image.fromarray(prepared.image))
    arguments = {"image": embedding, **_prior_arguments(settings, generator)}
    prior = pipelines.prior.prior
    with _each_forward(prior, callbacks(prior_strength_steps(settings))):
        image_embeds, _ = emb2emb(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prior_prompt or None,
            strength=settings.prior_strength,
            **arguments,
        )
    with _each_forward(prior, callbacks(settings.prior_num_inference_steps)):
        negative = emb2emb(prompt=settings.negative_prompt, strength=1.0, **arguments)
    return image_embeds, _negative_embedding(settings, negative)


@contextmanager
def _each_forward(module: torch.nn.Module, callback: StepEndCallback) -> Iterator[None]:
    """Call ``callback`` after every forward pass of ``module`` in the block: one per denoising step of a
    pipeline that calls it once a step and takes no callback of its own."""
    steps = itertools.count()

    def after_forward(_module: torch.nn.Module, _inputs: tuple, _output: object) -> None:
        # A hook that returns a value replaces the module's output: this one returns nothing.
        callback(None, next(steps), None, {})

    handle = module.register_forward_hook(after_forward)
    try:
        yield
    finally:
        handle.remove()


def _clip_embedding(pipelines: Pipelines, image: Image.Image) -> torch.Tensor:
    """The CLIP image embedding, (1, embedding size) on the device, of ``image``, brought to CLIP's input size
    by the prior's image processor, as diffusers' prior pipelines embed images (``_encode_image``)."""
    pixels = pipelines.prior.image_processor(image, return_tensors="pt").pixel_values[0].unsqueeze(0)
    return pipelines.image_encoder.embed(pixels)


def _fit_image(settings: Settings, inputs: Inputs, prepared: Prepared) -> tuple[int, int]:
    """Fill ``prepared.image`` with the input image, scaled to cover the output size and centre-cut
    (``images.fit``); return the input's (rows, columns)."""
    image = as_rgb(inputs.image, f"{settings.mode} input '{IMAGE_INPUT}'")
    fitted = fit(image, settings.height, settings.width)
    prepared.image, prepared.notes[IMAGE_INPUT] = fitted.array, fitted.note
    return image.shape[:2]


def _prepare_image(settings: Settings, inputs: Inputs, prepared: Prepared, runtime: Runtime) -> None:
    """The input image, scaled to cover the output size and centre-cut (``images.fit``)."""
    _fit_image(settings, inputs, prepared)


def _prepare_inpaint(settings: Settings, inputs: Inputs, prepared: Prepared, runtime: Runtime) -> None:
    """The image, and the drawn mask and the mask image combined (one is enough), fitted as the image is; with
    mask_mode keep, the combined mask inverted (``images.kept_inverted``)."""
    image_shape = _fit_image(settings, inputs, prepared)
    masks = []
    for name, array in ((DRAWING_INPUT, inputs.drawn_mask), (MASK_INPUT, inputs.mask)):
        if name == DRAWING_INPUT and array is not None and array.size and not array.any():
            raise InputError(
                f"inpaint input '{DRAWING_INPUT}': the shapes drawn cover no pixel of the image; accepted: shapes "
                "drawn over the image."
            )
        if array is not None and array.size:
            mask = mask_from(array, f"inpaint input '{name}'", image_shape, settings.height, settings.width)
            masks.append(mask.array)
            prepared.notes[name] = mask.note
    if not masks:
        raise InputError(
            f"inpaint needs a mask, white where to repaint: draw it over the image (input '{DRAWING_INPUT}') "
            f"or give a mask image (input '{MASK_INPUT}')."
        )
    prepared.mask = np.maximum.reduce(masks)
    if settings.mask_mode == "keep":
        read = [name for name in (DRAWING_INPUT, MASK_INPUT) if name in prepared.notes]
        names = "inpaint input" + (f" '{read[0]}'" if len(read) == 1 else f"s '{read[0]}' and '{read[1]}'")
        inverted = kept_inverted(prepared.mask, names)
        prepared.mask = inverted.array
        for name in read:
            prepared.notes[name] += f"; {inverted.note}"
    _note_paste_back(settings, prepared)


def _prepare_outpaint(settings: Settings, inputs: Inputs, prepared: Prepared, runtime: Runtime) -> None:
    """The canvas and the mask of ``images.outpaint_canvas``: the image, scaled to fit inside the margins and
    centred there, on an output-sized canvas, with the margins and the overlap to paint."""
    name = f"outpaint input '{IMAGE_INPUT}'"
    canvas = outpaint_canvas(
        as_rgb(inputs.image, name),
        name,
        settings.height,
        settings.width,
        top=settings.outpaint_top,
        bottom=settings.outpaint_bottom,
        left=settings.outpaint_left,
        right=settings.outpaint_right,
        overlap=settings.outpaint_overlap,
    )
    prepared.image, prepared.mask, prepared.notes[IMAGE_INPUT] = canvas.image, canvas.mask, canvas.note
    _note_paste_back(settings, prepared)


def _note_paste_back(settings: Settings, prepared: Prepared) -> None:
    """Say in the image's note that the decoder's picture will be pasted back over it, when it will."""
    if settings.paste_back:
        prepared.notes[IMAGE_INPUT] += (
            f"; paste_back: kept exactly outside the repainted area, blended over {PASTE_BACK_FEATHER} pixels inside"
        )


def _prepare_depth(settings: Settings, inputs: Inputs, prepared: Prepared, runtime: Runtime) -> None:
    """The depth map as the ControlNet hint (``images.depth_hint``); with depth_model set, the photo instead, fitted
    to the output size (``_fit_image``), whose depth ``generation.estimate_depth`` estimates once the models are
    loaded (``hint`` stays None until then).

    Raises ``InputError`` for a depth map given beside depth_model: it would not be read."""
    if estimates_depth(settings.mode, settings.depth_model):
        if inputs.depth is not None:
            raise InputError(
                f"{settings.mode} input '{DEPTH_INPUT}': a depth map was given, but depth_model "
                f"({settings.depth_model!r}) estimates the depth from input '{IMAGE_INPUT}'; accepted: a depth map "
                "with depth_model empty, or a photo (input 'image') with depth_model set."
            )
        _fit_image(settings, inputs, prepared)
        return
    prepared.hint, prepared.notes[DEPTH_INPUT] = depth_hint(
        inputs.depth,
        f"{settings.mode} input '{DEPTH_INPUT}'",
        settings.height,
        settings.width,
        runtime.device,
        runtime.dtype,
    )


def _prepare_image_and_depth(settings: Settings, inputs: Inputs, prepared: Prepared, runtime: Runtime) -> None:
    """The input image fitted as in img2img, and the depth map as the ControlNet hint; with depth_model set, the
    depth is estimated from that image once the models are loaded (``_prepare_depth``)."""
    if not estimates_depth(settings.mode, settings.depth_model):
        _fit_image(settings, inputs, prepared)
    _prepare_depth(settings, inputs, prepared, runtime)


def _prepare_mix(settings: Settings, inputs: Inputs, prepared: Prepared, runtime: Runtime) -> None:
    """mix's images as PIL images at their own size: CLIP's image processor brings them to its input size."""
    names = input_names("mix", settings.mix_images)
    given = (*inputs.mix_images, *[None] * len(names))[: len(names)]
    arrays = [as_rgb(array, f"mix input '{name}'") for name, array in zip(names, given, strict=True)]
    prepared.mix_images = tuple(Image.fromarray(array) for array in arrays)
    for name, array in zip(names, arrays, strict=True):
        prepared.notes[name] = f"{array.shape[1]}x{array.shape[0]}"


def _decode_plain(
    decoder: DiffusionPipeline, settings: Settings, prepared: Prepared, arguments: dict, callback: StepEndCallback
) -> np.ndarray:
    """``KandinskyV22Pipeline``: the embeddings alone."""
    return decoder(**arguments, callback_on_step_end=callback).images


def _decode_img2img(
    decoder: DiffusionPipeline, settings: Settings, prepared: Prepared, arguments: dict, callback: StepEndCallback
) -> np.ndarray:
    """``KandinskyV22Img2ImgPipeline`` over the text2img decoder's components, from the input image."""
    pipeline = over_components(KandinskyV22Img2ImgPipeline, decoder)
    image = [Image.fromarray(prepared.image)] * settings.num_images
    return pipeline(**arguments, image=image, strength=settings.strength, callback_on_step_end=callback).images


def _decode_inpaint(
    decoder: DiffusionPipeline, settings: Settings, prepared: Prepared, arguments: dict, callback: StepEndCallback
) -> np.ndarray:
    """``KandinskyV22InpaintPipeline``: the image, and the mask white (1) where to repaint; then, with paste_back,
    the input put back where nothing is repainted (``paste_back``)."""
    count = settings.num_images
    pictures = decoder(
        **arguments, image=[prepared.image] * count, mask_image=[prepared.mask] * count, callback_on_step_end=callback
    ).images
    return paste_back(pictures, prepared.image, prepared.mask) if settings.paste_back else pictures


def paste_back(pictures: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The input put back over the decoder's pictures where nothing is repainted, the pictures blended in over a
    ramp inside the repainted area: alpha * picture + (1 - alpha) * image, alpha from ``images.paste_back_ramp``
    (0 where kept, rising to 1 at ``PASTE_BACK_FEATHER`` pixels inside the repainted area). diffusers' Kandinsky
    inpainting pipeline has no such step: it is the task's own, after diffusers' decoder, whose pixels it leaves
    as they are at the full ramp.

    Args:
        pictures: (num_images, height, width, 3) floats in 0..1, the decoder's output.
        image: height x width x 3 uint8, the input the decoder was given.
        mask: height x width float32, 1 where repainted.

    Returns:
        (num_images, height, width, 3) float32 in 0..1; where kept, exactly image / 255, which
        ``generation.to_uint8`` brings back to the input's own values.
    """
    alpha = paste_back_ramp(mask)[None, :, :, None]
    return alpha * pictures + (1 - alpha) * (image.astype(np.float32) / 255)


def _decode_controlnet(
    decoder: DiffusionPipeline, settings: Settings, prepared: Prepared, arguments: dict, callback: StepEndCallback
) -> np.ndarray:
    """``KandinskyV22ControlnetPipeline``: the hint, one per picture."""
    return decoder(
        **arguments, hint=prepared.hint.repeat(settings.num_images, 1, 1, 1), **_legacy(decoder, callback)
    ).images


def _decode_controlnet_img2img(
    decoder: DiffusionPipeline, settings: Settings, prepared: Prepared, arguments: dict, callback: StepEndCallback
) -> np.ndarray:
    """``KandinskyV22ControlnetImg2ImgPipeline`` over the ControlNet decoder's components: the input image,
    ``strength``, and the hint, one per picture."""
    pipeline = over_components(KandinskyV22ControlnetImg2ImgPipeline, decoder)
    return pipeline(
        **arguments,
        image=[Image.fromarray(prepared.image)] * settings.num_images,
        strength=settings.strength,
        hint=prepared.hint.repeat(settings.num_images, 1, 1, 1),
        **_legacy(pipeline, callback),
    ).images


def _legacy(pipeline: DiffusionPipeline, callback: StepEndCallback) -> dict:
    """The step callback as the arguments of the legacy per-step callback, the only one diffusers' ControlNet
    pipelines take."""
    return {
        "callback": lambda step, timestep, latents: callback(pipeline, step, timestep, {}),
        "callback_steps": 1,
    }


def over_components(pipeline_class: type[DiffusionPipeline], decoder: DiffusionPipeline) -> DiffusionPipeline:
    """A ``pipeline_class`` (an image-to-image pipeline) over a loaded decoder's own components: nothing is
    loaded again.

    Workaround of a diffusers bug (diffusers 0.40.0 to 0.42.1, tests/test_upstream.py): its image-to-image
    pipelines call their resizer with height and width swapped (asked for 64 tall x 128 wide, it returns 64
    wide x 128 tall), so the resizer is replaced by one that does not resize: the input already has the
    output size (see ``images.fit``).
    """
    pipeline = pipeline_class(**decoder.components)
    cut_by_order(pipeline)
    pipeline.image_processor = VaeImageProcessor(
        vae_scale_factor=2 ** (len(decoder.movq.config.block_out_channels) - 1),
        vae_latent_channels=decoder.movq.config.latent_channels,
        do_resize=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@dataclass(frozen=True)
class Mode:
    """One mode of the task, as every layer sees it.

    Attributes:
        name: the value of the ``mode`` parameter.
        help: what the mode does, for the ``mode`` parameter's help.
        decoder: the decoder it runs (``Decoder``).
        inputs: the names of the inputs the task offers, in order; ``MIX_INPUTS`` stands for ``mix_images``
            inputs.
        parameters: the parameters that only some modes read and this one does (the others read all the rest).
        check: refuses (``SettingsError``) settings whose values are each in range but do not fit together.
        prepare: checks the inputs and fills ``Prepared`` (raises ``InputError``), before any model is loaded.
        prior: the prior stage: the (image, negative) embeddings, (num_images, embedding size) each.
        prior_steps: the denoising steps of each prior run the stage makes, in order.
        decode: the decoder call, from the common arguments (embeddings, size, steps, guidance, generator,
            ``output_type`` "np") and a step callback; returns (num_images, height, width, 3) floats in 0..1.
        decoder_steps: the denoising steps the decoder makes.
        embedded_inputs: the inputs the prior stage embeds with the prior repo's CLIP image encoder
            (``MIX_INPUTS`` stands for mix's images).
    """

    name: str
    help: str
    decoder: Decoder
    inputs: tuple[str, ...]
    parameters: tuple[str, ...] = ()
    check: Callable[[Settings], None] = _no_check
    prepare: Callable[[Settings, Inputs, Prepared, Runtime], None] = _no_inputs
    prior: Callable[[Pipelines, Settings, Prepared, torch.Generator, Callbacks], Embeddings] = text_prior
    prior_steps: Callable[[Settings], tuple[int, ...]] = _text_prior_runs
    decode: Callable[[DiffusionPipeline, Settings, Prepared, dict, StepEndCallback], np.ndarray] = _decode_plain
    decoder_steps: Callable[[Settings], int] = _all_steps
    embedded_inputs: tuple[str, ...] = ()


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("text2img", "from the prompt alone", TEXT2IMG_DECODER, ()),
        Mode(
            "img2img",
            "transform an input image",
            TEXT2IMG_DECODER,
            (IMAGE_INPUT,),
            parameters=("strength",),
            check=_check_strength,
            prepare=_prepare_image,
            decode=_decode_img2img,
            decoder_steps=strength_steps,
        ),
        Mode(
            "inpaint",
            "repaint the masked part of an image",
            INPAINT_DECODER,
            (IMAGE_INPUT, DRAWING_INPUT, MASK_INPUT),
            parameters=("mask_mode", "paste_back"),
            prepare=_prepare_inpaint,
            decode=_decode_inpaint,
        ),
        Mode(
            "outpaint",
            "extend an image past its borders",
            INPAINT_DECODER,
            (IMAGE_INPUT,),
            parameters=("paste_back", *OUTPAINT_MARGINS, "outpaint_overlap"),
            check=_check_outpaint,
            prepare=_prepare_outpaint,
            decode=_decode_inpaint,
        ),
        Mode(
            "controlnet_depth",
            "follow the layout of a depth map",
            CONTROLNET_DECODER,
            (DEPTH_INPUT,),
            parameters=("depth_model",),
            prepare=_prepare_depth,
            decode=_decode_controlnet,
        ),
        Mode(
            "controlnet_img2img",
            "transform an input image while following the layout of a depth map",
            CONTROLNET_DECODER,
            (IMAGE_INPUT, DEPTH_INPUT),
            parameters=("strength", "prior_strength", "depth_model"),
            check=_check_strengths,
            prepare=_prepare_image_and_depth,
            prior=emb2emb_prior,
            prior_steps=_emb2emb_prior_runs,
            decode=_decode_controlnet_img2img,
            decoder_steps=strength_steps,
            embedded_inputs=(IMAGE_INPUT,),
        ),
        Mode(
            "mix",
            "blend images and the prompt",
            TEXT2IMG_DECODER,
            (MIX_INPUTS,),
            parameters=("mix_images", "mix_weights"),
            check=_check_mix,
            prepare=_prepare_mix,
            prior=mix_prior,
            prior_steps=_mix_prior_runs,
            embedded_inputs=(MIX_INPUTS,),
        ),
    )
}

DECODER_ROLES = tuple(dict.fromkeys(mode.decoder.role for mode in MODES.values()))


def estimates_depth(mode: str, depth_model: str) -> bool:
    """Whether a run in ``mode`` estimates its depth map from a photo: depth_model is set and the mode reads a
    depth map (``DEPTH_INPUT``)."""
    return bool(depth_model) and DEPTH_INPUT in MODES[mode].inputs


def input_names(mode: str, mix_images: int = 2, depth_model: str = "") -> tuple[str, ...]:
    """The names of the inputs the task offers in ``mode``, in order (mix offers ``mix_images`` images).

    With ``depth_model`` set, a mode's depth map input gives way to the photo its depth is estimated from: the image
    input takes its place, or it is dropped when the mode reads the image already.
    """
    names = _expand(MODES[mode].inputs, mix_images)
    if estimates_depth(mode, depth_model):
        names = tuple(dict.fromkeys(IMAGE_INPUT if name == DEPTH_INPUT else name for name in names))
    return names


def embedded_input_names(mode: str, mix_images: int = 2) -> tuple[str, ...]:
    """The names of the inputs whose pictures the prior stage of ``mode`` embeds with CLIP."""
    return _expand(MODES[mode].embedded_inputs, mix_images)


def _expand(inputs: tuple[str, ...], mix_images: int) -> tuple[str, ...]:
    names: list[str] = []
    for name in inputs:
        if name == MIX_INPUTS:
            names += [MIX_INPUTS.format(number=number) for number in range(1, mix_images + 1)]
        else:
            names.append(name)
    return tuple(names)


def modes_reading(parameter_name: str) -> tuple[str, ...]:
    """The modes that read ``parameter_name``: those that list it, or every mode when none does."""
    listing = tuple(name for name, mode in MODES.items() if parameter_name in mode.parameters)
    return listing or tuple(MODES)
