"""img2img, inpaint, controlnet_depth and mix through the Ikomia API, against diffusers' own pipelines."""

import re

import numpy as np
import pytest
from PIL import Image

from helpers import (
    HEIGHT,
    WIDTH,
    controlnet_reference,
    diffusers_reference,
    img2img_reference,
    inpaint_reference,
    left_half_mask,
    max_difference,
    mix_reference,
    model_cache,
    random_image,
    stop_at_step,
    workflow_with,
)
from helpers import run_workflow as run
from infer_kandinsky_2_2.kandinsky22_engine.generation import decoder_model_name, progress_steps
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings

core = pytest.importorskip("ikomia.core")


@pytest.fixture
def strings(tiny_strings, tiny_repos) -> dict[str, dict[str, str]]:
    """Parameters of a quick non-square run in each mode, with the mode's tiny decoder."""
    base = {**tiny_strings, "guidance_scale": "2.0"}
    return {
        "img2img": {**base, "mode": "img2img", "strength": "0.5"},
        "inpaint": {**base, "mode": "inpaint", "model_name": str(tiny_repos.inpaint_decoder)},
        "controlnet_depth": {**base, "mode": "controlnet_depth", "model_name": str(tiny_repos.controlnet_decoder)},
        "mix": {**base, "mode": "mix", "mix_weights": "0.2, 0.3 0.5"},
    }


@pytest.mark.parametrize(
    ("mode", "names"),
    [
        ("text2img", []),
        ("img2img", ["image"]),
        ("inpaint", ["image", "mask drawing", "mask"]),
        ("controlnet_depth", ["depth map"]),
        ("mix", ["image 1", "image 2"]),
    ],
)
def test_each_mode_offers_its_own_inputs(mode, names):
    _, task = workflow_with({"mode": mode})
    assert [task.get_input(index).name for index in range(task.get_input_count())] == names
    if mode == "inpaint":
        assert task.get_input(1).data_type == core.IODataType.INPUT_GRAPHICS
    task.set_parameters({"mode": "mix", "mix_images": "4"})
    assert task.get_input_count() == 4


def test_img2img_equals_diffusers_and_keeps_a_non_square_image_upright(strings):
    init = random_image(1)
    image, metadata = run(strings["img2img"], {0: init})
    settings = Settings.from_strings(strings["img2img"])
    assert max_difference(image, img2img_reference(settings, settings.seed, init, swap_sizes=True)[0]) <= 1
    assert metadata["inputs"] == {"image": "128x64, used as it is"}


def test_diffusers_img2img_alone_transposes_a_non_square_image(strings):
    settings = Settings.from_strings(strings["img2img"])
    plain = img2img_reference(settings, settings.seed, random_image(1), swap_sizes=False)[0]
    assert plain.shape == (WIDTH, HEIGHT, 3), "diffusers fixed its img2img resize: the guard can go"


def test_img2img_of_another_size_is_scaled_and_centre_cut_never_stretched(strings):
    wide = np.zeros((40, 200, 3), np.uint8)
    wide[:, 100:] = 255
    image, metadata = run(strings["img2img"], {0: wide})
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert metadata["inputs"]["image"] == "200x40 scaled to 320x64, centre cut, 192 x 0 pixels left out"


def test_img2img_runs_int_steps_times_strength_decoder_steps(strings):
    workflow, task = workflow_with(strings["img2img"], {0: random_image(1)})
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    workflow.run()
    assert len(steps) == task.get_progress_steps() == 3 + 2


@pytest.mark.parametrize("mask_kind", ["mask image", "drawn rectangle"])
def test_inpaint_equals_diffusers_with_the_mask_upright_on_a_non_square_image(strings, mask_kind):
    init = random_image(2)
    expected_mask = np.zeros((HEIGHT, WIDTH), np.float32)
    if mask_kind == "mask image":
        expected_mask[:, : WIDTH // 2] = 1
        workflow, task = workflow_with(strings["inpaint"], {0: init, 2: left_half_mask()})
    else:
        expected_mask[8:24, 16:56] = 1
        workflow, task = workflow_with(strings["inpaint"], {0: init})
        task.get_input(1).set_items([core.CGraphicsRectangle(16, 8, 39, 15)])
    workflow.run()
    settings = Settings.from_strings(strings["inpaint"])
    reference = inpaint_reference(settings, settings.seed, init, expected_mask)[0]
    assert max_difference(task.get_output(0).get_image(), reference) <= 1
    read = {"mask image": "mask", "drawn rectangle": "mask drawing"}[mask_kind]
    assert set(task.get_output(1).data["inputs"]) == {"image", read}
    transposed = inpaint_reference(settings, settings.seed, init, np.ascontiguousarray(expected_mask[::-1, ::-1]))[0]
    assert max_difference(task.get_output(0).get_image(), transposed) > 1, "the mask must matter"


def test_inpaint_reads_a_label_map_of_0_and_1_as_diffusers_does_and_says_how_it_read_it(strings):
    init = random_image(2)
    labels = (left_half_mask() > 0).astype(np.uint8)
    image, metadata = run(strings["inpaint"], {0: init, 2: labels})
    settings = Settings.from_strings(strings["inpaint"])
    # diffusers thresholds a numpy mask at 0.5 without scaling it: it repaints the 1s.
    reference = inpaint_reference(settings, settings.seed, init, labels.astype(np.float32))[0]
    assert max_difference(image, reference) <= 1
    assert metadata["inputs"]["mask"] == "128x64, used as it is; label map: non-zero repaints; 50% repainted"


def test_a_drawing_whose_shapes_miss_the_image_is_refused_as_such(strings):
    workflow, task = workflow_with(strings["inpaint"], {0: random_image(2)})
    task.get_input(1).set_items([core.CGraphicsRectangle(500, 500, 10, 10)])
    message = "inpaint input 'mask drawing': the shapes drawn cover no pixel of the image; accepted: shapes drawn"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run()


def test_inpaint_never_reuses_the_mask_of_an_earlier_run(strings):
    workflow, task = workflow_with(strings["inpaint"], {0: random_image(2)})
    task.get_input(1).set_items([core.CGraphicsRectangle(16, 8, 39, 15)])
    workflow.run()
    task.get_input(1).set_items([])
    with pytest.raises(RuntimeError, match=re.escape("inpaint needs a mask, white where to repaint")):
        workflow.run()


UNUSABLE_INPUTS = [
    ("img2img", {}, "img2img input 'image': no image was given."),
    ("inpaint", {2: left_half_mask()}, "inpaint input 'image': no image was given."),
    (
        "inpaint",
        {0: random_image(2)},
        "inpaint needs a mask, white where to repaint: draw it over the image (input 'mask drawing') "
        "or give a mask image (input 'mask').",
    ),
    (
        "inpaint",
        {0: random_image(2), 2: np.zeros((HEIGHT, HEIGHT), np.uint8)},
        "inpaint input 'mask': the mask is 64x64 but the image is 128x64; accepted: a mask of the image's size.",
    ),
    (
        "inpaint",
        {0: random_image(2), 2: np.zeros((HEIGHT, WIDTH), np.uint8)},
        "inpaint input 'mask': the mask repaints nothing (read as a label map, no 8-bit value reaching 128: every "
        "pixel is 0); accepted: white (or, in a label map, non-zero) where to repaint.",
    ),
    ("controlnet_depth", {}, "controlnet_depth input 'depth map': no image was given."),
    (
        "controlnet_depth",
        {0: np.full((HEIGHT, WIDTH), 87, np.uint8)},
        "controlnet_depth input 'depth map': every pixel of the depth map is 87: it carries no layout for "
        "ControlNet to follow; accepted: a depth map whose values vary.",
    ),
    ("mix", {0: random_image(3)}, "mix input 'image 2': no image was given."),
]


def with_sources(parameters: dict[str, str], sources: dict[int, np.ndarray]):
    """A workflow of the task fed by ``sources``; with none, its input 0 is the workflow's own, left empty."""
    workflow, task = workflow_with(parameters, sources)
    if not sources:
        workflow.connect_tasks(workflow.root(), task, [(0, 0)])
    return workflow


@pytest.mark.parametrize(("mode", "sources", "message"), UNUSABLE_INPUTS)
def test_a_missing_or_unusable_input_is_named(strings, mode, sources, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        with_sources(strings[mode], sources).run()


def test_after_every_refused_input_the_next_run_works(strings):
    for mode, sources, _ in UNUSABLE_INPUTS:
        with pytest.raises(RuntimeError):
            with_sources(strings[mode], sources).run()
    image, _ = run(strings["img2img"], {0: random_image(1)})
    assert image.shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("depth_kind", ["grayscale", "gray-in-rgb"])
def test_controlnet_depth_equals_diffusers(strings, depth_kind):
    depth = random_image(4, (HEIGHT, WIDTH))
    if depth_kind == "gray-in-rgb":
        depth = np.repeat(depth[:, :, None], 3, axis=2)
    image, metadata = run(strings["controlnet_depth"], {0: depth})
    settings = Settings.from_strings(strings["controlnet_depth"])
    assert max_difference(image, controlnet_reference(settings, settings.seed, depth)[0]) <= 1
    assert metadata["inputs"] == {"depth map": "128x64, used as it is"}
    turned = np.ascontiguousarray(depth[::-1, ::-1])
    assert max_difference(image, controlnet_reference(settings, settings.seed, turned)[0]) > 1, "the map must matter"


@pytest.mark.parametrize("negative_prompt", ["", "blurry"])
def test_mix_equals_diffusers_interpolate_then_decoder(strings, negative_prompt):
    parameters = {**strings["mix"], "negative_prompt": negative_prompt}
    images = [random_image(5), random_image(6, (32, 32, 3))]
    workflow, task = workflow_with(parameters, dict(enumerate(images)))
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    workflow.run()
    settings = Settings.from_strings(parameters)
    assert len(steps) == task.get_progress_steps() == 3 * 2 + 4
    reference = mix_reference(settings, settings.seed, images)[0]
    assert max_difference(task.get_output(0).get_image(), reference) <= 1
    assert task.get_output(1).data["inputs"] == {
        "image 1": "128x64, embedded by CLIP at 224x224 (shorter side scaled to 224, centre cut)",
        "image 2": "32x32, embedded by CLIP at 224x224 (shorter side scaled to 224, centre cut)",
    }


@pytest.mark.parametrize(("prompt", "weights", "prior_runs"), [("", "", 1), ("a red house", "0.4, 0.6", 2)])
def test_mix_of_one_image_equals_diffusers_interpolate_then_decoder(strings, prompt, weights, prior_runs):
    # Without a prompt: variations of the image (interpolate([image], [1.0])); with one: the image and the prompt.
    parameters = {**strings["mix"], "mix_images": "1", "prompt": prompt, "mix_weights": weights}
    image = random_image(5)
    workflow, task = workflow_with(parameters, {0: image})
    assert task.get_input_count() == 1
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    workflow.run()
    settings = Settings.from_strings(parameters)
    assert len(steps) == task.get_progress_steps() == 3 * prior_runs + 4
    picture = task.get_output(0).get_image()
    assert max_difference(picture, mix_reference(settings, settings.seed, [image])[0]) <= 1
    other = mix_reference(settings, settings.seed, [random_image(6)])[0]
    assert max_difference(picture, other) > 1, "the image must matter"


def test_a_mix_picture_far_longer_than_wide_gives_clip_only_its_centre_square(strings, tiny_repos):
    from transformers import CLIPImageProcessor

    from infer_kandinsky_2_2.kandinsky22_engine.errors import InputError
    from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs, prepare_inputs
    from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

    settings = Settings.from_strings(strings["mix"])
    strip, square = random_image(8, (4, 2000, 3)), random_image(9, (64, 64, 3))
    prepared = prepare_inputs(settings, Inputs(mix_images=(strip, square)), Runtime("cpu", np.float32))
    assert prepared.notes == {
        "image 1": "2000x4; its centre 12x4 kept (all that CLIP reads of it, within half a pixel)",
        "image 2": "64x64",
    }
    assert np.array_equal(np.asarray(prepared.mix_images[0]), strip[:, 994:1006])
    # What CLIP's processor reads of the centre is what it reads of the whole strip, which it scales to 224 x
    # 112,000 pixels first: the same, or, where its centre falls between two source pixels, within half a
    # source pixel of it (under half a grey level on a smooth picture).
    processor = CLIPImageProcessor.from_pretrained(tiny_repos.prior / "image_processor")
    for shape in ((4, 2000), (4, 4001), (3, 4000), (10, 3501), (4001, 4)):
        rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
        phase = (rows + columns) / max(shape) * 6 * np.pi
        smooth = np.stack([127 + 100 * np.sin(phase + shift) for shift in (0, 2, 4)], axis=-1).round()
        smooth = smooth.astype(np.uint8)
        kept = prepare_inputs(settings, Inputs(mix_images=(smooth, square)), Runtime("cpu", np.float32)).mix_images[0]
        whole = processor(Image.fromarray(smooth), return_tensors="np").pixel_values
        difference = np.abs(whole - processor(kept, return_tensors="np").pixel_values)
        assert difference.mean() < 0.01 and difference.max() < 0.05, shape
    with pytest.raises(InputError, match=re.escape("mix: received 3 images with mix_images 2; accepted: at most 2")):
        prepare_inputs(settings, Inputs(mix_images=(square, square, square)), Runtime("cpu", np.float32))


def test_mix_weights_are_counted_against_the_items(strings):
    workflow, _ = workflow_with({**strings["mix"], "mix_weights": "0.5, 0.5"}, {0: random_image(5), 1: random_image(6)})
    message = (
        "mix_weights: received '0.5, 0.5'; accepted: 3 numbers, 0 or more and not all 0 "
        "(one per image, then one for the prompt if it is set)."
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run()


@pytest.mark.parametrize("mode", ["controlnet_depth", "mix", "img2img", "inpaint"])
def test_stop_works_in_every_mode(strings, mode):
    sources = {
        "controlnet_depth": {0: random_image(4, (HEIGHT, WIDTH))},
        "mix": {0: random_image(5), 1: random_image(6)},
        "img2img": {0: random_image(1)},
        "inpaint": {0: random_image(2), 2: left_half_mask()},
    }[mode]
    workflow, task = workflow_with(strings[mode], sources)
    stop_at_step(task, task.get_progress_steps() - 1)
    last_step = "1 of 2" if mode == "img2img" else "3 of 4"
    stopped = f"Generation stopped by the user after step {last_step} of the decoder."
    with pytest.raises(RuntimeError, match=re.escape(stopped)):
        workflow.run()
    task.emit_step_progress = lambda: None
    workflow.run()
    assert task.get_output(0).get_image().shape == (HEIGHT, WIDTH, 3)


def test_every_mode_shares_one_prior_and_img2img_and_mix_share_the_text2img_decoder(strings, tiny_strings):
    workflow, task = workflow_with(tiny_strings)
    workflow.run()
    cache = model_cache(task)
    before = dict(cache.load_counts)
    run(strings["img2img"], {0: random_image(1)})
    run(strings["mix"], {0: random_image(5), 1: random_image(6)})
    # mix loads the prior repo's image encoder (if no earlier test left it loaded), and nothing else.
    assert {role: count for role, count in cache.load_counts.items() if role != "image_encoder"} == {
        role: count for role, count in before.items() if role != "image_encoder"
    }
    run(strings["inpaint"], {0: random_image(2), 2: left_half_mask()})
    run(strings["controlnet_depth"], {0: random_image(4, (HEIGHT, WIDTH))})
    run(strings["inpaint"], {0: random_image(2), 2: left_half_mask()})
    assert cache.load_counts["prior"] == before["prior"]
    assert cache.load_counts["decoder"] == before["decoder"]
    roles = {"prior", "image_encoder", "decoder", "inpaint_decoder", "controlnet_decoder"}
    assert set(cache.loaded_keys()) == roles


def test_each_mode_uses_its_own_default_repo_unless_model_name_is_set():
    names = {mode: decoder_model_name(Settings(mode=mode)) for mode in ("text2img", "img2img", "mix")}
    assert set(names.values()) == {"kandinsky-community/kandinsky-2-2-decoder"}
    assert decoder_model_name(Settings(mode="inpaint")) == "kandinsky-community/kandinsky-2-2-decoder-inpaint"
    controlnet = decoder_model_name(Settings(mode="controlnet_depth"))
    assert controlnet == "kandinsky-community/kandinsky-2-2-controlnet-depth"
    assert decoder_model_name(Settings(mode="inpaint", model_name="/my/inpaint")) == "/my/inpaint"


def test_progress_steps_count_every_prior_run_of_mix():
    assert progress_steps(Settings(mode="mix", prompt="a cat")) == 25 * 2 + 100
    assert progress_steps(Settings(mode="mix", prompt="")) == 25 + 100
    assert progress_steps(Settings(mode="img2img", strength=0.3)) == 25 + 30


def test_the_readme_workflows_feed_inputs_from_the_workflow_input_and_from_python(strings):
    """As the README shows: the workflow's own input feeds input 0; set_image feeds an unconnected input."""
    workflow, task = workflow_with(strings["img2img"])
    workflow.connect_tasks(workflow.root(), task, [(0, 0)])
    workflow.run_on(array=random_image(1))
    settings = Settings.from_strings(strings["img2img"])
    reference = img2img_reference(settings, settings.seed, random_image(1), swap_sizes=True)[0]
    assert max_difference(task.get_output(0).get_image(), reference) <= 1

    workflow, task = workflow_with(strings["mix"])
    workflow.connect_tasks(workflow.root(), task, [(0, 0)])
    task.get_input(1).set_image(random_image(6))
    workflow.run_on(array=random_image(5))
    settings = Settings.from_strings(strings["mix"])
    reference = mix_reference(settings, settings.seed, [random_image(5), random_image(6)])[0]
    assert max_difference(task.get_output(0).get_image(), reference) <= 1


@pytest.mark.parametrize("mode", ["text2img", "img2img", "inpaint", "controlnet_depth", "mix"])
def test_a_batch_gives_one_output_per_picture_each_equal_to_diffusers(strings, tiny_strings, mode):
    parameters = {**(tiny_strings if mode == "text2img" else strings[mode]), "num_images": "3"}
    inputs = {
        "text2img": {},
        "img2img": {0: random_image(1)},
        "inpaint": {0: random_image(2), 2: left_half_mask()},
        "controlnet_depth": {0: random_image(4, (HEIGHT, WIDTH))},
        "mix": {0: random_image(5), 1: random_image(6)},
    }[mode]
    workflow, task = workflow_with(parameters, inputs)
    assert task.get_output_count() == 4
    assert task.get_output(1).data_type == core.IODataType.DATA_DICT
    workflow.run()
    pictures = [task.get_output(index).get_image() for index in (0, 2, 3)]
    settings = Settings.from_strings(parameters)
    mask = (left_half_mask() > 0).astype(np.float32)
    references = {
        "text2img": lambda: diffusers_reference(settings, settings.seed),
        "img2img": lambda: img2img_reference(settings, settings.seed, inputs[0], swap_sizes=True),
        "inpaint": lambda: inpaint_reference(settings, settings.seed, inputs[0], mask),
        "controlnet_depth": lambda: controlnet_reference(settings, settings.seed, inputs[0]),
        "mix": lambda: mix_reference(settings, settings.seed, [inputs[0], inputs[1]]),
    }[mode]()
    assert all(max_difference(picture, reference) <= 1 for picture, reference in zip(pictures, references, strict=True))
    assert not np.array_equal(pictures[0], pictures[1])
    assert task.get_output(1).data["num_images"] == 3
    task.set_parameters({"num_images": "1"})
    assert task.get_output_count() == 2


DECODER_KINDS = {
    "decoder": "a KandinskyV22Pipeline repo whose UNet takes 4 input channels with added embedding 'image' (a "
    "text-to-image decoder, for text2img, img2img, mix)",
    "inpaint_decoder": "a KandinskyV22InpaintPipeline repo whose UNet takes 9 input channels with added embedding "
    "'image' (an inpainting decoder, for inpaint, outpaint)",
    "controlnet_decoder": "a KandinskyV22ControlnetPipeline repo whose UNet takes 8 input channels with added "
    "embedding 'image_hint' (a ControlNet depth decoder, for controlnet_depth, controlnet_img2img)",
}
NEEDS = {
    "text2img": "text2img needs a text-to-image decoder (a UNet with 4 input channels and added embedding 'image'), "
    "such as kandinsky-community/kandinsky-2-2-decoder.",
    "inpaint": "inpaint needs an inpainting decoder (a UNet with 9 input channels and added embedding 'image'), such "
    "as kandinsky-community/kandinsky-2-2-decoder-inpaint.",
    "controlnet_depth": "controlnet_depth needs a ControlNet depth decoder (a UNet with 8 input channels and added "
    "embedding 'image_hint'), such as kandinsky-community/kandinsky-2-2-controlnet-depth.",
}


@pytest.mark.parametrize(
    ("mode", "repo"),
    [
        ("inpaint", "decoder"),
        ("controlnet_depth", "decoder"),
        ("text2img", "inpaint_decoder"),
        ("inpaint", "controlnet_decoder"),
    ],
)
def test_a_decoder_repo_that_cannot_serve_the_mode_is_refused_before_any_model_runs(strings, tiny_repos, mode, repo):
    parameters = {**strings.get(mode, strings["img2img"]), "mode": mode, "model_name": str(getattr(tiny_repos, repo))}
    sources = {"inpaint": {0: random_image(2), 2: left_half_mask()}, "controlnet_depth": {0: random_image(4)}}
    workflow, task = workflow_with(parameters, sources.get(mode, {}))
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    message = (
        f"model_name: folder {str(getattr(tiny_repos, repo))!r} cannot serve {mode}: it is {DECODER_KINDS[repo]}; "
        f"{NEEDS[mode]}"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run()
    assert steps == []


def test_a_decoder_given_as_prior_is_refused(strings, tiny_repos):
    workflow, _ = workflow_with({**strings["img2img"], "mode": "text2img", "prior_model_name": str(tiny_repos.decoder)})
    message = (
        f"prior_model_name: folder {str(tiny_repos.decoder)!r} is not a Kandinsky 2.2 prior: it is "
        f"{DECODER_KINDS['decoder']}; accepted: a prior repo (CLIP text encoder and prior transformer), such as "
        "kandinsky-community/kandinsky-2-2-prior."
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run()
