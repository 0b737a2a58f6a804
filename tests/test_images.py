"""Input images, masks and depth maps: forms accepted, geometry kept, orientation kept."""

import re

import numpy as np
import pytest
import torch

from infer_kandinsky_2_2.kandinsky22_engine.images import InputError, as_rgb, depth_hint, fit, mask_from


def test_an_image_of_the_output_size_is_used_as_it_is():
    image = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
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
        (np.full((2, 3, 3), 0x1234, np.uint16), np.full((2, 3, 3), 0x12, np.uint8)),
        (np.full((2, 3, 3), 0.5, np.float32), np.full((2, 3, 3), 128, np.uint8)),
    ],
    ids=["gray", "gray-channel", "rgba", "16-bit", "float"],
)
def test_usual_image_forms_become_rgb_uint8(array, expected):
    assert np.array_equal(as_rgb(array, "img2img input 'image'"), expected)


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
            np.full((2, 3, 3), 2.0, np.float32),
            "img2img input 'image': received float32 values; accepted: uint8, uint16, or floats from 0 to 1.",
        ),
        (
            np.zeros((2, 3, 3), np.int32),
            "img2img input 'image': received int32 values; accepted: uint8, uint16, or floats from 0 to 1.",
        ),
    ],
    ids=["none", "empty", "two-channels", "float-out-of-range", "int32"],
)
def test_an_unusable_image_is_named(array, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        as_rgb(array, "img2img input 'image'")


def test_a_mask_keeps_its_orientation_and_white_means_repaint():
    mask = np.zeros((64, 128), np.uint8)
    mask[:, :64] = 255
    mask[:8, 100:] = 127
    result = mask_from(mask, "inpaint input 'mask'", (64, 128), 64, 128)
    assert result.shape == (64, 128) and result.dtype == np.float32
    assert (result[:, :64] == 1).all() and (result[:, 64:] == 0).all()


def test_a_mask_follows_the_geometry_of_its_image():
    mask = np.zeros((40, 200), np.uint8)
    mask[:, 100:] = 255
    result = mask_from(mask, "inpaint input 'mask'", (40, 200), 64, 128)
    assert (result[:, :62] == 0).all() and (result[:, 66:] == 1).all()


def test_a_mask_of_another_size_than_its_image_is_refused():
    with pytest.raises(InputError, match=re.escape("the mask is 32x16 but the image is 128x64")):
        mask_from(np.zeros((16, 32), np.uint8), "inpaint input 'mask'", (64, 128), 64, 128)


def test_a_grayscale_depth_map_becomes_a_three_channel_hint_in_0_1():
    depth = np.tile(np.arange(128, dtype=np.uint8) * 2, (64, 1))
    hint, note = depth_hint(depth, "controlnet_depth input 'depth map'", 64, 128, "cpu", torch.float32)
    assert hint.shape == (1, 3, 64, 128) and hint.dtype == torch.float32
    assert torch.equal(hint[0, 0], hint[0, 2])
    assert hint[0, 0, 0, 0] == 0 and hint[0, 0, 0, 127] == pytest.approx(254 / 255)
    assert note == "128x64, used as it is"


def test_an_inferno_coloured_depth_map_keeps_its_depth_order():
    from matplotlib import colormaps

    ramp = np.linspace(0, 1, 128)
    coloured = (colormaps["inferno"](np.tile(ramp, (64, 1)))[:, :, :3] * 255).round().astype(np.uint8)
    hint, note = depth_hint(coloured, "controlnet_depth input 'depth map'", 64, 128, "cpu", torch.float32)
    row = hint[0, 0, 0]
    assert (row[1:] >= row[:-1]).all()
    assert row[0] < 0.05 and row[-1] > 0.9
    assert note == "128x64, used as it is, colours turned to gray by luma"
