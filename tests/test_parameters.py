"""The single parameter definition: names, defaults, parsing, refusals and the README table."""

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infer_kandinsky_2_2.kandinsky22_engine.parameters import (
    PARAMETERS,
    Settings,
    SettingsError,
)

README = Path(__file__).resolve().parent.parent / "README.md"
BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}
DEVICE_NAMES = ("cuda", "cuda_device", "memory_mode", "cuda_graphs", "compile_unet")


def test_names_and_defaults_are_those_of_the_specification():
    defaults = {name: value for name, value in Settings().to_strings().items() if name not in DEVICE_NAMES}
    assert defaults == {
        "mode": "text2img",
        "model_name": "kandinsky-community/kandinsky-2-2-decoder",
        "prior_model_name": "kandinsky-community/kandinsky-2-2-prior",
        "depth_model": "",
        "lora": "",
        "lora_scale": "",
        "prompt": "portrait of a young women, blue eyes, cinematic",
        "negative_prompt": "low quality, bad quality",
        "negative_prior_prompt": "",
        "prior_num_inference_steps": "25",
        "prior_guidance_scale": "4.0",
        "prior_strength": "0.85",
        "num_inference_steps": "100",
        "guidance_scale": "1.0",
        "scheduler": "default",
        "strength": "0.3",
        "height": "768",
        "width": "768",
        "num_images": "1",
        "seed": "-1",
        "mix_images": "2",
        "mix_weights": "",
        "mask_mode": "repaint",
        "paste_back": "False",
        "outpaint_top": "0",
        "outpaint_bottom": "0",
        "outpaint_left": "128",
        "outpaint_right": "128",
        "outpaint_overlap": "32",
    }
    assert list(BY_NAME) == [*defaults, *DEVICE_NAMES]


def test_cuda_defaults_to_what_the_machine_has_the_first_gpu_memory_to_the_gpu_and_nothing_is_compiled():
    import torch

    assert Settings().cuda is torch.cuda.is_available()
    assert Settings().cuda_device == 0
    assert Settings().memory_mode == "gpu"
    assert Settings().compile_unet == "off"
    # Not measured on a GPU yet (BENCHMARKS.md): off until it is.
    assert Settings().cuda_graphs is False


def test_every_value_survives_a_round_trip_through_strings():
    settings = Settings(
        model_name="/models/decoder",
        prior_model_name="me/prior",
        depth_model="depth-anything/Depth-Anything-V2-Small-hf@main",
        prompt="a red cat",
        negative_prompt="",
        prior_num_inference_steps=2,
        prior_guidance_scale=7.5,
        num_inference_steps=1,
        guidance_scale=20.0,
        height=2048,
        width=64,
        seed=2**63 - 1,
        cuda=False,
    )
    assert Settings.from_strings(settings.to_strings()) == settings


@given(st.integers(min_value=1, max_value=32))
def test_sizes_parse_from_any_multiple_of_64(multiple):
    assert Settings.from_strings({"height": str(64 * multiple)}).height == 64 * multiple


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_seed_accepts_exactly_minus_one_and_non_negative_63_bit_integers(seed):
    if -1 <= seed < 2**63:
        assert Settings.from_strings({"seed": str(seed)}).seed == seed
    else:
        with pytest.raises(SettingsError, match=r"^seed: received"):
            Settings.from_strings({"seed": str(seed)})


@given(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False))
def test_guidance_accepts_exactly_the_finite_numbers_from_1_to_20(scale):
    if 1.0 <= scale <= 20.0:
        assert Settings.from_strings({"guidance_scale": repr(scale)}).guidance_scale == scale
    else:
        with pytest.raises(SettingsError, match=r"^guidance_scale: received"):
            Settings.from_strings({"guidance_scale": repr(scale)})


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("False", False), (" 1 ", True), ("0", False), ("yes", True), ("off", False)],
)
def test_cuda_parses_the_usual_words(text, value):
    assert Settings.from_strings({"cuda": text}).cuda is value


def test_whole_numbers_written_as_floats_are_accepted():
    assert Settings.from_strings({"num_inference_steps": "30.0"}).num_inference_steps == 30


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("width", "0", "a multiple of 64 from 64 to 2048"),
        ("width", "4096", "a multiple of 64 from 64 to 2048"),
        ("height", "big", "a multiple of 64 from 64 to 2048"),
        ("prior_num_inference_steps", "1", "a whole number from 2 to 1000"),
        ("num_inference_steps", "2.5", "a whole number from 1 to 1000"),
        ("num_inference_steps", "1001", "a whole number from 1 to 1000"),
        ("prior_guidance_scale", "0.5", "a number from 1 to 20"),
        ("guidance_scale", "nan", "a number from 1 to 20"),
        ("guidance_scale", "four", "a number from 1 to 20"),
        ("seed", "1e3", "a whole number from -1 to 9223372036854775807"),
        ("cuda", "maybe", "True or False"),
        ("cuda_device", "-1", "a whole number of at least 0"),
        ("cuda_device", "1.5", "a whole number of at least 0"),
        ("model_name", "", "non-empty text"),
        ("prior_model_name", "   ", "non-empty text"),
    ],
)
def test_a_refused_value_names_the_parameter_the_value_and_what_is_accepted(name, value, accepted):
    with pytest.raises(SettingsError) as refused:
        Settings.from_strings({name: value})
    assert str(refused.value) == f"{name}: received {value!r}; accepted: {accepted}. {BY_NAME[name].help}"


def test_every_refused_value_is_reported_at_once():
    with pytest.raises(SettingsError) as refused:
        Settings.from_strings({"height": "65", "cuda": "2", "steps": "3"})
    lines = str(refused.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["steps", "height", "cuda"]
    assert lines[0].startswith("steps: unknown parameter; known parameters: mode, model_name, prior_model_name")


def test_a_misspelt_name_is_refused_with_the_closest_known_names_first():
    with pytest.raises(SettingsError) as refused:
        Settings.from_strings({"num_image": "2", "seeds": "1"})
    every = ", ".join(parameter.name for parameter in PARAMETERS)
    assert str(refused.value).splitlines() == [
        f"num_image: unknown parameter; did you mean num_images or mix_images? Known parameters: {every}",
        f"seeds: unknown parameter; did you mean seed? Known parameters: {every}",
    ]


def test_values_given_from_python_are_checked_too():
    with pytest.raises(SettingsError, match=r"^height: received '65'"):
        Settings(height=65)
    with pytest.raises(SettingsError, match=r"^num_inference_steps: received 'True'"):
        Settings(num_inference_steps=True)


def test_values_given_from_python_are_kept_as_read_not_as_given():
    # A string "False" is truthy: kept as given, it would turn cuda_graphs on.
    settings = Settings(cuda_graphs="False", cuda="false", height=768.0, guidance_scale=4)
    assert settings.cuda_graphs is False and settings.cuda is False
    assert (settings.height, type(settings.height)) == (768, int)
    assert (settings.guidance_scale, type(settings.guidance_scale)) == (4.0, float)
    assert replace(settings, cuda_graphs="True").cuda_graphs is True


def test_every_generated_block_of_the_readme_and_the_docs_is_up_to_date():
    from update_readme import DOCUMENTS, rewrite

    assert README in DOCUMENTS
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        assert rewrite(text, path) == text, f"{path.name}: run python scripts/update_readme.py"


def test_every_parameter_has_a_summary_of_a_few_words_for_the_readme():
    from update_readme import README as readme_path

    table = readme_path.read_text(encoding="utf-8").split("<!-- parameters:start -->", 1)[1]
    for parameter in PARAMETERS:
        assert parameter.summary and len(parameter.summary.split()) <= 12, parameter.name
        assert f"| {parameter.name} | " in table and f" | {parameter.summary} |" in table


@pytest.mark.parametrize(
    ("name", "briefly"),
    [
        ("prior_num_inference_steps", "whole, 2 to 1000"),
        ("strength", "0 to 1"),
        ("height", "64 to 2048, by 64"),
        ("cuda_device", "whole, 0 or more"),
        ("mask_mode", "repaint, keep"),
        ("paste_back", "True or False"),
        ("model_name", "non-empty text"),
    ],
)
def test_the_readme_gives_the_accepted_values_briefly(name, briefly):
    assert BY_NAME[name].accepted_briefly() == briefly


def test_the_negative_prompt_help_gives_the_image_encoders_size_from_the_file_list():
    from infer_kandinsky_2_2.kandinsky22_devkit.published import file_sizes

    size = file_sizes()["kandinsky-community/kandinsky-2-2-prior"]["main"]["image_encoder/model.safetensors"]
    assert f"({size / 1e9:.2f} GB more to download once)" in BY_NAME["negative_prompt"].help


def test_readme_python_example_sets_every_parameter_to_its_default():
    readme = README.read_text(encoding="utf-8")
    example = readme.split("## Use from Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    values = dict(re.findall(r'^\s+"(\w+)": "([^"]*)",', example, re.M))
    assert list(values) == [parameter.name for parameter in PARAMETERS]
    settings = Settings.from_strings(values)
    # cuda's default depends on the machine; the example shows it where CUDA is available.
    assert settings == Settings(cuda=True)
