"""Input images, masks and depth maps: forms accepted, geometry kept, orientation kept."""

import re

import numpy as np
import pytest
import torch

from helpers import left_half_mask, random_image
from infer_kandinsky_2_2.kandinsky22_engine.images import InputError, as_rgb, depth_hint, fit, mask_from


def test_an_image_of_the_output_size_is_used_as_it_is():
    image = random_image(0)
    fitted = fit(image, 64, 128)
    assert fitted.array is image
    assert fitted.note == "128x64, used as it is"


def test_another_aspect_is_scaled_to_cover_and_centre_cut_not_stretched():
    image = np.zeros((40, 200, 3), np.uint8)
    image[:, 100:] = 255
    fitted = fit(image, 64, 128)
    assert fitted.array.shape == (64, 128, 3)
    assert fitted.note == "200x40 scaled to 320x64, centre cut, 192 x 0 pixels left out"
    # Scaled by 1.6 then cut 96 pixels from the left: the edge at column 100 lands at column 64.
    assert (fitted.array[:, :62] == 0).all()
    assert (fitted.array[:, 66:] == 255).all()


def test_a_tall_image_is_cut_top_and_bottom():
    image = np.zeros((300, 100, 3), np.uint8)
    image[:150] = 255
    fitted = fit(image, 64, 64)
    assert fitted.note == "100x300 scaled to 64x192, centre cut, 0 x 128 pixels left out"
    assert (fitted.array[:30] == 255).all() and (fitted.array[34:] == 0).all()


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((2, 3), 7, np.uint8), np.full((2, 3, 3), 7, np.uint8)),
        (np.full((2, 3, 1), 7, np.uint8), np.full((2, 3, 3), 7, np.uint8)),
        (np.dstack([np.full((2, 3, 3), 9, np.uint8), np.zeros((2, 3), np.uint8)]), np.full((2, 3, 3), 9, np.uint8)),
        (np.full((2, 3, 3), 0xC234, np.uint16), np.full((2, 3, 3), 0xC2, np.uint8)),
        (np.full((2, 3, 3), 0.5, np.float32), np.full((2, 3, 3), 128, np.uint8)),
    ],
    ids=["gray", "gray-channel", "rgba", "16-bit", "float"],
)
def test_usual_image_forms_become_rgb_uint8(array, expected):
    assert np.array_equal(as_rgb(array, "img2img input 'image'").array, expected)


@pytest.mark.parametrize(
    ("array", "first", "note"),
    [
        (np.full((2, 4, 3), 9, np.uint8), 9, ""),
        (np.full((2, 4), 7, np.uint8), 7, "gray, repeated to RGB"),
        (
            np.dstack([np.full((2, 4, 3), 9, np.uint8), np.array([[0, 0, 255, 255], [255] * 4], np.uint8)]),
            9,
            "RGBA, alpha dropped (25% of the pixels transparent, their colours kept)",
        ),
        (np.full((2, 4, 3), 0xC234, np.uint16), 0xC2, "16-bit, brought to 8 bits"),
        # 12-bit values, as raw converters and scientific cameras write them into 16-bit files: 4080 is bright.
        (
            np.linspace(0, 4080, 24).astype(np.uint16).reshape(2, 4, 3),
            0,
            "16-bit holding 12-bit values (0 to 4080), brought to 8 bits",
        ),
        (np.full((2, 4, 3), 200, np.uint16), 200, "16-bit holding 8-bit values (0 to 200), brought to 8 bits"),
        (np.full((2, 4, 3), 0.5, np.float32), 128, "float32 values from 0 to 1, brought to 8 bits"),
        (np.full((2, 4), 0.5, np.float64), 128, "float64 values from 0 to 1, brought to 8 bits, gray, repeated to RGB"),
    ],
    ids=["rgb", "gray", "rgba", "16-bit", "12-bit-in-16", "8-bit-in-16", "float", "float-gray"],
)
def test_every_conversion_of_an_image_is_said(array, first, note):
    rgb = as_rgb(array, "img2img input 'image'")
    assert (rgb.array[0, 0, 0], rgb.note) == (first, note)
    if "12-bit" in note:
        assert rgb.array.max() == 255


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "outpaint", "mix"])
def test_the_metadata_says_how_an_image_was_converted_in_every_mode_that_reads_one(mode, tiny_strings, tiny_repos):
    from helpers import settings_in_mode
    from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs, prepare_inputs
    from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

    settings = settings_in_mode(tiny_strings, tiny_repos, mode)
    twelve_bits = (random_image(2).astype(np.uint16) * 16).astype(np.uint16)
    inputs = Inputs(image=twelve_bits, mask=left_half_mask(), mix_images=(twelve_bits, random_image(3)))
    notes = prepare_inputs(settings, inputs, Runtime("cpu", torch.float32)).notes
    name = "image 1" if mode == "mix" else "image"
    assert "16-bit holding 12-bit values (0 to 4080), brought to 8 bits" in notes[name]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (None, "img2img input 'image': no image was given."),
        (np.zeros((0, 0, 3), np.uint8), "img2img input 'image': no image was given."),
        (
            np.zeros((2, 3, 2), np.uint8),
            "img2img input 'image': received an array of shape (2, 3, 2); accepted: height x width, with 1, 3 or 4 "
            "channels.",
        ),
        (
            np.linspace(-0.5, 2, 18, dtype=np.float32).reshape(2, 3, 3),
            "img2img input 'image': received float32 values from -0.5 to 2; accepted: uint8, uint16, or floats from 0 "
            "to 1.",
        ),
        (
            np.full((2, 3, 3), np.nan, np.float64),
            "img2img input 'image': received float64 values that are not finite (NaN or infinite); accepted: uint8, "
            "uint16, or floats from 0 to 1.",
        ),
        (
            np.zeros((2, 3, 3), np.int32),
            "img2img input 'image': received int32 values; accepted: uint8, uint16, or floats from 0 to 1.",
        ),
    ],
    ids=["none", "empty", "two-channels", "float-out-of-range", "float-not-finite", "int32"],
)
def test_an_unusable_image_is_named(array, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        as_rgb(array, "img2img input 'image'")


MASK = "inpaint input 'mask'"
DEPTH = "controlnet_depth input 'depth map'"


def test_a_mask_keeps_its_orientation_and_white_means_repaint():
    mask = left_half_mask()
    mask[:8, 100:] = 127
    fitted = mask_from(mask, MASK, (64, 128), 64, 128)
    assert fitted.array.shape == (64, 128) and fitted.array.dtype == np.float32
    assert (fitted.array[:, :64] == 1).all() and (fitted.array[:, 64:] == 0).all()
    assert fitted.note == "128x64, used as it is; picture: white repaints (8-bit values from 128); 50% repainted"


def test_a_mask_follows_the_geometry_of_its_image():
    mask = np.zeros((40, 200), np.uint8)
    mask[:, 100:] = 255
    fitted = mask_from(mask, MASK, (40, 200), 64, 128)
    assert (fitted.array[:, :62] == 0).all() and (fitted.array[:, 66:] == 1).all()
    assert fitted.note == (
        "200x40 scaled to 320x64, centre cut, 192 x 0 pixels left out; picture: white repaints (8-bit values from "
        "128); 50% repainted"
    )


def test_a_mask_of_another_size_than_its_image_is_refused():
    with pytest.raises(InputError, match=re.escape("the mask is 32x16 but the image is 128x64")):
        mask_from(np.zeros((16, 32), np.uint8), MASK, (64, 128), 64, 128)


def rgba(colours: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.dstack([np.repeat(colours[:, :, None], 3, axis=2), alpha])


def soft_float() -> np.ndarray:
    mask = np.full((64, 128), 0.49, np.float32)
    mask[:, :32], mask[:, 32:64] = 0.5, 0.9
    return mask


def class_indices() -> np.ndarray:
    labels = np.zeros((64, 128), np.uint8)
    labels[:, :20], labels[:, 20:40], labels[:, 40:64] = 1, 2, 5
    return labels


def one_channel_only(channel: int) -> np.ndarray:
    mask = np.zeros((64, 128, 3), np.uint8)
    mask[:, :64, channel] = 255
    return mask


def uint16_picture() -> np.ndarray:
    mask = left_half_mask(np.uint16, 32768)
    mask[:, 64:] = 32767
    return mask


def transparent_left(dtype: type, opaque: object, transparent: object) -> np.ndarray:
    alpha = np.full((64, 128), opaque, dtype)
    alpha[:, :64] = transparent
    alpha[:, 100:] = {np.uint8: 128, np.float32: 0.5}.get(dtype, opaque)  # half transparent: kept
    return rgba(np.zeros((64, 128), dtype), alpha)


def colours_marking_alpha_ignored() -> np.ndarray:
    alpha = np.full((64, 128), 255, np.uint8)
    alpha[:, 64:] = 200  # not transparent anywhere: the alpha is not read
    return rgba(left_half_mask(), alpha)


def painted_on_a_transparent_layer() -> np.ndarray:
    """White strokes on a transparent layer (black where transparent): what is painted repaints."""
    alpha = np.zeros((64, 128), np.uint8)
    alpha[:, :64] = 255
    return rgba(left_half_mask(), alpha)


def photo_with_an_erased_part() -> np.ndarray:
    """OpenAI's image-edit mask: the picture itself, with the part to repaint made transparent."""
    photo = random_image(7)
    alpha = np.full((64, 128), 255, np.uint8)
    alpha[:, :64] = 0
    return np.dstack([photo, alpha])


LABEL_MAP, PICTURE_8, PICTURE_16 = (
    "label map: non-zero repaints",
    "picture: white repaints (8-bit values from 128)",
    "picture: white repaints (16-bit values from 32768)",
)


@pytest.mark.parametrize(
    ("mask", "reading"),
    [
        (left_half_mask(value=1), LABEL_MAP),
        (left_half_mask(), PICTURE_8),
        (left_half_mask(value=128), PICTURE_8),
        (left_half_mask(shape=(64, 128, 1)), PICTURE_8),
        (left_half_mask(bool, True), "bool: True repaints"),
        (soft_float(), "floats: 0.5 and above repaint"),
        (left_half_mask(np.float64, 1.0), "floats: 0.5 and above repaint"),
        (left_half_mask(np.uint16, 1), LABEL_MAP),
        (uint16_picture(), PICTURE_16),
        (left_half_mask(np.int64, 3), LABEL_MAP),
        (left_half_mask(np.uint32, 1), LABEL_MAP),
        (class_indices(), LABEL_MAP),
        (one_channel_only(0), PICTURE_8),
        (one_channel_only(1), PICTURE_8),
        (left_half_mask(shape=(64, 128, 3)), PICTURE_8),
        (transparent_left(np.uint8, 255, 0), "alpha: transparent repaints (alpha below 128)"),
        (transparent_left(np.uint16, 65535, 0), "alpha: transparent repaints (alpha below 32768)"),
        (transparent_left(np.float32, 1.0, 0.2), "alpha: transparent repaints (alpha below 0.5)"),
        (transparent_left(bool, True, False), "alpha: transparent repaints (alpha False)"),
        (colours_marking_alpha_ignored(), PICTURE_8 + ", alpha ignored"),
        (
            painted_on_a_transparent_layer(),
            "painted on a transparent layer: the opaque pixels, of one colour that marks, repaint",
        ),
        (photo_with_an_erased_part(), "alpha: transparent repaints (alpha below 128)"),
        (rgba(left_half_mask(np.int32, 1), np.zeros((64, 128), np.int32)), LABEL_MAP + ", alpha ignored"),
    ],
    ids=[
        "uint8-0-1-label-map",
        "uint8-0-255",
        "uint8-mid-grey",
        "uint8-one-channel",
        "bool",
        "float-soft",
        "float64-0-1",
        "uint16-label-map",
        "uint16-picture",
        "int64-label-map",
        "uint32-label-map",
        "class-indices",
        "red-channel-only",
        "green-channel-only",
        "gray-in-rgb",
        "rgba-transparent-uint8",
        "rgba-transparent-uint16",
        "rgba-transparent-float",
        "rgba-transparent-bool",
        "rgba-colours-mark-alpha-ignored",
        "rgba-painted-on-a-transparent-layer",
        "rgba-photo-with-an-erased-part",
        "int32-rgba-alpha-not-read",
    ],
)
def test_every_mask_form_repaints_what_it_marks(mask, reading):
    fitted = mask_from(mask, MASK, (64, 128), 64, 128)
    assert np.array_equal(fitted.array, left_half_mask(np.float32, 1.0))
    assert fitted.note == f"128x64, used as it is; {reading}; 50% repainted"


@pytest.mark.parametrize(
    ("pixels", "share"), [(1, "0.01%"), (64 * 128 - 1, "99.99%"), (64 * 128, "100%"), (1000, "12%"), (40, "0.5%")]
)
def test_the_note_tells_a_part_repainted_from_none_or_all(pixels, share):
    mask = np.zeros(64 * 128, np.uint8)
    mask[:pixels] = 1
    assert mask_from(mask.reshape(64, 128), MASK, (64, 128), 64, 128).note.endswith(f"; {share} repainted")


NOTHING = f"{MASK}: the mask repaints nothing"
WHITE_OR_LABELS = "white (or, in a label map, non-zero)"


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (
            np.zeros((64, 128), np.uint8),
            f"{NOTHING} (read as a label map, no 8-bit value reaching 128: every pixel is 0); accepted: "
            f"{WHITE_OR_LABELS} where to repaint.",
        ),
        (
            np.zeros((64, 128, 3), np.uint16),
            f"{NOTHING} (read as a label map, no 16-bit (as 8-bit) value reaching 128: every pixel is 0); accepted: "
            f"{WHITE_OR_LABELS} where to repaint.",
        ),
        (
            np.zeros((64, 128), np.int32),
            f"{NOTHING} (read as a label map of int32 values: every pixel is 0); accepted: non-zero where to repaint.",
        ),
        (
            np.zeros((64, 128), bool),
            f"{NOTHING} (read as bool: no pixel is True); accepted: True where to repaint.",
        ),
        (
            np.full((64, 128), 0.3, np.float32),
            f"{NOTHING} (read as floats: no value reaches 0.5, the highest is 0.3); accepted: values from 0.5 to 1 "
            "where to repaint.",
        ),
        (
            rgba(np.zeros((64, 128), np.uint8), np.full((64, 128), 255, np.uint8)),
            f"{NOTHING} (read as a label map, no 8-bit value reaching 128: every pixel is 0; no pixel is "
            f"transparent, alpha below 128); accepted: {WHITE_OR_LABELS}, or transparent (alpha below 128), where to "
            "repaint.",
        ),
        (
            rgba(np.zeros((64, 128), np.uint8), np.full((64, 128), 200, np.uint8)),
            f"{NOTHING} (read as a label map, no 8-bit value reaching 128: every pixel is 0; no pixel is "
            f"transparent, alpha below 128); accepted: {WHITE_OR_LABELS}, or transparent (alpha below 128), where to "
            "repaint.",
        ),
        (
            rgba(np.zeros((64, 128), np.int16), np.zeros((64, 128), np.int16)),
            f"{NOTHING} (read as a label map of int16 values: every pixel is 0; the alpha channel is not read for "
            "int16 values); accepted: non-zero where to repaint.",
        ),
    ],
    ids=[
        "uint8",
        "uint16",
        "int32",
        "bool",
        "float",
        "rgba-opaque",
        "rgba-alpha-not-transparent",
        "int16-rgba",
    ],
)
def test_a_mask_that_repaints_nothing_is_refused_saying_how_it_was_read(mask, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        mask_from(mask, MASK, (64, 128), 64, 128)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (
            np.full((64, 128), -1, np.int64),
            f"{MASK}: received int64 values down to -1; accepted: non-negative integers (label maps: non-zero "
            "repaints; uint8 and uint16 pictures: white repaints), bool, or floats from 0 to 1.",
        ),
        (
            np.linspace(-0.5, 2, 64 * 128, dtype=np.float32).reshape(64, 128),
            f"{MASK}: received float32 values from -0.5 to 2; accepted: floats from 0 to 1 (0.5 and above repaint).",
        ),
        (
            np.full((64, 128), np.nan, np.float64),
            f"{MASK}: received float64 values that are not finite (NaN or infinite); accepted: floats from 0 to 1.",
        ),
        (
            np.ones((64, 128), np.complex64),
            f"{MASK}: received complex64 values; accepted: bool, uint8 or uint16 pictures (white repaints), integer "
            "label maps (non-zero repaints), or floats from 0 to 1 (0.5 and above repaint).",
        ),
        (
            np.ones((64, 128, 2), np.uint8),
            f"{MASK}: received an array of shape (64, 128, 2); accepted: height x width, with 1, 3 or 4 channels.",
        ),
        (None, f"{MASK}: no image was given."),
    ],
    ids=["negative-integers", "floats-out-of-range", "nan", "complex", "two-channels", "none"],
)
def test_a_mask_of_unusable_values_is_refused(mask, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        mask_from(mask, MASK, (64, 128), 64, 128)


def test_a_mask_whose_repainted_part_the_centre_cut_leaves_out_is_refused():
    mask = np.zeros((40, 200), np.uint8)
    mask[:, :50] = 255  # scaled by 1.6, then 96 columns are cut from the left: column 50 lands before the cut
    message = (
        f"{MASK}: the mask repaints nothing once fitted to 128x64 (200x40 scaled to 320x64, centre cut, 192 x 0 "
        "pixels left out): the part it repaints lies outside the centre of the image that is kept; accepted: a mask "
        "that repaints inside that centre."
    )
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        mask_from(mask, MASK, (40, 200), 64, 128)


def test_a_mask_too_thin_to_survive_the_scaling_is_refused_as_such():
    mask = np.zeros((512, 512), np.uint8)
    mask[0, 0] = 255  # nearest neighbour at 1/8 reads pixels 4, 12, ...
    message = (
        f"{MASK}: the mask repaints nothing once scaled to 64x64 (512x512 scaled to 64x64): what it repaints is too "
        "thin to survive the scaling; accepted: a mask that repaints at least a pixel of the output size."
    )
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        mask_from(mask, MASK, (512, 512), 64, 64)


def test_a_grayscale_depth_map_becomes_a_three_channel_hint_in_0_1():
    depth = np.tile(np.arange(128, dtype=np.uint8) * 2, (64, 1))
    hint, note = depth_hint(depth, DEPTH, 64, 128, "cpu", torch.float32)
    assert hint.shape == (1, 3, 64, 128) and hint.dtype == torch.float32
    assert torch.equal(hint[0, 0], hint[0, 2])
    assert hint[0, 0, 0, 0] == 0 and hint[0, 0, 0, 127] == pytest.approx(254 / 255)
    assert note == "128x64, used as it is"


def test_an_inferno_coloured_depth_map_keeps_its_depth_order():
    from matplotlib import colormaps

    ramp = np.linspace(0, 1, 128)
    coloured = (colormaps["inferno"](np.tile(ramp, (64, 1)))[:, :, :3] * 255).round().astype(np.uint8)
    hint, note = depth_hint(coloured, DEPTH, 64, 128, "cpu", torch.float32)
    row = hint[0, 0, 0]
    assert (row[1:] >= row[:-1]).all()
    assert row[0] < 0.05 and row[-1] > 0.9
    assert note == "128x64, used as it is, colours turned to gray by luma"


def old_uint8_hint(depth: np.ndarray, height: int, width: int) -> torch.Tensor:
    """The hint as diffusers' example makes it, through an RGB image divided by 255: what uint8 must stay."""
    rgb = fit(np.repeat(depth[:, :, None], 3, axis=2), height, width).array
    return torch.from_numpy(rgb.copy()).float().div(255).permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize(("shape", "size"), [((64, 128), (64, 128)), ((40, 200), (64, 128)), ((500, 300), (64, 64))])
@pytest.mark.parametrize("form", ["gray", "gray-in-rgba"])
def test_a_uint8_depth_map_is_divided_by_255_bit_for_bit(shape, size, form):
    # Neither 0 nor 255: a min-max normalisation would not give the same values.
    depth = np.random.default_rng(1).integers(10, 200, shape, dtype=np.uint8)
    array = np.dstack([depth, depth, depth, np.full(shape, 9, np.uint8)]) if form == "gray-in-rgba" else depth
    hint, note = depth_hint(array, DEPTH, *size, "cpu", torch.float32)
    assert torch.equal(hint, old_uint8_hint(depth, *size))
    assert "normalised" not in note


def test_a_16_bit_depth_map_is_normalised_larger_nearer():
    depth = np.tile(np.linspace(1200, 4000, 128).round().astype(np.uint16), (64, 1))
    hint, note = depth_hint(depth, DEPTH, 64, 128, "cpu", torch.float32)
    expected = torch.from_numpy((depth.astype(np.float64) - 1200) / 2800).float()
    assert torch.allclose(hint[0, 0], expected) and torch.equal(hint[0, 0], hint[0, 2])
    assert hint[0, 0, 0, 0] == 0 and hint[0, 0, 0, -1] == 1
    assert note == "128x64, used as it is; 16-bit values 1200 to 4000 normalised to 0..1, larger is nearer"


@pytest.mark.parametrize(
    ("low", "high", "dtype", "words"),
    [(0.5, 12.25, np.float32, "float32 values 0.5 to 12.25"), (-3, 300, np.int32, "int32 values -3 to 300")],
)
def test_raw_depth_or_disparity_is_normalised(low, high, dtype, words):
    depth = np.full((64, 128), low, dtype)
    depth[:, 64:] = high
    hint, note = depth_hint(depth, DEPTH, 64, 128, "cpu", torch.float32)
    assert (hint[0, :, :, :64] == 0).all() and (hint[0, :, :, 64:] == 1).all()
    assert note == f"128x64, used as it is; {words} normalised to 0..1, larger is nearer"


def test_a_float_depth_map_within_0_1_is_used_as_it_is_and_stays_in_range_when_scaled():
    depth = np.random.default_rng(2).random((64, 128), np.float32)
    hint, note = depth_hint(depth, DEPTH, 64, 128, "cpu", torch.float32)
    assert torch.equal(hint[0, 1], torch.from_numpy(depth)) and note == "128x64, used as it is"
    scaled, _ = depth_hint(depth, DEPTH, 96, 96, "cpu", torch.float16)
    assert scaled.dtype == torch.float16 and scaled.min() >= 0 and scaled.max() <= 1


@pytest.mark.parametrize(
    ("depth", "message"),
    [
        (
            np.full((64, 128), 87, np.uint8),
            f"{DEPTH}: every pixel of the depth map is 87: it carries no layout for ControlNet to follow; accepted: a "
            "depth map whose values vary.",
        ),
        (
            np.full((64, 128), 0.25, np.float32),
            f"{DEPTH}: every pixel of the depth map is 0.25: it carries no layout for ControlNet to follow; accepted: "
            "a depth map whose values vary.",
        ),
        (
            np.full((64, 128, 3), (200, 10, 10), np.uint8),
            f"{DEPTH}: every pixel of the depth map is 67 once its colours are turned to gray by luma: it carries no "
            "layout for ControlNet to follow; accepted: a depth map whose values vary.",
        ),
        (
            np.ones((64, 128), bool),
            f"{DEPTH}: received bool values; accepted: a depth map of uint8 or of floats from 0 to 1 (near bright), "
            "or raw depth or disparity as uint16, other integers or other floats (normalised, larger is nearer).",
        ),
        (
            np.array([[0.0, np.inf]], np.float32),
            f"{DEPTH}: received float32 values that are not finite (NaN or infinite); accepted: finite values.",
        ),
    ],
    ids=["uniform-uint8", "uniform-float", "uniform-colour", "bool", "infinite"],
)
def test_an_unusable_depth_map_is_refused(depth, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        depth_hint(depth, DEPTH, 64, 128, "cpu", torch.float32)


def test_an_input_of_the_width_but_taller_is_only_cut_and_the_note_says_so():
    assert fit(np.zeros((256, 128, 3), np.uint8), 128, 128).note == "128x256, centre cut, 0 x 128 pixels left out"


def test_a_depth_map_that_varies_only_where_the_centre_cut_drops_it_is_refused():
    depth = np.zeros((256, 128), np.uint8)
    depth[0, 0] = 200
    message = (
        "controlnet_depth input 'depth map': the depth map is uniform once fitted to 128x128 (128x256, centre cut, "
        "0 x 128 pixels left out): where it varies lies outside the centre of the image that is kept; accepted: a "
        "depth map whose values vary inside that centre."
    )
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        depth_hint(depth, "controlnet_depth input 'depth map'", 128, 128, "cpu", torch.float32)


THIN_STRIP_FIT = """
import resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
# 6 GB of address space: the strip scaled whole would take 12.6 GB.
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
from kandinsky22_engine.images import fit
strip = np.zeros((4, 4000, 3), np.uint8)
strip[:, 2000:] = 255
fitted = fit(strip, 2048, 2048)
print(fitted.array.shape, int(fitted.array[:, :768].max()), int(fitted.array[:, 1280:].min()), fitted.note)
"""


def test_a_thin_strip_is_scaled_only_where_it_is_kept():
    import subprocess
    import sys
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent
    ran = subprocess.run(
        [sys.executable, "-c", THIN_STRIP_FIT, str(checkout)], capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    # The centre 4 columns of the strip, two dark then two bright, cover the 2048 x 2048 output.
    assert ran.stdout.strip() == (
        "(2048, 2048, 3) 0 255 4000x4 scaled to 2048000x2048, centre cut, 2045952 x 0 pixels left out"
    )


@pytest.mark.parametrize("shape", [(4, 400), (400, 4), (3, 1000), (9, 700)])
def test_a_strip_scaled_only_where_kept_has_the_geometry_of_a_whole_scaling(shape, monkeypatch):
    from infer_kandinsky_2_2.kandinsky22_engine import images

    strip = random_image(3, (*shape, 3))
    whole = fit(strip, 256, 256)
    monkeypatch.setattr(images, "MAX_SCALED_PIXELS", 0)
    kept = fit(strip, 256, 256)
    assert kept.note == whole.note
    # The same part of the input, at the same scale: bicubic's filter reads it slightly differently.
    assert np.abs(kept.array.astype(int) - whole.array.astype(int)).mean() < 2


def test_a_sixteen_bit_mask_is_read_by_the_bits_its_values_use_as_an_image_is():
    eight = left_half_mask(np.uint8, 200)
    eight[:, :32] = 255
    in_sixteen = eight.astype(np.uint16)
    # The same values repaint the same pixels in 8 and in 16 bits; 12-bit values are read on their own scale.
    assert np.array_equal(
        mask_from(in_sixteen, MASK, (64, 128), 64, 128).array, mask_from(eight, MASK, (64, 128), 64, 128).array
    )
    twelve = in_sixteen * 16
    fitted = mask_from(twelve, MASK, (64, 128), 64, 128)
    assert (
        fitted.note
        == "128x64, used as it is; picture: white repaints (16-bit (as 12-bit) values from 2048); 50% repainted"
    )
    # A 12-bit RGBA mask with an opaque alpha (4095) is not transparent.
    opaque = rgba(twelve, np.full((64, 128), 4095, np.uint16))
    assert np.array_equal(mask_from(opaque, MASK, (64, 128), 64, 128).array, fitted.array)


def test_a_sixteen_bit_rgba_image_reads_its_colours_and_its_alpha_apart():
    colours = np.full((2, 4, 3), 4095, np.uint16)
    for alpha, transparent in ((65535, "0%"), (4095, "0%"), (0, "100%")):
        rgb = as_rgb(np.dstack([colours, np.full((2, 4), alpha, np.uint16)]), "img2img input 'image'")
        assert rgb.array.max() == 255
        assert rgb.note == (
            "16-bit holding 12-bit values (0 to 4095), brought to 8 bits, RGBA, alpha dropped "
            f"({transparent} of the pixels transparent, their colours kept)"
        )
