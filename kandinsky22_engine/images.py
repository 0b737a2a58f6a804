"""Input images, masks and depth maps, brought to the size of the image to generate.

An input whose size differs from height x width is scaled, keeping its aspect, until it covers
that size, then its centre is cut out: nothing is stretched. What was done is returned as a note
for the run's metadata. Masks and depth maps go through the same geometry as the image they belong
to, so they keep their orientation on non-square images.
"""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .errors import InputError


@dataclass(frozen=True)
class Fitted:
    """An array brought to the output size, and how."""

    array: np.ndarray
    note: str


def _channels(array: np.ndarray | None, name: str) -> np.ndarray:
    """``array`` as height x width x channels (1, 3 or 4), or ``InputError``."""
    if array is None or array.size == 0:
        raise InputError(f"{name}: no image was given.")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(
            f"{name}: received an array of shape {array.shape}; accepted: height x width, with 1, 3 or 4 channels."
        )
    return array


def as_rgb(array: np.ndarray | None, name: str) -> Fitted:
    """An H x W x 3 uint8 RGB copy of an Ikomia image, and what was done to it ("" when nothing was).

    Gray images are repeated over the three channels. RGBA images lose their alpha: the colours under transparent
    pixels reach the model as they are, and the note says how much of the image was transparent. 16-bit images
    are read by the bits their values use (``_sixteen_bits``), floats from 0 to 1 brought to 8 bits.

    Raises ``InputError`` naming ``name`` for a missing or empty array, another shape, or values it cannot read.
    """
    channels = _channels(array, name)
    converted, how = _to_uint8(channels[:, :, :3] if channels.shape[2] == 4 else channels, name)
    notes = [how] if how else []
    if channels.shape[2] == 1:
        converted = np.repeat(converted, 3, axis=2)
        notes.append("gray, repeated to RGB")
    elif channels.shape[2] == 4:
        transparent = float(_transparent(channels[:, :, 3]).mean(dtype=np.float64))
        notes.append(f"RGBA, alpha dropped ({_percent(transparent)} of the pixels transparent, their colours kept)")
    return Fitted(np.ascontiguousarray(converted), ", ".join(notes))


# The bits a 16-bit image's values may use: 8-bit values in a 16-bit file, the 10-, 12- and 14-bit values of raw
# converters, scientific and medical cameras, or all 16.
_SIXTEEN_BIT_DEPTHS = (8, 10, 12, 14, 16)


def _bits_used(values: np.ndarray) -> int:
    """The fewest bits of ``_SIXTEEN_BIT_DEPTHS`` that hold the largest of ``values`` (uint16): 12 for 0 to 4080."""
    high = int(values.max())
    return next(depth for depth in _SIXTEEN_BIT_DEPTHS if high < 2**depth)


def _transparent(alpha: np.ndarray) -> np.ndarray:
    """The pixels an alpha channel makes transparent: below half its scale (128 in uint8, 0.5 in floats, False in
    bool; in uint16, half the range of the bits its values use, ``_bits_used``, so that 4095 is opaque in a
    12-bit image)."""
    if alpha.dtype == np.bool_:
        return ~alpha
    if alpha.dtype == np.uint16:
        return alpha < 2 ** (_bits_used(alpha) - 1)
    return alpha < (128 if alpha.dtype == np.uint8 else 0.5)


def _sixteen_bits(array: np.ndarray) -> tuple[np.ndarray, str]:
    """A uint16 image at 8 bits: its values read as the bits they use (``_bits_used``), then their top 8 bits
    kept, as 16-bit images are brought to 8. An RGBA image's colours are read apart from its alpha."""
    bits = _bits_used(array)
    high = int(array.max())
    converted = (array >> (bits - 8)).astype(np.uint8)
    if bits == 16:
        return converted, "16-bit, brought to 8 bits"
    return converted, f"16-bit holding {bits}-bit values (0 to {high}), brought to 8 bits"


def _to_uint8(array: np.ndarray, name: str) -> tuple[np.ndarray, str]:
    """``array`` as uint8, and how it was converted ("" when it was uint8 already)."""
    if array.dtype == np.uint8:
        return array, ""
    if array.dtype == np.uint16:
        return _sixteen_bits(array)
    accepted = "accepted: uint8, uint16, or floats from 0 to 1."
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{name}: received {array.dtype} values; {accepted}")
    if not np.isfinite(array).all():
        raise InputError(f"{name}: received {array.dtype} values that are not finite (NaN or infinite); {accepted}")
    low, high = array.min(), array.max()
    if not 0 <= low <= high <= 1:
        raise InputError(f"{name}: received {array.dtype} values from {low:g} to {high:g}; {accepted}")
    return (array * 255).round().astype(np.uint8), f"{array.dtype} values from 0 to 1, brought to 8 bits"


# The most pixels ``fit`` scales a whole input to before it cuts the centre out (16.8 million, 48 MB in RGB): an
# input of another aspect than the output is scaled only over the part kept when its whole would be larger.
MAX_SCALED_PIXELS = 2**24


def fit(array: np.ndarray, height: int, width: int, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Fitted:
    """Scale ``array`` to cover height x width, keeping its aspect, and cut out the centre.

    Where the whole input, scaled, would hold more than ``MAX_SCALED_PIXELS`` (a thin strip: 4 x 4000 pixels to
    cover 2048 x 2048 would be 2,048,000 x 2,048), only the part that survives the cut is scaled (PIL's resize
    ``box``), to the same geometry; its pixels may then differ by a few levels from a whole scaling's.
    """
    rows, columns = array.shape[:2]
    if (rows, columns) == (height, width):
        return Fitted(array, f"{columns}x{rows}, used as it is")
    scale = max(height / rows, width / columns)
    scaled_rows, scaled_columns = max(height, round(rows * scale)), max(width, round(columns * scale))
    top, left = (scaled_rows - height) // 2, (scaled_columns - width) // 2
    if scaled_rows * scaled_columns > MAX_SCALED_PIXELS:
        row_step, column_step = rows / scaled_rows, columns / scaled_columns
        kept = (left * column_step, top * row_step, (left + width) * column_step, (top + height) * row_step)
        image = Image.fromarray(array).resize((width, height), resample=resample, box=kept, reducing_gap=1)
        cropped = np.asarray(image)
    else:
        image = Image.fromarray(array).resize((scaled_columns, scaled_rows), resample=resample, reducing_gap=1)
        cropped = np.asarray(image.crop((left, top, left + width, top + height)))
    cut = f"centre cut, {scaled_columns - width} x {scaled_rows - height} pixels left out" if top or left else ""
    if (scaled_rows, scaled_columns) == (rows, columns):
        return Fitted(cropped, f"{columns}x{rows}, {cut}")
    return Fitted(cropped, f"{columns}x{rows} scaled to {scaled_columns}x{scaled_rows}" + (f", {cut}" if cut else ""))


def _value(number: np.generic) -> str:
    """A value received, as a message shows it: integers in full, floats in short."""
    return str(int(number)) if np.issubdtype(number.dtype, np.integer) else f"{float(number):g}"


def _percent(fraction: float) -> str:
    """``fraction`` as a percentage, with the decimals needed to tell a part from none or all."""
    percent = 100 * fraction
    decimals = 0
    while 0 < percent < 100 and round(percent, decimals) in (0, 100):
        decimals += 1
    return f"{percent:.{decimals}f}%"


@dataclass(frozen=True)
class _Reading:
    """What the colour channels of a mask repaint, and the words for it."""

    repaint: np.ndarray  # bool, height x width
    how: str  # how the mask was read, for the note
    empty: str  # what the channels hold when they repaint nothing
    accepted: str  # what marks a pixel to repaint in this dtype


def _read_colours(channels: np.ndarray, name: str) -> _Reading:
    """How the colour channels of a mask, combined by their maximum, mark the pixels to repaint."""
    dtype = channels.dtype
    colours = channels[:, :, :3].max(axis=2)
    white_or_labels = "white (or, in a label map, non-zero)"
    if dtype == np.bool_:
        return _Reading(colours, "bool: True repaints", "read as bool: no pixel is True", "True")
    if dtype in (np.uint8, np.uint16):
        # 16-bit masks are read by the bits their values use, as 16-bit images are (``as_rgb``).
        depth = 8 if dtype == np.uint8 else _bits_used(colours)
        half, bits = (
            2 ** (depth - 1),
            "8-bit" if dtype == np.uint8 else "16-bit" + (f" (as {depth}-bit)" if depth < 16 else ""),
        )
        empty = f"read as a label map, no {bits} value reaching {half}: every pixel is 0"
        # A label map (0 and 1, or class indices) holds no light value; a picture of a mask does.
        if colours.max() < half:
            return _Reading(colours != 0, "label map: non-zero repaints", empty, white_or_labels)
        return _Reading(colours >= half, f"picture: white repaints ({bits} values from {half})", empty, white_or_labels)
    if np.issubdtype(dtype, np.integer):
        if channels.min() < 0:
            raise InputError(
                f"{name}: received {dtype} values down to {_value(channels.min())}; accepted: non-negative "
                "integers (label maps: non-zero repaints; uint8 and uint16 pictures: white repaints), bool, or floats "
                "from 0 to 1."
            )
        return _Reading(
            colours != 0,
            "label map: non-zero repaints",
            f"read as a label map of {dtype} values: every pixel is 0",
            "non-zero",
        )
    if np.issubdtype(dtype, np.floating):
        if not np.isfinite(channels).all():
            raise InputError(
                f"{name}: received {dtype} values that are not finite (NaN or infinite); accepted: floats from 0 to 1."
            )
        if channels.min() < 0 or channels.max() > 1:
            raise InputError(
                f"{name}: received {dtype} values from {_value(channels.min())} to {_value(channels.max())}; "
                "accepted: floats from 0 to 1 (0.5 and above repaint)."
            )
        return _Reading(
            colours >= 0.5,
            "floats: 0.5 and above repaint",
            f"read as floats: no value reaches 0.5, the highest is {_value(colours.max())}",
            "values from 0.5 to 1",
        )
    raise InputError(
        f"{name}: received {dtype} values; accepted: bool, uint8 or uint16 pictures (white repaints), "
        "integer label maps (non-zero repaints), or floats from 0 to 1 (0.5 and above repaint)."
    )


def _alpha_words(alpha: np.ndarray) -> str | None:
    """How a mask alpha channel's transparent values read (``_transparent``), or None for integers other than
    uint8 and uint16: they have no opacity scale, so their alpha is not read."""
    if alpha.dtype == np.bool_:
        return "False"
    if alpha.dtype in (np.uint8, np.uint16):
        return f"below {128 if alpha.dtype == np.uint8 else 2 ** (_bits_used(alpha) - 1)}"
    if np.issubdtype(alpha.dtype, np.floating):
        return "below 0.5"
    return None


def _read_mask(channels: np.ndarray, name: str) -> tuple[np.ndarray, str]:
    """The pixels a mask repaints (bool, height x width) and how it was read; ``InputError`` when there are none."""
    reading = _read_colours(channels, name)
    transparent_words = _alpha_words(channels[:, :, 3]) if channels.shape[2] == 4 else None
    if transparent_words is not None:
        transparent = _transparent(channels[:, :, 3])
        if transparent.any():
            kept = ~transparent
            colours = channels[:, :, :3][kept]
            if kept.any() and (colours == colours[0]).all() and reading.repaint[kept].all():
                # One colour that marks, painted on a transparent layer: what is painted repaints.
                return kept, "painted on a transparent layer: the opaque pixels, of one colour that marks, repaint"
            # OpenAI's image-edit masks: the picture itself, with the part to repaint made transparent.
            return transparent, f"alpha: transparent repaints (alpha {transparent_words})"
    if reading.repaint.any():
        return reading.repaint, reading.how + (", alpha ignored" if channels.shape[2] == 4 else "")
    nothing = f"{name}: the mask repaints nothing"
    if channels.shape[2] != 4:
        raise InputError(f"{nothing} ({reading.empty}); accepted: {reading.accepted} where to repaint.")
    if transparent_words is None:
        raise InputError(
            f"{nothing} ({reading.empty}; the alpha channel is not read for {channels.dtype} values); "
            f"accepted: {reading.accepted} where to repaint."
        )
    raise InputError(
        f"{nothing} ({reading.empty}; no pixel is transparent, alpha {transparent_words}); accepted: "
        f"{reading.accepted}, or transparent (alpha {transparent_words}), where to repaint."
    )


def mask_from(array: np.ndarray, name: str, image_shape: tuple[int, int], height: int, width: int) -> Fitted:
    """The inpaint mask at the output size, and a note on how it was read and fitted.

    Args:
        array: the mask, of the image's size: height x width, with no channel axis or 1, 3 or 4 channels.
            Its colour channels are combined by their maximum (a mask in any one channel counts), then read
            by dtype: bool: True repaints. uint8 and uint16: when no value reaches half the range (128,
            32768) it is a label map and every non-zero value repaints (0/1 masks, class indices);
            otherwise it is a picture and values from half the range up repaint (white). Other integers:
            a label map, non-zero repaints. Floats, from 0 to 1: 0.5 and above repaint (diffusers' own
            threshold). With 4 channels, when some pixels are transparent (alpha below half its range, 0.5
            for floats; False for bool): if the opaque pixels all have one colour that marks (a mask painted on
            a transparent layer), they repaint; otherwise the transparent pixels repaint, as in OpenAI's
            image-edit masks (the picture itself, with the part to edit erased). With no transparent pixel, the
            alpha is ignored. The alpha of other integer dtypes is never read.
        name: the input, as messages name it, e.g. "inpaint input 'mask'".
        image_shape: (rows, columns) of the image the mask belongs to.
        height, width: the output size; the mask is fitted as its image is (``fit``), by nearest neighbour.

    Returns:
        ``Fitted``: a float32 height x width array, 1 where to repaint and 0 elsewhere, and a note, e.g.
        "128x64, used as it is; label map: non-zero repaints; 50% repainted".

    Raises:
        InputError: naming ``name``, when the array is missing, of another shape or size than its image, of
            another dtype, holds negative integers, non-finite floats or floats outside 0 to 1, repaints
            nothing, or repaints nothing in the part of the image that is kept at the output size.
    """
    channels = _channels(array, name)
    rows, columns = channels.shape[:2]
    if (rows, columns) != tuple(image_shape):
        raise InputError(
            f"{name}: the mask is {columns}x{rows} but the image is {image_shape[1]}x{image_shape[0]}; "
            "accepted: a mask of the image's size."
        )
    repaint, how = _read_mask(channels, name)
    binary = repaint.astype(np.uint8) * 255
    fitted = fit(binary, height, width, Image.Resampling.NEAREST)
    mask = (fitted.array > 127).astype(np.float32)
    if not mask.any():
        # An area filter keeps any trace of what nearest neighbour dropped: a part too thin, not a part cut away.
        if fit(binary, height, width, Image.Resampling.BOX).array.any():
            raise InputError(
                f"{name}: the mask repaints nothing once scaled to {width}x{height} ({fitted.note}): what it "
                "repaints is too thin to survive the scaling; accepted: a mask that repaints at least a pixel "
                "of the output size."
            )
        raise InputError(
            f"{name}: the mask repaints nothing once fitted to {width}x{height} ({fitted.note}): the part it "
            "repaints lies outside the centre of the image that is kept; accepted: a mask that repaints inside "
            "that centre."
        )
    return Fitted(mask, f"{fitted.note}; {how}; {_percent(float(mask.mean(dtype=np.float64)))} repainted")


def depth_hint(
    array: np.ndarray, name: str, height: int, width: int, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, str]:
    """The ControlNet hint, a (1, 3, height, width) tensor in [0, 1] on the pipeline's device and dtype, and a note.

    The hint is gray, near bright, repeated over three channels, as in diffusers' example. ``array`` is
    height x width, with no channel axis or 1, 3 or 4 channels (alpha is ignored). A colour depth map is
    turned to gray by its luma (ITU-R BT.601), which keeps the depth order of an inferno-coloured map (what
    Ikomia HUB's infer_depth_anything outputs) but not of a rainbow one (jet, turbo). The gray values are read
    by dtype:

    - uint8: near bright, divided by 255, as diffusers' example does.
    - floats from 0 to 1: near bright, used as they are.
    - uint16, other integers and floats outside 0 to 1 (negative ones included): raw depth or disparity, such
      as a depth estimator's ``predicted_depth``, normalised so that the minimum becomes 0 and the maximum 1,
      larger values read as nearer: the output of relative depth estimators (MiDaS, DPT, Depth Anything) is
      disparity. A metric depth map (a distance, small when near) must be inverted first, e.g. ``1 / depth``.

    The map is fitted to height x width as its image would be (``fit``, bicubic); the note says how, and how
    the values were read when they were not used as they are.

    Raises:
        InputError: naming ``name``, when the array is missing, of another shape, of bool or a non-numeric
            dtype, holds non-finite floats, or is uniform (the same value everywhere: no layout to follow),
            also once fitted to the output size.
    """
    channels = _channels(array, name)
    kind = channels.dtype
    if kind == np.bool_ or not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
        raise InputError(
            f"{name}: received {kind} values; accepted: a depth map of uint8 or of floats from 0 to 1 (near "
            "bright), or raw depth or disparity as uint16, other integers or other floats (normalised, larger "
            "is nearer)."
        )
    if np.issubdtype(kind, np.floating) and not np.isfinite(channels).all():
        raise InputError(
            f"{name}: received {kind} values that are not finite (NaN or infinite); accepted: finite values."
        )
    colours = channels[:, :, :3]
    gray, note = colours[:, :, 0], ", alpha dropped" if channels.shape[2] == 4 else ""
    if not (colours == colours[:, :, :1]).all():
        luma = colours @ np.array([0.299, 0.587, 0.114])
        gray = luma.round().astype(np.uint8) if kind == np.uint8 else luma
        note += ", colours turned to gray by luma"
    low, high = gray.min(), gray.max()
    if low == high:
        after = " once its colours are turned to gray by luma" if note else ""
        raise InputError(
            f"{name}: every pixel of the depth map is {_value(low)}{after}: it carries no layout for ControlNet "
            "to follow; accepted: a depth map whose values vary."
        )
    if kind == np.uint8:
        fitted = fit(np.ascontiguousarray(gray), height, width)
        hint = torch.from_numpy(fitted.array.copy()).float().div(255)
    else:
        if not (np.issubdtype(kind, np.floating) and colours.min() >= 0 and colours.max() <= 1):
            values = "16-bit" if kind == np.uint16 else str(kind)
            note += f"; {values} values {_value(low)} to {_value(high)} normalised to 0..1, larger is nearer"
            gray = (gray.astype(np.float64) - low) / (float(high) - float(low))
        fitted = fit(gray.astype(np.float32), height, width)
        # Bicubic scaling overshoots at edges; a uint8 image clips, floats do not.
        hint = torch.from_numpy(np.clip(fitted.array, 0, 1))
    if hint.min() == hint.max():
        raise InputError(
            f"{name}: the depth map is uniform once fitted to {width}x{height} ({fitted.note}): where it varies "
            "lies outside the centre of the image that is kept; accepted: a depth map whose values vary inside "
            "that centre."
        )
    hint = hint.unsqueeze(0).repeat(3, 1, 1).unsqueeze(0)
    return hint.to(device=device, dtype=dtype), fitted.note + note


def kept_inverted(mask: np.ndarray, name: str) -> Fitted:
    """The mask of mask_mode keep: ``mask`` (height x width float32, 1 where it marks) inverted, so that what it
    marks is kept and everything else is repainted, and a note, e.g. "mask_mode keep: inverted, 75% repainted".

    Raises:
        InputError: naming ``name`` (the mask inputs read, e.g. "inpaint input 'mask'") and mask_mode, when the
            mask marks every pixel once fitted: its inverse would repaint nothing.
    """
    inverse = 1 - mask
    if not inverse.any():
        rows, columns = mask.shape
        raise InputError(
            f"{name}: with mask_mode keep, what the mask marks is kept, and it marks the whole image once fitted to "
            f"{columns}x{rows}: nothing is left to repaint; accepted: a mask that leaves part of the image unmarked, "
            "or mask_mode repaint."
        )
    return Fitted(inverse, f"mask_mode keep: inverted, {_percent(float(inverse.mean(dtype=np.float64)))} repainted")


# How far inside the repainted area paste_back blends the generated picture in: one latent, 8 pixels (the MoVQ's
# scale factor), the step at which the inpainting decoder sees the mask.
PASTE_BACK_FEATHER = 8


def _eroded(area: np.ndarray) -> np.ndarray:
    """``area`` (bool) less every pixel with a pixel outside it among its 8 neighbours; the image's border is
    continued outward (edge padding), so it never erodes the area."""
    padded = np.pad(area, 1, mode="edge")
    rows = padded[:-2] & padded[1:-1] & padded[2:]
    return rows[:, :-2] & rows[:, 1:-1] & rows[:, 2:]


def paste_back_ramp(mask: np.ndarray, feather: int = PASTE_BACK_FEATHER) -> np.ndarray:
    """The weight of the generated picture in paste_back: min(d, feather) / feather, where d is the chessboard
    distance in pixels from a repainted pixel to the nearest kept pixel (0 on kept pixels).

    Why: the inpainting decoder sees the mask at latent resolution, one latent per 8 x 8 pixels (the MoVQ's scale
    factor), and its decoded picture differs slightly from the input even where nothing was repainted. Putting
    the input back outside the repainted area keeps it exactly; a ramp one latent wide (``PASTE_BACK_FEATHER``)
    hides the step this would leave at the edge of the repainted area.

    Args:
        mask: height x width, float32, 1 where repainted and 0 where kept (``Prepared.mask``).
        feather: the width of the ramp in pixels, 1 or more.

    Returns:
        height x width float32 in 0..1: 0 on kept pixels, k / feather on repainted pixels k pixels from the
        nearest kept one, 1 at ``feather`` pixels or more. The image's border does not count as kept: a repainted
        area that reaches it is not faded there. d is the number of 3 x 3 erosions of the repainted area that a
        pixel is in, plus one, counted up to ``feather``.
    """
    area = mask > 0.5
    distance = area.astype(np.float32)
    for _ in range(feather - 1):
        area = _eroded(area)
        distance += area
    return distance / feather


@dataclass(frozen=True)
class Canvas:
    """The picture outpaint starts from: ``image``, height x width x 3 uint8; ``mask``, height x width float32,
    1 where to paint; ``note``, what was done to the input."""

    image: np.ndarray
    mask: np.ndarray
    note: str


def _max_overlap(length: int, inner_edges: int) -> int | None:
    """The largest overlap that keeps part of an image side of ``length`` pixels whose ``inner_edges`` (0, 1 or 2)
    are repainted; None when no edge is."""
    return -(-length // inner_edges) - 1 if inner_edges else None


def outpaint_canvas(
    image: np.ndarray,
    name: str,
    height: int,
    width: int,
    *,
    top: int,
    bottom: int,
    left: int,
    right: int,
    overlap: int,
) -> Canvas:
    """The canvas and mask of outpaint: the image placed on a height x width canvas, the rest to paint.

    The image keeps its aspect: it is scaled (PIL bicubic, as ``fit`` scales) to fit inside the box the margins
    leave, (height - top - bottom) x (width - left - right) pixels, its sides rounded (1 pixel at least), and
    placed centred in that box (a pixel of slack goes below and to the right). The canvas holds the image where
    it lies; elsewhere it repeats the image's edge pixels outward (``np.pad`` mode "edge"): diffusers zeroes the
    latents of the area painted, but the MoVQ encoder's receptive field reaches across the seam, so it sees
    plausible colours there. The mask is 1 outside the placed image, and also over ``overlap`` pixels inside
    it along every edge that does not lie on the canvas border (so that the seam blends); 0 elsewhere.

    Args:
        image: height x width x 3 uint8 RGB (``as_rgb``).
        name: the input, as messages name it, e.g. "outpaint input 'image'".
        height, width: the canvas, the output size in pixels.
        top, bottom, left, right: the margins to paint, in pixels of the output; they leave a box of at least
            1 x 1 pixel (the mode's check asks for 64 x 64).
        overlap: pixels of the image repainted along each edge that borders a painted area, 0 or more.

    Returns:
        ``Canvas``, its note e.g. "640x480 scaled to 512x384, placed at left 128, top 192 of 768x768; 48% painted".

    Raises:
        InputError: naming ``name`` and outpaint_overlap, when the overlap repaints all of the placed image.
    """
    rows, columns = image.shape[:2]
    box_rows, box_columns = height - top - bottom, width - left - right
    scale = min(box_rows / rows, box_columns / columns)
    placed_rows, placed_columns = max(1, round(rows * scale)), max(1, round(columns * scale))
    placed, size = image, f"{columns}x{rows}"
    if (placed_rows, placed_columns) != (rows, columns):
        resized = Image.fromarray(image).resize(
            (placed_columns, placed_rows), resample=Image.Resampling.BICUBIC, reducing_gap=1
        )
        placed, size = np.asarray(resized), f"{size} scaled to {placed_columns}x{placed_rows}"
    row = top + (box_rows - placed_rows) // 2
    column = left + (box_columns - placed_columns) // 2
    end_row, end_column = row + placed_rows, column + placed_columns
    inner = {"top": row > 0, "bottom": end_row < height, "left": column > 0, "right": end_column < width}
    limits = [
        limit
        for limit in (
            _max_overlap(placed_rows, inner["top"] + inner["bottom"]),
            _max_overlap(placed_columns, inner["left"] + inner["right"]),
        )
        if limit is not None
    ]
    if limits and overlap > min(limits):
        raise InputError(
            f"{name}: scaled to {placed_columns}x{placed_rows} to fit inside the margins, the image is repainted "
            f"whole by outpaint_overlap {overlap}: none of it is kept; accepted: an outpaint_overlap of at most "
            f"{min(limits)} for this image, size and margins."
        )
    canvas = np.pad(placed, ((row, height - end_row), (column, width - end_column), (0, 0)), mode="edge")
    mask = np.ones((height, width), np.float32)
    mask[
        row + overlap * inner["top"] : end_row - overlap * inner["bottom"],
        column + overlap * inner["left"] : end_column - overlap * inner["right"],
    ] = 0
    painted = _percent(float(mask.mean(dtype=np.float64)))
    return Canvas(canvas, mask, f"{size}, placed at left {column}, top {row} of {width}x{height}; {painted} painted")


def paste_back(pictures: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The input put back over the decoder's pictures where nothing is repainted, the pictures blended in over a
    ramp inside the repainted area: alpha * picture + (1 - alpha) * image, alpha from ``paste_back_ramp`` (0 where
    kept, rising to 1 at ``PASTE_BACK_FEATHER`` pixels inside the repainted area). diffusers' Kandinsky inpainting
    pipeline has no such step: it is the task's own, after the decoder, whose pixels it leaves as they are at the
    full ramp.

    Args:
        pictures: (num_images, height, width, 3) floats in 0..1, the decoder's output.
        image: height x width x 3 uint8, the input the decoder was given.
        mask: height x width float32, 1 where repainted.

    Returns:
        (num_images, height, width, 3) float32 in 0..1; where kept, exactly image / 255, which rounding to uint8
        brings back to the input's own values.
    """
    alpha = paste_back_ramp(mask)[None, :, :, None]
    return alpha * pictures + (1 - alpha) * (image.astype(np.float32) / 255)
