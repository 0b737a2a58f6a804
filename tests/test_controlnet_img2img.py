"""controlnet_img2img through the Ikomia API, against diffusers' Kandinsky 2.2 guide: the emb2emb prior, then
``KandinskyV22ControlnetImg2ImgPipeline``."""

import re

import numpy as np
import pytest
from PIL import Image

from helpers import (
    HEIGHT,
    WIDTH,
    controlnet_img2img_reference,
    max_difference,
    model_cache,
    random_image,
    stop_at_step,
    workflow_with,
)
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings, SettingsError

IMAGE, DEPTH = random_image(7), random_image(8, (HEIGHT, WIDTH))


@pytest.fixture
def strings(tiny_strings, tiny_repos) -> dict[str, str]:
    """A quick non-square controlnet_img2img run: 3 prior steps at prior_strength 0.7 (2 steps), 4 decoder steps
    at strength 0.5 (2 steps), guided."""
    return {
        **tiny_strings,
        "mode": "controlnet_img2img",
        "model_name": str(tiny_repos.controlnet_decoder),
        "guidance_scale": "2.0",
        "strength": "0.5",
        "prior_strength": "0.7",
    }


def run_counting_steps(parameters: dict[str, str]) -> tuple[list[np.ndarray], dict, int, int]:
    """The pictures, the metadata, the step callbacks seen and the task's progress count of one run."""
    workflow, task = workflow_with(parameters, {0: IMAGE, 1: DEPTH})
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    workflow.run()
    outputs = [0, *range(2, task.get_output_count())]
    return [task.get_output(index).get_image() for index in outputs], task.get_output(1).data, len(steps), task


@pytest.mark.parametrize(
    ("negative_prompt", "negative_prior_prompt", "num_images"),
    [("blurry", "", 1), ("", "", 1), ("blurry", "ugly", 2)],
)
def test_controlnet_img2img_equals_diffusers_guide_on_a_non_square_image(
    strings, negative_prompt, negative_prior_prompt, num_images
):
    parameters = {
        **strings,
        "negative_prompt": negative_prompt,
        "negative_prior_prompt": negative_prior_prompt,
        "num_images": str(num_images),
    }
    pictures, metadata, steps, task = run_counting_steps(parameters)
    settings = Settings.from_strings(parameters)
    references = controlnet_img2img_reference(settings, settings.seed, IMAGE, DEPTH)
    assert len(pictures) == num_images
    for picture, reference in zip(pictures, references, strict=True):
        assert picture.shape == (HEIGHT, WIDTH, 3)
        assert max_difference(picture, reference) <= 1
    # int(3 x 0.7) prior steps towards the prompt, 3 for the negative, int(4 x 0.5) decoder steps.
    assert steps == task.get_progress_steps() == 2 + 3 + 2
    assert metadata["inputs"] == {
        "image": "128x64, used as it is, embedded by CLIP at 224x224 (shorter side scaled to 224, centre cut)",
        "depth map": "128x64, used as it is",
    }


def test_the_image_and_the_depth_map_both_matter(strings):
    # The whole schedule, so that the depth map's effect on the random tiny UNet shows.
    parameters = {**strings, "strength": "1.0"}
    pictures, *_ = run_counting_steps(parameters)
    settings = Settings.from_strings(parameters)
    other_image = controlnet_img2img_reference(settings, settings.seed, random_image(9), DEPTH)[0]
    other_depth = controlnet_img2img_reference(settings, settings.seed, IMAGE, 255 - DEPTH)[0]
    assert max_difference(pictures[0], other_image) > 1
    assert max_difference(pictures[0], other_depth) > 1


def test_controlnet_img2img_offers_an_image_and_a_depth_map():
    _, task = workflow_with({"mode": "controlnet_img2img"})
    assert [task.get_input(index).name for index in range(task.get_input_count())] == ["image", "depth map"]


def test_it_shares_the_controlnet_decoder_and_the_prior_with_the_other_modes(strings):
    workflow, task = workflow_with({**strings, "mode": "controlnet_depth"}, {0: DEPTH})
    workflow.run()
    cache = model_cache(task)
    before = dict(cache.load_counts)
    run_counting_steps(strings)
    loaded = {role: count for role, count in cache.load_counts.items() if role != "image_encoder"}
    assert loaded == {role: count for role, count in before.items() if role != "image_encoder"}


@pytest.mark.parametrize(
    ("stop_after", "message"),
    [
        (1, "Generation stopped by the user after step 1 of 2 of the prior."),
        (2 + 3 + 1, "Generation stopped by the user after step 1 of 2 of the decoder."),
    ],
)
def test_stop_ends_the_run_within_a_step_of_the_prior_or_the_decoder(strings, stop_after, message):
    workflow, task = workflow_with(strings, {0: IMAGE, 1: DEPTH})
    steps = stop_at_step(task, stop_after)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run()
    assert len(steps) == stop_after
    task.emit_step_progress = lambda: None
    workflow.run()
    assert task.get_output(0).get_image().shape == (HEIGHT, WIDTH, 3)


def test_strengths_that_leave_no_step_are_refused_by_name(strings):
    settings = Settings.from_strings(strings)
    with pytest.raises(SettingsError) as refused:
        Settings(**{**settings.__dict__, "prior_strength": 0.3})
    assert str(refused.value) == (
        "prior_strength: received '0.3' with prior_num_inference_steps 3; accepted: a prior_strength that leaves "
        "controlnet_img2img at least one prior step (prior_num_inference_steps x prior_strength >= 1)."
    )
    with pytest.raises(SettingsError) as refused:
        Settings(**{**settings.__dict__, "strength": 0.2})
    assert str(refused.value) == (
        "strength: received '0.2' with num_inference_steps 4; accepted: a strength that leaves controlnet_img2img "
        "at least one decoder step (num_inference_steps x strength >= 1)."
    )


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ({1: DEPTH}, "controlnet_img2img input 'image': no image was given."),
        ({0: IMAGE}, "controlnet_img2img input 'depth map': no image was given."),
    ],
)
def test_a_missing_input_is_named(strings, sources, message):
    workflow, _ = workflow_with(strings, sources)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run()


def test_with_depth_model_the_depth_map_is_estimated_from_the_image_itself(strings, tiny_depth_model):
    from transformers import pipeline

    parameters = {**strings, "depth_model": str(tiny_depth_model), "strength": "1.0"}
    workflow, task = workflow_with(parameters, {0: IMAGE})
    assert task.get_input_count() == 1
    try:
        workflow.run()
    finally:
        # The other test files expect the tasks' cache without a depth estimator.
        model_cache(task).release("depth_estimator")
    # diffusers' guide: the depth-estimation pipeline's "depth" picture of the image, then make_hint.
    depth = np.array(pipeline("depth-estimation", model=str(tiny_depth_model))(Image.fromarray(IMAGE))["depth"])
    settings = Settings.from_strings(parameters)
    reference = controlnet_img2img_reference(settings, settings.seed, IMAGE, depth)[0]
    assert max_difference(task.get_output(0).get_image(), reference) <= 1
    note = task.get_output(1).data["inputs"]["image"]
    assert note.startswith(f"128x64, used as it is; depth estimated by {tiny_depth_model}")


def test_both_strengths_are_refused_at_once(strings):
    settings = Settings.from_strings(strings)
    with pytest.raises(SettingsError) as refused:
        Settings(**{**settings.__dict__, "strength": 0.2, "prior_strength": 0.3})
    assert [line.split(":")[0] for line in str(refused.value).splitlines()] == ["strength", "prior_strength"]
