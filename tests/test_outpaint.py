"""outpaint, and what it shares with inpaint: mask_mode and paste_back, against diffusers' own inpainting pipeline."""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from helpers import (
    HEIGHT,
    WIDTH,
    inpaint_reference,
    left_half_mask,
    max_difference,
    random_image,
    stop_at_step,
    workflow_with,
)
from helpers import run_workflow as run
from infer_kandinsky_2_2.kandinsky22_engine.errors import SettingsError
from infer_kandinsky_2_2.kandinsky22_engine.generation import to_uint8
from infer_kandinsky_2_2.kandinsky22_engine.images import (
    PASTE_BACK_FEATHER,
    InputError,
    outpaint_canvas,
    paste_back,
    paste_back_ramp,
)
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings

core = pytest.importorskip("ikomia.core")

MARGINS = {"outpaint_top": 0, "outpaint_bottom": 0, "outpaint_left": 32, "outpaint_right": 32, "outpaint_overlap": 8}


@pytest.fixture
def outpaint(tiny_strings, tiny_repos) -> dict[str, str]:
    """A quick outpaint run on the tiny inpainting decoder: a 64-pixel box in the middle of the 128 x 64 output."""
    return {
        **tiny_strings,
        "guidance_scale": "2.0",
        "mode": "outpaint",
        "model_name": str(tiny_repos.inpaint_decoder),
        **{name: str(value) for name, value in MARGINS.items()},
    }


@pytest.fixture
def inpaint(outpaint) -> dict[str, str]:
    return {name: value for name, value in outpaint.items() if name not in MARGINS} | {"mode": "inpaint"}


def expected_canvas(image: np.ndarray, margins: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The canvas and mask outpaint must give on the 128 x 64 output, built here on their own: the image scaled
    (PIL bicubic) to fit the box the margins leave and centred in it, each pixel outside it a copy of the
    image's nearest edge pixel; the mask 1 outside the image and over the overlap along its edges inside the
    canvas."""
    top, left = margins["outpaint_top"], margins["outpaint_left"]
    box = (HEIGHT - top - margins["outpaint_bottom"], WIDTH - left - margins["outpaint_right"])
    scale = min(box[0] / image.shape[0], box[1] / image.shape[1])
    rows, columns = round(image.shape[0] * scale), round(image.shape[1] * scale)
    if (rows, columns) != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((columns, rows), Image.Resampling.BICUBIC))
    row, column = top + (box[0] - rows) // 2, left + (box[1] - columns) // 2
    nearest_rows = np.clip(np.arange(HEIGHT) - row, 0, rows - 1)
    nearest_columns = np.clip(np.arange(WIDTH) - column, 0, columns - 1)
    canvas = image[nearest_rows][:, nearest_columns]
    overlap = margins["outpaint_overlap"]
    mask = np.ones((HEIGHT, WIDTH), np.float32)
    for y in range(row, row + rows):
        for x in range(column, column + columns):
            near_a_painted_edge = (
                (row > 0 and y < row + overlap)
                or (row + rows < HEIGHT and y >= row + rows - overlap)
                or (column > 0 and x < column + overlap)
                or (column + columns < WIDTH and x >= column + columns - overlap)
            )
            mask[y, x] = 1 if near_a_painted_edge else 0
    return canvas, mask


def test_outpaint_offers_one_image_input():
    _, task = workflow_with({"mode": "outpaint"})
    assert [task.get_input(index).name for index in range(task.get_input_count())] == ["image"]


@pytest.mark.parametrize(
    ("shape", "note"),
    [
        ((64, 64, 3), "64x64, placed at left 32, top 0 of 128x64; 62% painted"),
        ((40, 80, 3), "80x40 scaled to 64x32, placed at left 32, top 16 of 128x64; 91% painted"),
    ],
    ids=["aspect-of-the-box", "wider-than-the-box"],
)
def test_outpaint_equals_diffusers_inpainting_on_the_canvas_and_mask_it_should_build(outpaint, shape, note):
    image = random_image(7, shape)
    workflow, task = workflow_with(outpaint, {0: image})
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    workflow.run()
    picture = task.get_output(0).get_image()
    assert picture.shape == (HEIGHT, WIDTH, 3)
    assert len(steps) == task.get_progress_steps() == 3 + 4
    assert task.get_output(1).data["inputs"] == {"image": note}
    settings = Settings.from_strings(outpaint)
    canvas, mask = expected_canvas(image, MARGINS)
    assert max_difference(picture, inpaint_reference(settings, settings.seed, canvas, mask)[0]) <= 1


def test_a_batch_of_outpainted_pictures_each_equals_diffusers(outpaint):
    parameters = {**outpaint, "num_images": "2"}
    image = random_image(7, (64, 64, 3))
    workflow, task = workflow_with(parameters, {0: image})
    workflow.run()
    pictures = [task.get_output(index).get_image() for index in (0, 2)]
    settings = Settings.from_strings(parameters)
    references = inpaint_reference(settings, settings.seed, *expected_canvas(image, MARGINS))
    assert all(max_difference(picture, reference) <= 1 for picture, reference in zip(pictures, references, strict=True))
    assert not np.array_equal(pictures[0], pictures[1])


def test_stop_works_in_outpaint_and_the_next_run_works(outpaint):
    workflow, task = workflow_with(outpaint, {0: random_image(7, (64, 64, 3))})
    stop_at_step(task, task.get_progress_steps() - 1)
    with pytest.raises(
        RuntimeError, match=re.escape("Generation stopped by the user after step 3 of 4 of the decoder.")
    ):
        workflow.run()
    task.emit_step_progress = lambda: None
    workflow.run()
    assert task.get_output(0).get_image().shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize(
    ("margins", "message"),
    [
        (
            {"outpaint_left": 0, "outpaint_right": 0},
            "outpaint: every margin is 0 (outpaint_top, outpaint_bottom, outpaint_left, outpaint_right); accepted: "
            "at least one margin above 0, in pixels of the output to paint beyond the image.",
        ),
        (
            {"outpaint_left": 40, "outpaint_right": 32},
            "outpaint_left + outpaint_right: received 40 + 32 = 72 with width 128; accepted: at most width - 64 = "
            "64, so that the image keeps at least 64 pixels of the width.",
        ),
        (
            {"outpaint_top": 1, "outpaint_left": 0, "outpaint_right": 0},
            "outpaint_top + outpaint_bottom: received 1 + 0 = 1 with height 64; accepted: at most height - 64 = 0, "
            "so that the image keeps at least 64 pixels of the height.",
        ),
    ],
    ids=["no-margin", "too-wide", "too-tall"],
)
def test_margins_that_paint_nothing_or_leave_the_image_too_small_are_refused(outpaint, margins, message):
    with pytest.raises(SettingsError) as refused:
        Settings.from_strings({**outpaint, **{name: str(value) for name, value in margins.items()}})
    assert str(refused.value) == message
    workflow, task = workflow_with({**outpaint, **{name: str(value) for name, value in margins.items()}})
    workflow.connect_tasks(workflow.root(), task, [(0, 0)])
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run_on(array=random_image(7, (64, 64, 3)))


def test_an_overlap_that_repaints_the_whole_image_is_refused_before_any_model_runs(outpaint):
    workflow, task = workflow_with({**outpaint, "outpaint_overlap": "32"}, {0: random_image(7, (40, 80, 3))})
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    message = (
        "outpaint input 'image': scaled to 64x32 to fit inside the margins, the image is repainted whole by "
        "outpaint_overlap 32: none of it is kept; accepted: an outpaint_overlap of at most 15 for this image, size "
        "and margins."
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run()
    assert steps == []


def test_an_outpaint_without_an_image_is_refused_naming_it(outpaint):
    workflow, task = workflow_with(outpaint)
    workflow.connect_tasks(workflow.root(), task, [(0, 0)])
    with pytest.raises(RuntimeError, match=re.escape("outpaint input 'image': no image was given.")):
        workflow.run()


def quarter_mask() -> np.ndarray:
    """White over the left quarter of the output."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[:, : WIDTH // 4] = 255
    return mask


def test_mask_mode_keep_equals_diffusers_given_the_inverted_mask_and_says_so(inpaint):
    init = random_image(2)
    parameters = {**inpaint, "mask_mode": "keep"}
    image, metadata = run(parameters, {0: init, 2: quarter_mask()})
    settings = Settings.from_strings(parameters)
    inverted = (quarter_mask() == 0).astype(np.float32)
    assert max_difference(image, inpaint_reference(settings, settings.seed, init, inverted)[0]) <= 1
    assert max_difference(image, inpaint_reference(settings, settings.seed, init, 1 - inverted)[0]) > 1
    assert metadata["inputs"]["mask"] == (
        "128x64, used as it is; picture: white repaints (8-bit values from 128); 25% repainted; mask_mode keep: "
        "inverted, 75% repainted"
    )


def test_mask_mode_repaint_is_the_default_and_equals_diffusers_as_before(inpaint):
    init = random_image(2)
    image, _ = run(inpaint, {0: init, 2: quarter_mask()})
    settings = Settings.from_strings(inpaint)
    assert settings.mask_mode == "repaint" and not settings.paste_back
    mask = (quarter_mask() > 0).astype(np.float32)
    assert max_difference(image, inpaint_reference(settings, settings.seed, init, mask)[0]) <= 1


def test_mask_mode_keep_refuses_a_mask_that_keeps_everything(inpaint):
    parameters = {**inpaint, "mask_mode": "keep"}
    message = (
        "inpaint input 'mask': with mask_mode keep, what the mask marks is kept, and it marks the whole image once "
        "fitted to 128x64: nothing is left to repaint; accepted: a mask that leaves part of the image unmarked, or "
        "mask_mode repaint."
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        run(parameters, {0: random_image(2), 2: np.full((HEIGHT, WIDTH), 255, np.uint8)})
    workflow, task = workflow_with(parameters, {0: random_image(2), 2: quarter_mask()})
    task.get_input(1).set_items([core.CGraphicsRectangle(32, 0, 96, 64)])
    both = message.replace("inpaint input 'mask'", "inpaint inputs 'mask drawing' and 'mask'")
    with pytest.raises(RuntimeError, match=re.escape(both)):
        workflow.run()


def check_pasted_back(pasted: np.ndarray, plain: np.ndarray, image: np.ndarray, mask: np.ndarray) -> None:
    """``pasted`` is ``image`` where ``mask`` keeps, ``plain`` (the same run without paste_back) at the full
    ramp, and their blend on the ramp."""
    ramp = paste_back_ramp(mask)
    kept, full = mask == 0, ramp == 1
    assert kept.any() and full.any() and (~kept & ~full).any()
    assert np.array_equal(pasted[kept], image[kept])
    assert np.array_equal(pasted[full], plain[full])
    blend = ramp[:, :, None] * plain + (1 - ramp[:, :, None]) * image
    assert np.abs(pasted - blend).max() <= 1


@pytest.mark.parametrize("mask_mode", ["repaint", "keep"])
def test_paste_back_in_inpaint_keeps_every_pixel_outside_the_repainted_area(inpaint, mask_mode):
    init = random_image(2)
    parameters = {**inpaint, "mask_mode": mask_mode}
    plain, _ = run(parameters, {0: init, 2: left_half_mask()})
    pasted, _ = run({**parameters, "paste_back": "True"}, {0: init, 2: left_half_mask()})
    marked = (left_half_mask() > 0).astype(np.float32)
    repainted = marked if mask_mode == "repaint" else 1 - marked
    assert not np.array_equal(plain[repainted == 0], init[repainted == 0]), "the decoder alters the kept area"
    check_pasted_back(pasted, plain, init, repainted)


def test_paste_back_in_outpaint_keeps_the_image_where_it_is_not_repainted(outpaint):
    image = random_image(7, (40, 80, 3))
    plain, plain_metadata = run(outpaint, {0: image})
    pasted, metadata = run({**outpaint, "paste_back": "True"}, {0: image})
    canvas, mask = expected_canvas(image, MARGINS)
    check_pasted_back(pasted, plain, canvas, mask)
    assert metadata["inputs"]["image"] == (
        plain_metadata["inputs"]["image"]
        + "; paste_back: kept exactly outside the repainted area, blended over 8 pixels inside"
    )


def test_paste_back_brings_every_8_bit_value_back_exactly():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    pictures = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[:, 12:] = 1
    pasted = to_uint8(paste_back(pictures, image, mask))
    assert all(np.array_equal(picture[:, :12], image[:, :12]) for picture in pasted)


def chessboard_ramp(mask: np.ndarray) -> np.ndarray:
    """min(d, 8) / 8, d the chessboard distance from a repainted pixel to the nearest kept one, by brute force."""
    kept = np.argwhere(mask == 0)
    ramp = np.ones(mask.shape, np.float32)
    for y, x in np.argwhere(mask == 1):
        if len(kept):
            distance = np.abs(kept - (y, x)).max(axis=1).min()
            ramp[y, x] = min(distance, PASTE_BACK_FEATHER) / PASTE_BACK_FEATHER
    ramp[mask == 0] = 0
    return ramp


masks = arrays(np.float32, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.sampled_from([0.0, 1.0]))


@given(masks)
def test_the_paste_back_ramp_is_the_chessboard_distance_to_the_kept_area_capped_at_8(mask):
    ramp = paste_back_ramp(mask)
    assert ramp.dtype == np.float32
    assert np.array_equal(ramp, chessboard_ramp(mask))
    assert np.array_equal(paste_back_ramp(np.ascontiguousarray(mask.T)), ramp.T)


@given(masks, st.data())
def test_the_paste_back_ramp_rises_by_at_most_an_eighth_per_pixel_and_grows_with_the_repainted_area(mask, data):
    ramp = paste_back_ramp(mask)
    assert (ramp[mask == 0] == 0).all()
    assert np.abs(np.diff(ramp, axis=0)).max(initial=0) <= 1 / PASTE_BACK_FEATHER
    assert np.abs(np.diff(ramp, axis=1)).max(initial=0) <= 1 / PASTE_BACK_FEATHER
    more = np.maximum(mask, data.draw(arrays(np.float32, mask.shape, elements=st.sampled_from([0.0, 1.0]))))
    assert (paste_back_ramp(more) >= ramp).all()


def test_the_paste_back_ramp_reaches_1_at_8_pixels_inside_and_ignores_the_border():
    mask = np.zeros((40, 40), np.float32)
    mask[:, 10:] = 1
    ramp = paste_back_ramp(mask)
    assert ramp[0, 10:19].tolist() == [k / 8 for k in range(1, 9)] + [1.0]
    assert (ramp[:, 17:] == 1).all()
    assert (paste_back_ramp(np.ones((5, 7), np.float32)) == 1).all()


def test_an_overlap_may_leave_a_single_column_of_the_image_and_no_less():
    image = random_image(7, (63, 63, 3))
    canvas = outpaint_canvas(image, "x", 64, 128, top=0, bottom=1, left=32, right=33, overlap=31)
    # The top edge lies on the canvas border: only the other three are repainted, leaving column 63, rows 0 to 31.
    kept = np.zeros((64, 128), bool)
    kept[:32, 63] = True
    assert np.array_equal(canvas.mask == 0, kept)
    assert np.array_equal(canvas.image[:63, 32:95], image)
    message = (
        "x: scaled to 63x63 to fit inside the margins, the image is repainted whole by outpaint_overlap 32: none of "
        "it is kept; accepted: an outpaint_overlap of at most 31 for this image, size and margins."
    )
    with pytest.raises(InputError, match=re.escape(message)):
        outpaint_canvas(image, "x", 64, 128, top=0, bottom=1, left=32, right=33, overlap=32)
