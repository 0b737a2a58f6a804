"""depth_model: the ControlNet modes' depth map estimated from a photo by a transformers depth-estimation model, as
diffusers' Kandinsky ControlNet guide does it; its inputs, loading once, refusals, and fetching from a hub."""

import functools
import io
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import DepthAnythingForDepthEstimation, pipeline

from fake_hub import FakeHub, FakeRepo, hub_at
from helpers import (
    HEIGHT,
    WIDTH,
    controlnet_reference,
    files_of,
    max_difference,
    model_cache,
    random_image,
    workflow_with,
)
from helpers import run_workflow as run
from infer_kandinsky_2_2.kandinsky22_engine import generation, hub
from infer_kandinsky_2_2.kandinsky22_engine.errors import InputError
from infer_kandinsky_2_2.kandinsky22_engine.generation import generate
from infer_kandinsky_2_2.kandinsky22_engine.images import depth_hint, fit
from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs
from infer_kandinsky_2_2.kandinsky22_engine.models import (
    DEPTH_ESTIMATOR,
    DepthEstimatorLoader,
    ModelCache,
    ModelKey,
    ModelLoadError,
)
from infer_kandinsky_2_2.kandinsky22_engine.modes import (
    DEPTH_INPUT,
    IMAGE_INPUT,
    MODES,
    input_names,
    modes_reading,
)
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
from infer_kandinsky_2_2.kandinsky22_engine.repos import DEPTH_MODEL_TYPES, check_depth_model

ACCEPTED = (
    f"accepted: a depth-estimation model ({', '.join(DEPTH_MODEL_TYPES)}) with config.json, preprocessor_config.json "
    "and safetensors weights at its root, such as depth-anything/Depth-Anything-V2-Small-hf, or depth_model empty to "
    "give a depth map (input 'depth map')."
)
PHOTO = random_image(7)


@pytest.fixture(scope="module", autouse=True)
def release_the_depth_estimator():
    """Leave the tasks' process-wide cache without a depth estimator, as the other test files expect it."""
    yield
    _, task = workflow_with({})
    model_cache(task).release(DEPTH_ESTIMATOR)


@pytest.fixture
def strings(tiny_strings, tiny_repos, tiny_depth_model) -> dict[str, str]:
    """A quick controlnet_depth run whose depth map the tiny depth model estimates."""
    return {
        **tiny_strings,
        "mode": "controlnet_depth",
        "model_name": str(tiny_repos.controlnet_decoder),
        "depth_model": str(tiny_depth_model),
    }


@functools.cache
def guide_estimator(folder: str):
    """The depth estimator as diffusers' Kandinsky ControlNet guide makes it (the model named)."""
    return pipeline("depth-estimation", model=folder)


def guide_depth(folder: Path, photo: np.ndarray) -> np.ndarray:
    """The guide's ``make_hint`` up to its division: ``np.array(depth_estimator(image)["depth"])``, uint8."""
    return np.array(guide_estimator(str(folder))(Image.fromarray(photo))["depth"])


def names_of(task) -> list[str]:
    return [task.get_input(index).name for index in range(task.get_input_count())]


def test_the_modes_that_read_a_depth_map_are_those_that_read_depth_model():
    assert modes_reading("depth_model") == tuple(name for name, mode in MODES.items() if DEPTH_INPUT in mode.inputs)


def test_depth_model_puts_the_image_in_place_of_the_depth_map_or_drops_it_when_the_mode_reads_the_image():
    assert input_names("controlnet_depth") == (DEPTH_INPUT,)
    assert input_names("controlnet_depth", depth_model="someone/depth") == (IMAGE_INPUT,)
    assert input_names("img2img", depth_model="someone/depth") == (IMAGE_INPUT,)
    assert input_names("text2img", depth_model="someone/depth") == ()
    assert input_names("controlnet_img2img") == (IMAGE_INPUT, DEPTH_INPUT)
    assert input_names("controlnet_img2img", depth_model="someone/depth") == (IMAGE_INPUT,)


def test_the_task_offers_the_photo_while_depth_model_is_set_and_the_depth_map_otherwise():
    _, task = workflow_with({"mode": "controlnet_depth", "depth_model": "someone/depth"})
    assert names_of(task) == [IMAGE_INPUT]
    task.set_parameters({"depth_model": ""})
    assert names_of(task) == [DEPTH_INPUT]
    task.set_parameters({"depth_model": "  "})
    assert names_of(task) == [DEPTH_INPUT]
    task.set_parameters({"depth_model": "/models/depth"})
    assert names_of(task) == [IMAGE_INPUT]
    task.set_parameters({"mode": "text2img"})
    assert names_of(task) == []


@pytest.mark.parametrize("shape", [(HEIGHT, WIDTH, 3), (96, 80, 3)], ids=["output size", "another size"])
def test_controlnet_depth_from_a_photo_equals_diffusers_guide(strings, tiny_depth_model, shape):
    photo = random_image(7, shape)
    image, metadata = run(strings, {0: photo})
    fitted = fit(photo, HEIGHT, WIDTH)
    depth = guide_depth(tiny_depth_model, fitted.array)
    settings = Settings.from_strings(strings)
    assert max_difference(image, controlnet_reference(settings, settings.seed, depth)[0]) <= 1
    assert metadata["inputs"] == {IMAGE_INPUT: f"{fitted.note}; depth estimated by {tiny_depth_model}"}


def hints_received(monkeypatch) -> list[torch.Tensor]:
    """The ControlNet hints the decoder's loop is given from now on, one per run, in a list that grows."""
    received = []
    original = generation.decode

    def recording(models, **arguments):
        received.append(arguments["hint"])
        return original(models, **arguments)

    monkeypatch.setattr(generation, "decode", recording)
    return received


def test_the_decoder_gets_the_guides_hint_of_the_estimated_depth(strings, tiny_depth_model, warm_cache, monkeypatch):
    """The tiny ControlNet decoder's pictures move by at most one grey level from one hint to another, so the
    pixels alone cannot tell a wrong estimate: the hint the decoder receives is compared with the guide's."""
    photo = random_image(9, (80, 100, 3))
    settings = Settings.from_strings({**strings, "num_images": "2"})
    received = hints_received(monkeypatch)
    generate(settings, Inputs(image=photo), cache=warm_cache)
    depth = guide_depth(tiny_depth_model, fit(photo, HEIGHT, WIDTH).array)
    # The guide's make_hint: the depth over three channels, divided by 255, channels first; one per picture.
    guide_hint = torch.from_numpy(np.stack([depth] * 3, axis=2)).float().div(255).permute(2, 0, 1)
    assert len(received) == 1
    assert torch.equal(received[0], guide_hint.unsqueeze(0).repeat(2, 1, 1, 1))


@pytest.mark.parametrize(
    ("changes", "distance"),
    [
        ({"depth_estimation_type": "metric", "max_depth": 10}, True),
        ({"depth_estimation_type": "relative"}, False),
        ({"model_type": "zoedepth"}, True),
    ],
    ids=["metric", "relative", "distance-only-model-type"],
)
def test_a_model_that_predicts_distance_gives_its_map_turned_over_and_says_so(
    strings, tiny_depth_model, tmp_path, monkeypatch, changes, distance
):
    from transformers import AutoConfig

    from infer_kandinsky_2_2.kandinsky22_engine.models import predicts_distance

    folder = tmp_path / "depth"
    shutil.copytree(tiny_depth_model, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, **changes}), encoding="utf-8")
    if "model_type" in changes:
        # Only the kind is read; a ZoeDepth repo's weights are not at hand.
        assert predicts_distance(type("Config", (), changes)) is distance
        return
    assert predicts_distance(AutoConfig.from_pretrained(folder)) is distance
    photo = random_image(9, (80, 100, 3))
    received = hints_received(monkeypatch)
    result = generate(
        Settings.from_strings({**strings, "depth_model": str(folder)}), Inputs(image=photo), cache=ModelCache()
    )
    depth = guide_depth(folder, fit(photo, HEIGHT, WIDTH).array)
    expected = 255 - depth if distance else depth
    assert torch.equal(received[0][0, 0], torch.from_numpy(expected).float().div(255))
    turned = ", which predicts distance: turned over, near bright"
    assert result.metadata["inputs"][IMAGE_INPUT].endswith(
        f"depth estimated by {folder}" + (turned if distance else "")
    )


def test_the_depth_model_loads_once_for_every_run_of_every_task(strings):
    first, task = workflow_with(strings, {0: PHOTO})
    cache = model_cache(task)
    cache.release(DEPTH_ESTIMATOR)
    before = cache.load_counts[DEPTH_ESTIMATOR]
    first.run()
    first.run()
    second, _ = workflow_with({**strings, "seed": "5"}, {0: random_image(8)})
    second.run()
    assert cache.load_counts[DEPTH_ESTIMATOR] == before + 1


def test_depth_model_is_not_read_in_a_mode_without_a_depth_map(tiny_repos):
    cache = ModelCache()
    settings = Settings(
        prior_model_name=str(tiny_repos.prior),
        model_name=str(tiny_repos.decoder),
        depth_model="/no/such/depth/model",
        prior_num_inference_steps=2,
        num_inference_steps=1,
        height=HEIGHT,
        width=WIDTH,
        seed=3,
        cuda=False,
    )
    generate(settings, cache=cache)
    assert DEPTH_ESTIMATOR not in cache.loaded_keys()


def test_without_a_photo_the_image_input_is_named(strings):
    workflow, task = workflow_with(strings)
    workflow.connect_tasks(workflow.root(), task, [(0, 0)])
    with pytest.raises(RuntimeError, match=re.escape("controlnet_depth input 'image': no image was given.")):
        workflow.run()


def test_a_depth_map_given_beside_depth_model_is_refused(strings):
    settings = Settings.from_strings(strings)
    with pytest.raises(InputError) as refused:
        generate(settings, Inputs(image=PHOTO, depth=random_image(4, (HEIGHT, WIDTH))), cache=ModelCache())
    assert str(refused.value) == (
        f"controlnet_depth input 'depth map': a depth map was given, but depth_model ({settings.depth_model!r}) "
        "estimates the depth from input 'image'; accepted: a depth map with depth_model empty, or a photo (input "
        "'image') with depth_model set."
    )


def pickled(folder: Path, target: Path) -> Path:
    """A copy of a transformers model folder whose safetensors weights are a .bin pickle instead."""
    from safetensors.torch import load_file

    shutil.copytree(folder, target)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    return target


def refusal(settings: Settings) -> tuple[str, ModelCache]:
    """The ``ModelLoadError`` message of a run, and its cache."""
    cache = ModelCache()
    with pytest.raises(ModelLoadError) as refused:
        generate(settings, Inputs(image=PHOTO), cache=cache)
    return str(refused.value), cache


@pytest.mark.parametrize("case", ["absent", "kandinsky decoder", "clip image encoder", "pickles only", "offline"])
def test_a_depth_model_that_cannot_estimate_depth_is_refused_before_any_model_loads(
    strings, tiny_repos, tiny_depth_model, tmp_path, case
):
    depth_model, message = {
        "absent": (
            str(tmp_path / "absent"),
            f"depth_model: folder {str(tmp_path / 'absent')!r} not found; accepted: an existing folder or a Hugging "
            "Face hub id (owner/name, or owner/name@revision).",
        ),
        "kandinsky decoder": (
            str(tiny_repos.controlnet_decoder),
            f"depth_model: folder {str(tiny_repos.controlnet_decoder)!r} is not a transformers depth-estimation "
            f"model: it is a diffusers KandinskyV22ControlnetPipeline repo; {ACCEPTED}",
        ),
        "clip image encoder": (
            str(tiny_repos.prior / "image_encoder"),
            f"depth_model: folder {str(tiny_repos.prior / 'image_encoder')!r} is not a transformers depth-estimation "
            f"model: it is a transformers model of type 'clip_vision_model', which does not estimate depth; {ACCEPTED}",
        ),
        "pickles only": (
            str(tmp_path / "pickled"),
            f"depth_model: folder {str(tmp_path / 'pickled')!r} holds its weights only as pickle files "
            "(pytorch_model.bin), which the task never loads (unpickling can run code); accepted: safetensors "
            "weights. Convert them to safetensors where you trust them, or use a repo that has safetensors.",
        ),
        "offline": (
            "someone/depth",
            "depth_model: 'someone/depth' is not (fully) in the local Hugging Face cache "
            f"({hub_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, so it cannot be downloaded (missing: "
            "config.json). Download it once with network access, or give a local folder.",
        ),
    }[case]
    if case == "pickles only":
        pickled(tiny_depth_model, tmp_path / "pickled")
    message_received, cache = refusal(Settings.from_strings({**strings, "depth_model": depth_model}))
    assert message_received == message
    assert cache.load_counts == {}


def test_a_depth_model_whose_weights_lack_tensors_is_refused_naming_them(strings, tiny_depth_model, tmp_path):
    pruned = tmp_path / "pruned-depth"
    shutil.copytree(tiny_depth_model, pruned)
    tensors = load_file(pruned / "model.safetensors")
    missing = sorted(tensors)[:2]
    save_file({name: tensor for name, tensor in tensors.items() if name not in missing}, pruned / "model.safetensors")
    with pytest.raises(ModelLoadError) as refused:
        generate(
            Settings.from_strings({**strings, "depth_model": str(pruned)}), Inputs(image=PHOTO), cache=ModelCache()
        )
    assert str(refused.value) == (
        f"depth_model: folder {str(pruned)!r} is not a usable depth-estimation model (broken or incomplete): the "
        f"weights in its root folder lack 2 tensor(s) of its model ({', '.join(missing)}); accepted: safetensors "
        "holding every weight."
    )


def test_a_uniform_estimate_is_refused_naming_depth_model(strings, tiny_depth_model, tmp_path):
    flat = tmp_path / "flat-depth"
    model = DepthAnythingForDepthEstimation.from_pretrained(tiny_depth_model)
    with torch.no_grad():
        model.head.conv3.weight.zero_()
        model.head.conv3.bias.zero_()
    model.save_pretrained(flat)
    shutil.copy(tiny_depth_model / "preprocessor_config.json", flat)
    workflow, task = workflow_with({**strings, "depth_model": str(flat)}, {0: PHOTO})
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    message = (
        f"depth_model: {str(flat)!r} estimated the same depth everywhere in controlnet_depth input 'image': there is "
        "no layout for ControlNet to follow; accepted: a photo whose depth the model can tell apart, or a depth map "
        "(input 'depth map') with depth_model empty."
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run()
    assert steps == []


def test_under_a_memory_mode_that_saves_memory_the_depth_model_is_parked_and_estimates_the_same(tiny_depth_model):
    loader = DepthEstimatorLoader(check_depth_model)
    kept, _ = loader(DEPTH_ESTIMATOR, ModelKey(str(tiny_depth_model), "cpu", torch.float32, "gpu"))
    parked, how = loader(DEPTH_ESTIMATOR, ModelKey(str(tiny_depth_model), "cpu", torch.float32, "model_offload"))
    assert (kept.parking.names, how.parking.names) == ((), (DEPTH_ESTIMATOR,))
    assert np.array_equal(parked.estimate(PHOTO), kept.estimate(PHOTO))
    assert np.array_equal(kept.estimate(PHOTO), guide_depth(tiny_depth_model, PHOTO))


def test_from_the_hub_only_the_configs_and_safetensors_are_fetched_then_the_cache_serves_offline(
    strings, tiny_depth_model, cache_folder, caplog
):
    files = files_of(tiny_depth_model)
    # Beside what loads: a pickle copy, a model card, and another format's folder, as published repos have.
    extras = {"pytorch_model.bin": b"pickle copy", "README.md": b"# model card\n", "onnx/config.json": b"{}"}
    repo = FakeRepo.of({**files, **extras, "onnx/model.safetensors": b"another export"})
    settings = Settings.from_strings({**strings, "depth_model": "someone/tiny-depth"})
    with FakeHub({"someone/tiny-depth": repo}) as fake, hub_at(fake.endpoint):
        with caplog.at_level(logging.INFO, logger=hub.__name__):
            by_hub = generate(settings, Inputs(image=PHOTO), cache=ModelCache())
        assert sorted(fake.downloaded()) == [f"someone/tiny-depth:{path}" for path in sorted(files)]
    messages = [record.getMessage() for record in caplog.records if record.name == hub.__name__]
    assert messages[0].startswith("infer_kandinsky_2_2: depth_model: reading the configs: 2 file(s), ")
    assert any(message.startswith("infer_kandinsky_2_2: depth_model: downloading 1 file(s), ") for message in messages)
    by_folder = generate(Settings.from_strings(strings), Inputs(image=PHOTO), cache=ModelCache())
    assert np.array_equal(by_hub.images[0], by_folder.images[0])
    # Offline now (the fixture's setting is back): the cached repo serves a fresh cache.
    cache = ModelCache()
    generate(settings, Inputs(image=PHOTO), cache=cache)
    assert cache.load_counts[DEPTH_ESTIMATOR] == 1


@pytest.mark.parametrize("kind", ["pickles only", "kandinsky decoder"])
def test_from_the_hub_a_repo_that_cannot_serve_is_refused_from_its_configs(
    strings, tiny_depth_model, tiny_repos, cache_folder, kind
):
    if kind == "pickles only":
        files = {path: data for path, data in files_of(tiny_depth_model).items() if not path.endswith(".safetensors")}
        buffer = io.BytesIO()
        torch.save({"weights": torch.zeros(1)}, buffer)
        files["pytorch_model.bin"] = buffer.getvalue()
        message = (
            "depth_model: 'someone/depth' holds its weights only as pickle files (pytorch_model.bin), which the task "
            "never loads (unpickling can run code); accepted: safetensors weights. Use a revision of the repo that "
            "has them (owner/name@revision)."
        )
    else:
        files = files_of(tiny_repos.controlnet_decoder)
        message = (
            "depth_model: 'someone/depth' is not a transformers depth-estimation model: it is a diffusers "
            f"KandinskyV22ControlnetPipeline repo; {ACCEPTED}"
        )
    settings = Settings.from_strings({**strings, "depth_model": "someone/depth"})
    with FakeHub({"someone/depth": FakeRepo.of(files)}) as fake, hub_at(fake.endpoint):
        with pytest.raises(ModelLoadError) as refused:
            generate(settings, Inputs(image=PHOTO), cache=ModelCache())
        assert fake.downloaded() and all(path.endswith(".json") for path in fake.downloaded())
    assert str(refused.value) == message


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_an_estimate_that_is_not_finite_is_refused_as_such_and_the_next_run_works(strings, tiny_depth_model, value):
    from infer_kandinsky_2_2.kandinsky22_engine.errors import NotFinite
    from infer_kandinsky_2_2.kandinsky22_engine.generation import load_models, runtime_for

    settings = Settings.from_strings(strings)
    cache = ModelCache()
    model = load_models(settings, runtime_for(settings), cache).depth_estimator.estimator.model

    def overflow(module, inputs, output) -> None:
        output.predicted_depth[..., :2, :2] = value

    hook = model.register_forward_hook(overflow)
    with pytest.raises(NotFinite) as refused:
        generate(settings, Inputs(image=PHOTO), cache=cache)
    hook.remove()
    assert str(refused.value) == (
        "depth_model: the model's estimate holds values that are not finite (NaN or infinity), so no depth map is "
        "made; in float32 this points at broken weights: check depth_model."
    )
    assert np.isfinite(generate(settings, Inputs(image=PHOTO), cache=cache).images[0]).all()


def test_a_depth_map_with_alpha_says_it_was_dropped():
    depth = np.dstack([np.tile(np.arange(128, dtype=np.uint8), (64, 1))] * 3 + [np.full((64, 128), 255, np.uint8)])
    _, note = depth_hint(depth, "controlnet_depth input 'depth map'", 64, 128, "cpu", torch.float32)
    assert note == "128x64, used as it is, alpha dropped"
    depth[:, :, 0] = 0
    _, note = depth_hint(depth, "controlnet_depth input 'depth map'", 64, 128, "cpu", torch.float32)
    assert note == "128x64, used as it is, alpha dropped, colours turned to gray by luma"
