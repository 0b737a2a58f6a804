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


class InputError(ValueError):
    """An input that a mode needs is missing or unusable; the message names it."""


@dataclass(frozen=True)
class Fitted:
    """An array brought to the output size, and how."""

    array: np.ndarray
    note: str


def as_rgb(array: np.ndarray | None, name: str) -> np.ndarray:
    """An H x W x 3 uint8 RGB copy of an Ikomia image (grayscale, RGB or RGBA, 8 or 16 bits, or float in [0, 1])."""
    if array is None or array.size == 0:
        raise InputError(f"{name}: no image was given.")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(
            f"{name}: received an array of shape {array.shape}; accepted: height x width, with 1, 3 or 4 channels."
        )
    array = _to_uint8(array, name)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and np.isfinite(array).all() and 0 <= array.min() <= array.max() <= 1:
        return (array * 255).round().astype(np.uint8)
    raise InputError(f"{name}: received {array.dtype} values; accepted: uint8, uint16, or floats from 0 to 1.")


def fit(array: np.ndarray, height: int, width: int, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Fitted:
    """Scale ``array`` to cover height x width, keeping its aspect, and cut out the centre."""
    rows, columns = array.shape[:2]
    if (rows, columns) == (height, width):
        return Fitted(array, f"{columns}x{rows}, used as it is")
    scale = max(height / rows, width / columns)
    scaled_rows, scaled_columns = max(height, round(rows * scale)), max(width, round(columns * scale))
    image = Image.fromarray(array).resize((scaled_columns, scaled_rows), resample=resample, reducing_gap=1)
    top, left = (scaled_rows - height) // 2, (scaled_columns - width) // 2
    cropped = np.asarray(image.crop((left, top, left + width, top + height)))
    cut = f", centre cut, {scaled_columns - width} x {scaled_rows - height} pixels left out" if top or left else ""
    return Fitted(cropped, f"{columns}x{rows} scaled to {scaled_columns}x{scaled_rows}{cut}")


def mask_from(array: np.ndarray, name: str, image_shape: tuple[int, int], height: int, width: int) -> np.ndarray:
    """A float32 height x width mask, 1 where the image is to be repainted (white, above mid-grey), else 0."""
    gray = as_rgb(array, name).max(axis=2)
    if gray.shape != image_shape:
        raise InputError(
            f"{name}: the mask is {gray.shape[1]}x{gray.shape[0]} but the image is {image_shape[1]}x{image_shape[0]}; "
            "accepted: a mask of the image's size."
        )
    binary = np.where(gray > 127, 255, 0).astype(np.uint8)
    return (fit(binary, height, width, Image.Resampling.NEAREST).array > 127).astype(np.float32)


def depth_hint(
    array: np.ndarray, name: str, height: int, width: int, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, str]:
    """The ControlNet hint, a (1, 3, height, width) tensor in [0, 1] on the pipeline's device and dtype, and a note.

    The hint is gray, near bright, repeated over three channels, as in diffusers' example. A colour depth
    map is turned to gray by its luma (ITU-R BT.601), which keeps the depth order of an inferno-coloured
    map (what Ikomia HUB's infer_depth_anything outputs) but not of a rainbow one (jet, turbo).
    """
    rgb = as_rgb(array, name)
    note = ""
    if not ((rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all()):
        luma = (rgb @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
        rgb, note = np.repeat(luma[:, :, None], 3, axis=2), ", colours turned to gray by luma"
    fitted = fit(rgb, height, width)
    hint = torch.from_numpy(fitted.array.copy()).float().div(255).permute(2, 0, 1).unsqueeze(0)
    return hint.to(device=device, dtype=dtype), fitted.note + note
