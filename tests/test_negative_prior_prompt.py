"""negative_prior_prompt: empty, today's pictures (diffusers' combined pipelines); set, the authors' definition."""

import numpy as np
import pytest

from helpers import (
    authors_negative_prior_reference,
    diffusers_reference,
    max_difference,
    mix_reference,
    random_image,
    workflow_with,
)
from infer_kandinsky_2_2.kandinsky22_engine.generation import progress_steps
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings


def run(parameters: dict[str, str], sources: dict | None = None) -> tuple[list[np.ndarray], int, int]:
    """The pictures of one run, the step callbacks seen and the task's progress count."""
    workflow, task = workflow_with(parameters, sources)
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    workflow.run()
    outputs = [0, *range(2, task.get_output_count())]
    return [task.get_output(index).get_image() for index in outputs], len(steps), task.get_progress_steps()


@pytest.mark.parametrize("negative_prompt", ["blurry", ""])
def test_set_it_follows_the_authors_definition_with_a_second_prior_run(tiny_strings, negative_prompt):
    parameters = {
        **tiny_strings,
        "negative_prompt": negative_prompt,
        "negative_prior_prompt": "ugly, deformed",
        "guidance_scale": "2.0",
        "num_images": "2",
    }
    pictures, steps, progress = run(parameters)
    settings = Settings.from_strings(parameters)
    references = authors_negative_prior_reference(settings, settings.seed)
    assert all(max_difference(mine, theirs) <= 1 for mine, theirs in zip(pictures, references, strict=True))
    assert steps == progress == 3 * 2 + 4
    today = diffusers_reference(Settings.from_strings({**parameters, "negative_prior_prompt": ""}), settings.seed)
    assert max_difference(pictures[0], today[0]) > 1, "setting it must change the picture"


def test_empty_it_gives_diffusers_combined_pipeline_with_one_prior_run(tiny_strings):
    parameters = {**tiny_strings, "negative_prompt": "blurry", "guidance_scale": "2.0"}
    pictures, steps, progress = run(parameters)
    settings = Settings.from_strings(parameters)
    assert settings.negative_prior_prompt == ""
    assert max_difference(pictures[0], diffusers_reference(settings, settings.seed)[0]) <= 1
    assert steps == progress == 3 + 4


def test_in_mix_it_is_interpolate_s_negative_prior_prompt(tiny_strings, tiny_repos):
    parameters = {
        **tiny_strings,
        "mode": "mix",
        "negative_prior_prompt": "ugly, deformed",
        "mix_weights": "0.2 0.3 0.5",
        "guidance_scale": "2.0",
    }
    images = [random_image(5), random_image(6)]
    pictures, steps, progress = run(parameters, dict(enumerate(images)))
    settings = Settings.from_strings(parameters)
    assert max_difference(pictures[0], mix_reference(settings, settings.seed, images)[0]) <= 1
    assert steps == progress == 3 * 2 + 4


def test_progress_counts_the_second_prior_run_in_the_modes_that_make_it():
    assert progress_steps(Settings(negative_prior_prompt="ugly")) == 25 * 2 + 100
    assert progress_steps(Settings(mode="img2img", negative_prior_prompt="ugly", strength=0.3)) == 25 * 2 + 30
    assert progress_steps(Settings(mode="mix", negative_prior_prompt="ugly")) == 25 * 2 + 100


def test_a_long_negative_prior_prompt_is_cut_and_the_metadata_says_so(tiny_strings):
    workflow, task = workflow_with({**tiny_strings, "negative_prior_prompt": "a " * 80 + "grey dog"})
    workflow.run()
    truncated = task.get_output(1).data["truncated"]
    assert set(truncated) == {"negative_prior_prompt"}
    assert truncated["negative_prior_prompt"].strip().endswith("grey dog")


def test_the_image_encoder_is_loaded_only_when_the_negative_prompt_is_empty(tiny_strings):
    # The authors' prior run on the negative prompt asks diffusers for a zero-image embedding it then discards.
    from infer_kandinsky_2_2.kandinsky22_engine.generation import generate
    from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache

    for negative_prompt, encoder_loads in (("blurry", 0), ("", 1)):
        cache = ModelCache()
        settings = Settings.from_strings(
            {**tiny_strings, "negative_prompt": negative_prompt, "negative_prior_prompt": "ugly"}
        )
        generate(settings, cache=cache)
        assert cache.load_counts["image_encoder"] == encoder_loads
