"""A run's input images, checked and brought to the output size before any model is loaded.

Each mode's inputs come from the mode table (``modes.input_names``); each is read by what it is: the image fitted
to the output size (or placed on outpaint's canvas), inpaint's masks, the depth map as the ControlNet hint (or
the photo whose depth depth_model estimates once loaded, ``estimate_depth``), mix's pictures at their own size.
"""

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .images import (
    MAX_SCALED_PIXELS,
    PASTE_BACK_FEATHER,
    as_rgb,
    depth_hint,
    fit,
    kept_inverted,
    mask_from,
    outpaint_canvas,
)
from .models import DepthEstimator
from .modes import DEPTH_INPUT, DRAWING_INPUT, IMAGE_INPUT, MASK_INPUT, MODES, estimates_depth, input_names
from .parameters import Settings
from .runtime import Runtime

# A mix picture longer than this many times its width (or the reverse) is cut to its centre before CLIP's image
# processor, which would scale the whole of it until its shorter side is 224 pixels (Kandinsky 2.2's) and then keep
# only the centre square: past this ratio the scaled picture would hold more than ``images.MAX_SCALED_PIXELS``.
MIX_LONGEST_SIDE_RATIO = MAX_SCALED_PIXELS // 224**2


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
    """A run's inputs at the output size, ready for the stages, and notes on what was done to them.

    ``image``: height x width x 3 uint8 (outpaint: the canvas). ``mask``: height x width float32, 1 where to
    repaint (inpaint, outpaint). ``hint``: the ControlNet hint, (1, 3, height, width) in 0..1 on the run's device
    and dtype (None while a depth_model has yet to estimate it from ``image``, see ``estimate_depth``).
    ``mix_images``: PIL images at their own size. ``notes``: for every input read, its size and what was done to
    it.
    """

    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    hint: torch.Tensor | None = None
    mix_images: tuple[Image.Image, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)


def prepare_inputs(settings: Settings, inputs: Inputs, runtime: Runtime) -> Prepared:
    """Check and convert the inputs that ``settings.mode`` reads, before any model is loaded.

    Args:
        settings: checked settings (mode, height, width, mix_images, depth_model, mask_mode, outpaint's margins).
        inputs: the arrays given to the task: images as height x width x 3 (or 1, or 4 with alpha) uint8,
            uint16 or floats in 0..1; masks and depth maps as height x width or height x width x channels
            (``images.mask_from`` and ``images.depth_hint`` say how each dtype is read).
        runtime: the device and dtype of the hint.

    Returns:
        ``Prepared``: ``image`` as height x width x 3 uint8 at the output size (scaled to cover it and
        centre-cropped, never stretched), or outpaint's canvas (``images.outpaint_canvas``); inpaint's and
        outpaint's ``mask``, height x width float32, 1 where to repaint; the ControlNet modes' ``hint``, a
        (1, 3, height, width) tensor in 0..1 on the run's device and dtype, or with depth_model set, no hint yet
        (``estimate_depth`` makes it from ``image`` once the models are loaded); mix's images as PIL RGB images
        at their own size (CLIP's image processor resizes them). ``notes`` say, for every input read, its size
        and what was done to it (the run's metadata ``inputs``).

    Raises:
        InputError: an input the mode needs is missing, empty or unusable (wrong shape or dtype, a mask that
            repaints nothing, a uniform depth map), or a depth map given beside depth_model, which would not be
            read; the message names the mode and the input.
    """
    mode, prepared = MODES[settings.mode], Prepared()
    names = input_names(settings.mode, settings.mix_images, settings.depth_model)
    if estimates_depth(settings.mode, settings.depth_model) and inputs.depth is not None:
        raise InputError(
            f"{settings.mode} input '{DEPTH_INPUT}': a depth map was given, but depth_model "
            f"({settings.depth_model!r}) estimates the depth from input '{IMAGE_INPUT}'; accepted: a depth map "
            "with depth_model empty, or a photo (input 'image') with depth_model set."
        )
    if IMAGE_INPUT in names:
        name = f"{settings.mode} input '{IMAGE_INPUT}'"
        rgb = as_rgb(inputs.image, name)
        if mode.canvas:
            canvas = outpaint_canvas(
                rgb.array,
                name,
                settings.height,
                settings.width,
                top=settings.outpaint_top,
                bottom=settings.outpaint_bottom,
                left=settings.outpaint_left,
                right=settings.outpaint_right,
                overlap=settings.outpaint_overlap,
            )
            prepared.image, prepared.mask, note = canvas.image, canvas.mask, canvas.note
        else:
            fitted = fit(rgb.array, settings.height, settings.width)
            prepared.image, note = fitted.array, fitted.note
        prepared.notes[IMAGE_INPUT] = _with(note, rgb.note)
        if MASK_INPUT in names:
            _prepare_masks(settings, inputs, prepared, rgb.array.shape[:2])
    if DEPTH_INPUT in names:
        prepared.hint, prepared.notes[DEPTH_INPUT] = depth_hint(
            inputs.depth,
            f"{settings.mode} input '{DEPTH_INPUT}'",
            settings.height,
            settings.width,
            runtime.device,
            runtime.dtype,
        )
    if settings.reads("mix_images"):
        if len(inputs.mix_images) > len(names):
            raise InputError(
                f"mix: received {len(inputs.mix_images)} images with mix_images {settings.mix_images}; accepted: at "
                f"most {settings.mix_images}, one per input ('{names[0]}' to '{names[-1]}'), or a larger mix_images."
            )
        given = (*inputs.mix_images, *[None] * len(names))[: len(names)]
        pictures = []
        for name, array in zip(names, given, strict=True):
            rgb = as_rgb(array, f"mix input '{name}'")
            picture, (rows, columns) = rgb.array, rgb.array.shape[:2]
            prepared.notes[name] = _with(f"{columns}x{rows}", rgb.note)
            side = min(rows, columns)
            if max(rows, columns) > MIX_LONGEST_SIDE_RATIO * side:
                # CLIP's image processor scales the whole picture before it cuts the centre square out: the square
                # is kept, with half a side more on each end for the scaling filter to read.
                length = side + 2 * (side // 2 + 2)
                top, left = max(0, (rows - length) // 2), max(0, (columns - length) // 2)
                picture = picture[top : top + length, left : left + length]
                kept = f"{picture.shape[1]}x{picture.shape[0]}"
                prepared.notes[name] += f"; its centre {kept} kept (all that CLIP reads of it, within half a pixel)"
            pictures.append(Image.fromarray(picture))
        prepared.mix_images = tuple(pictures)
    if settings.reads("paste_back") and settings.paste_back:
        prepared.notes[IMAGE_INPUT] += (
            f"; paste_back: kept exactly outside the repainted area, blended over {PASTE_BACK_FEATHER} pixels inside"
        )
    return prepared


def _with(note: str, conversion: str) -> str:
    """An input's note with what was done to its values, when anything was (``images.as_rgb``)."""
    return f"{note}; {conversion}" if conversion else note


def _prepare_masks(settings: Settings, inputs: Inputs, prepared: Prepared, image_shape: tuple[int, int]) -> None:
    """inpaint's drawn mask and mask image combined (one is enough), fitted as the image is; with mask_mode keep,
    the combined mask inverted (``images.kept_inverted``)."""
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


def estimate_depth(estimator: DepthEstimator, settings: Settings, prepared: Prepared, runtime: Runtime) -> Prepared:
    """``prepared`` with the ControlNet hint estimated from its photo by depth_model, as diffusers' Kandinsky
    ControlNet guide makes it (``make_hint``): the depth-estimation pipeline's ``depth`` (uint8, near bright,
    stretched to 0..255 per image; turned over for a model that predicts distance, ``models.predicts_distance``)
    over three channels, divided by 255 (``images.depth_hint``).

    Args:
        estimator: depth_model, loaded (``models.DepthEstimator``).
        settings: checked settings (mode, depth_model, height, width).
        prepared: what ``prepare_inputs`` made: ``image``, the photo at the output size (height x width x 3
            uint8), and its note.
        runtime: the device and dtype of the hint.

    Returns:
        A copy of ``prepared`` whose ``hint`` is (1, 3, height, width) in 0..1 on the run's device and dtype, and
        whose image note says which model estimated the depth.

    Raises:
        InputError: naming depth_model, when the estimate is the same everywhere (no layout to follow).
    """
    name = f"{settings.mode} input '{IMAGE_INPUT}'"
    try:
        hint, _ = depth_hint(
            estimator.estimate(prepared.image), name, settings.height, settings.width, runtime.device, runtime.dtype
        )
    except InputError as error:
        # The estimate has the photo's size and uint8 values: being uniform is all that depth_hint can refuse.
        raise InputError(
            f"depth_model: {settings.depth_model!r} estimated the same depth everywhere in {name}: there is no layout "
            f"for ControlNet to follow; accepted: a photo whose depth the model can tell apart, or a depth map "
            f"(input '{DEPTH_INPUT}') with depth_model empty."
        ) from error
    note = f"{prepared.notes[IMAGE_INPUT]}; depth estimated by {settings.depth_model}"
    if estimator.distance:
        note += ", which predicts distance: turned over, near bright"
    return replace(prepared, hint=hint, notes={**prepared.notes, IMAGE_INPUT: note})
