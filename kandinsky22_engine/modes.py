"""Every mode of the task, defined once.

``MODES`` holds one ``Mode`` per mode: the decoder it uses (cache role, diffusers pipeline, the UNet it
needs, its default repo), the inputs the task offers for it, the parameters only it reads, how its inputs
are checked and prepared, its prior stage, its decoder call and how many denoising steps each stage runs.
The task's inputs, the widget, the README's mode table, progress counting and validation all read this
table; adding a mode is one entry and its own functions. ``generation.py`` runs a mode's stages in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
)
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from .images import InputError, as_rgb, depth_hint, fit, mask_from

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

    ``image``: the input named "image" (img2img, inpaint; a photo to estimate depth from). ``mask`` and
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

    ``image``: height x width x 3 uint8. ``mask``: height x width float32, 1 where to repaint. ``hint``: the
    ControlNet hint, (1, 3, height, width) in 0..1 on the run's device and dtype (None while a depth_model has yet
    to estimate it from ``image``, see ``generation.estimate_depth``). ``mix_images``: PIL images
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
    return min(int(settings.num_inference_steps * settings.strength), settings.num_inference_steps)


def _check_strength(settings: Settings) -> None:
    if strength_steps(settings) < 1:
        from .parameters import SettingsError

        raise SettingsError(
            f"strength: received '{settings.strength}' with num_inference_steps {settings.num_inference_steps}; "
            f"accepted: a strength that leaves {settings.mode} at least one decoder step "
            "(num_inference_steps x strength >= 1)."
        )


def _check_mix(settings: Settings) -> None:
    settings.mix_weight_values()


def _one_prior_run(settings: Settings) -> tuple[int, ...]:
    return (settings.prior_num_inference_steps,)


def text_prior(
    pipelines: Pipelines, settings: Settings, prepared: Prepared, generator: torch.Generator, callbacks: Callbacks
) -> Embeddings:
    """The prior stage of ``KandinskyV22CombinedPipeline``: one prior run on the prompt, guided away from the
    negative prompt, gives the image embedding of every picture and the negative embedding (the negative
    prompt's, or the zero-image embedding when it is empty)."""
    return pipelines.prior(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt or None,
        num_images_per_prompt=settings.num_images,
        num_inference_steps=settings.prior_num_inference_steps,
        guidance_scale=settings.prior_guidance_scale,
        generator=generator,
        output_type="pt",
        return_dict=False,
        callback_on_step_end=callbacks(settings.prior_num_inference_steps),
    )


def _mix_prior_runs(settings: Settings) -> tuple[int, ...]:
    return (settings.prior_num_inference_steps,) * (2 if settings.prompt else 1)


def mix_prior(
    pipelines: Pipelines, settings: Settings, prepared: Prepared, generator: torch.Generator, callbacks: Callbacks
) -> Embeddings:
    """The weighted sum of the items' image embeddings, and the negative embedding.

    This is ``KandinskyV22PriorPipeline.interpolate`` step for step (the images, then the prompt), with the
    step callback passed to every prior run, which ``interpolate`` cannot do: progress and stop then work in
    mix as in every other mode. An empty negative prompt gives the zero-image embedding as the negative.
    """
    prior, encoder = pipelines.prior, pipelines.image_encoder
    processor = prior.image_processor
    items: list[Image.Image | str] = [*prepared.mix_images, *([settings.prompt] if settings.prompt else [])]
    prior_arguments = {
        "num_images_per_prompt": settings.num_images,
        "num_inference_steps": settings.prior_num_inference_steps,
        "guidance_scale": settings.prior_guidance_scale,
        "generator": generator,
    }
    weighted = []
    for item, weight in zip(items, settings.mix_weight_values(), strict=True):
        if isinstance(item, str):
            callback = callbacks(settings.prior_num_inference_steps)
            embedding = prior(item, **prior_arguments, callback_on_step_end=callback).image_embeds.unsqueeze(0)
        else:
            pixels = processor(item, return_tensors="pt").pixel_values[0].unsqueeze(0)
            embedding = encoder.embed(pixels).repeat(settings.num_images, 1).unsqueeze(0)
        weighted.append(embedding * weight)
    callback = callbacks(settings.prior_num_inference_steps)
    negative = prior(settings.negative_prompt, **prior_arguments, callback_on_step_end=callback)
    negative_embeds = negative.negative_image_embeds if settings.negative_prompt == "" else negative.image_embeds
    return torch.cat(weighted).sum(dim=0), negative_embeds


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
    """The image, and the drawn mask and the mask image combined (one is enough), fitted as the image is."""
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
    """``KandinskyV22InpaintPipeline``: the image, and the mask white (1) where to repaint."""
    count = settings.num_images
    return decoder(
        **arguments, image=[prepared.image] * count, mask_image=[prepared.mask] * count, callback_on_step_end=callback
    ).images


def _decode_controlnet(
    decoder: DiffusionPipeline, settings: Settings, prepared: Prepared, arguments: dict, callback: StepEndCallback
) -> np.ndarray:
    """``KandinskyV22ControlnetPipeline``: the hint, one per picture; it takes only the legacy step callback."""
    return decoder(
        **arguments,
        hint=prepared.hint.repeat(settings.num_images, 1, 1, 1),
        callback=lambda step, timestep, latents: callback(decoder, step, timestep, {}),
        callback_steps=1,
    ).images


def over_components(pipeline_class: type[DiffusionPipeline], decoder: DiffusionPipeline) -> DiffusionPipeline:
    """A ``pipeline_class`` (an image-to-image pipeline) over a loaded decoder's own components: nothing is
    loaded again.

    Workaround of a diffusers bug (diffusers 0.40.0 to 0.42.1, tests/test_upstream.py): its image-to-image
    pipelines call their resizer with height and width swapped (asked for 64 tall x 128 wide, it returns 64
    wide x 128 tall), so the resizer is replaced by one that does not resize: the input already has the
    output size (see ``images.fit``).
    """
    pipeline = pipeline_class(**decoder.components)
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
        embeds_images: the mode embeds images with the prior repo's CLIP image encoder.
    """

    name: str
    help: str
    decoder: Decoder
    inputs: tuple[str, ...]
    parameters: tuple[str, ...] = ()
    check: Callable[[Settings], None] = _no_check
    prepare: Callable[[Settings, Inputs, Prepared, Runtime], None] = _no_inputs
    prior: Callable[[Pipelines, Settings, Prepared, torch.Generator, Callbacks], Embeddings] = text_prior
    prior_steps: Callable[[Settings], tuple[int, ...]] = _one_prior_run
    decode: Callable[[DiffusionPipeline, Settings, Prepared, dict, StepEndCallback], np.ndarray] = _decode_plain
    decoder_steps: Callable[[Settings], int] = _all_steps
    embeds_images: bool = False


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
            prepare=_prepare_inpaint,
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
            "mix",
            "blend images and the prompt",
            TEXT2IMG_DECODER,
            (MIX_INPUTS,),
            parameters=("mix_images", "mix_weights"),
            check=_check_mix,
            prepare=_prepare_mix,
            prior=mix_prior,
            prior_steps=_mix_prior_runs,
            embeds_images=True,
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
    names: list[str] = []
    for name in MODES[mode].inputs:
        if name == MIX_INPUTS:
            names += [MIX_INPUTS.format(number=number) for number in range(1, mix_images + 1)]
        elif name == DEPTH_INPUT and estimates_depth(mode, depth_model):
            names.append(IMAGE_INPUT)
        else:
            names.append(name)
    return tuple(dict.fromkeys(names))


def modes_reading(parameter_name: str) -> tuple[str, ...]:
    """The modes that read ``parameter_name``: those that list it, or every mode when none does."""
    listing = tuple(name for name, mode in MODES.items() if parameter_name in mode.parameters)
    return listing or tuple(MODES)
