"""The engine on its own, without Ikomia: equality with diffusers, caching, progress, stop, errors."""

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, KandinskyV22Pipeline, KandinskyV22PriorPipeline
from safetensors.torch import load_file, save_file

from helpers import diffusers_reference, left_half_mask, load_for, max_difference, random_image
from infer_kandinsky_2_2.kandinsky22_engine import hub, models
from infer_kandinsky_2_2.kandinsky22_engine.errors import GenerationStopped, HubUnreachable
from infer_kandinsky_2_2.kandinsky22_engine.generation import generate, load_models, runtime_for
from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs
from infer_kandinsky_2_2.kandinsky22_engine.models import (
    IMAGE_ENCODER,
    ModelCache,
    ModelKey,
    ModelLoadError,
    Parking,
    PipelineLoader,
)
from infer_kandinsky_2_2.kandinsky22_engine.parameters import MAX_RANDOM_SEED, Settings
from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

DECODER = PipelineLoader(KandinskyV22Pipeline, "model_name")


@pytest.fixture
def cache() -> ModelCache:
    """A cache of this test's own: for tests that count loads or look at what is loaded."""
    return ModelCache()


@pytest.fixture(scope="module")
def settings(tiny_strings: dict[str, str]) -> Settings:
    """The quick text2img run on the CPU."""
    return Settings.from_strings(tiny_strings)


@pytest.fixture(scope="module")
def plain_image(settings: Settings, warm_cache: ModelCache) -> np.ndarray:
    """The picture of ``settings``: what a run that nothing disturbs gives."""
    return generate(settings, cache=warm_cache).images[0]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"guidance_scale": 3.0, "prior_guidance_scale": 1.0},
        {"negative_prompt": "", "height": 128, "width": 64},
    ],
    ids=["defaults", "decoder-guidance", "no-negative-prompt"],
)
def test_image_equals_diffusers_combined_pipeline(settings, warm_cache, changes):
    settings = replace(settings, **changes)
    result = generate(settings, cache=warm_cache)
    assert result.images[0].dtype == np.uint8
    assert max_difference(result.images[0], diffusers_reference(settings, settings.seed)[0]) <= 1


def test_same_seed_same_pixels_and_a_fresh_generator_every_run(settings, warm_cache):
    first = generate(settings, cache=warm_cache).images[0]
    other_seed = generate(replace(settings, seed=99), cache=warm_cache).images[0]
    again = generate(settings, cache=warm_cache).images[0]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_seed)


def test_random_seed_is_drawn_in_range_reported_and_reproducible(settings, warm_cache):
    result = generate(replace(settings, seed=-1), cache=warm_cache)
    seed = result.metadata["seed"]
    assert 0 <= seed <= MAX_RANDOM_SEED
    assert result.metadata["random_seed"] is True
    replay = generate(replace(settings, seed=seed), cache=warm_cache)
    assert np.array_equal(result.images[0], replay.images[0])
    assert replay.metadata["random_seed"] is False


def test_metadata_says_what_ran(settings, warm_cache):
    metadata = generate(settings, cache=warm_cache).metadata
    assert metadata["seed"] == settings.seed
    assert (metadata["device"], metadata["dtype"], metadata["device_note"]) == ("cpu", "float32", "")
    assert (metadata["model_name"], metadata["prior_model_name"]) == (settings.model_name, settings.prior_model_name)
    assert set(metadata["seconds"]) == {"load", "prior", "decoder", "total"}
    documented = (Path(__file__).resolve().parent.parent / "docs" / "outputs.md").read_text(encoding="utf-8")
    assert {key for key in metadata if f"`{key}`" not in documented} == set()
    assert all(value >= 0 for value in metadata["seconds"].values())


def test_cuda_requested_without_cuda_runs_on_the_cpu_and_says_so(
    settings, warm_cache, plain_image, monkeypatch, caplog
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        result = generate(replace(settings, cuda=True), cache=warm_cache)
    assert (result.metadata["device"], result.metadata["dtype"]) == ("cpu", "float32")
    assert result.metadata["device_note"] == "cuda was requested but CUDA is not available"
    assert "cuda was requested but CUDA is not available; running on the CPU in float32." in caplog.text
    assert np.array_equal(result.images[0], plain_image)


def test_models_load_once_and_a_new_model_name_reloads_only_the_decoder(settings, cache, other_decoder):
    generate(settings, cache=cache)
    generate(replace(settings, seed=5, prompt="a boat"), cache=cache)
    assert cache.load_counts == {"prior": 1, "decoder": 1}
    generate(replace(settings, model_name=str(other_decoder)), cache=cache)
    assert cache.load_counts == {"prior": 1, "decoder": 2}
    assert cache.loaded_keys()["decoder"].model_name == str(other_decoder)


def test_progress_is_reported_once_per_prior_and_decoder_step(settings, warm_cache):
    steps = []
    generate(settings, cache=warm_cache, on_step=lambda: steps.append(1))
    assert len(steps) == settings.prior_num_inference_steps + settings.num_inference_steps


@pytest.mark.parametrize(
    ("stop_after", "message"),
    [
        (2, "Generation stopped by the user after step 2 of 3 of the prior."),
        (5, "Generation stopped by the user after step 2 of 4 of the decoder."),
    ],
)
def test_stop_ends_the_run_after_the_current_step_and_the_next_run_is_unchanged(
    settings, warm_cache, plain_image, stop_after, message
):
    steps = []
    with pytest.raises(GenerationStopped) as stopped:
        generate(
            settings, cache=warm_cache, on_step=lambda: steps.append(1), should_stop=lambda: len(steps) >= stop_after
        )
    assert str(stopped.value) == message
    assert len(steps) == stop_after
    assert np.array_equal(generate(settings, cache=warm_cache).images[0], plain_image)


def broken_decoder(source: Path, folder: Path, damage: str) -> Path:
    target = folder / f"decoder-{damage}"
    shutil.copytree(source, target)
    weights = target / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "missing-unet":
        shutil.rmtree(target / "unet")
    elif damage == "corrupted":
        weights.write_bytes(b"not a safetensors file")
    elif damage == "pickle-only":
        torch.save(load_file(weights), target / "unet" / "diffusion_pytorch_model.bin")
        weights.unlink()
    return target


def without_tensors(source: Path, folder: Path, weights: str, count: int) -> Path:
    """A copy of the repo ``source`` whose ``weights`` file (a path in the repo) lacks its first ``count``
    tensors, as a pruned or partly saved model's does; returns the copy."""
    target = folder / f"{source.name}-pruned"
    shutil.copytree(source, target)
    tensors = load_file(target / weights)
    for name in sorted(tensors)[:count]:
        del tensors[name]
    save_file(tensors, target / weights, metadata={"format": "pt"})
    return target


@pytest.mark.parametrize(
    ("role", "weights", "parameter", "what", "component"),
    [
        ("decoder", "unet/diffusion_pytorch_model.safetensors", "model_name", "KandinskyV22Pipeline repo", "unet/"),
        (
            "prior",
            "prior/diffusion_pytorch_model.safetensors",
            "prior_model_name",
            "KandinskyV22PriorPipeline repo",
            "prior/",
        ),
        (
            "prior",
            "text_encoder/model.safetensors",
            "prior_model_name",
            "KandinskyV22PriorPipeline repo",
            "text_encoder/",
        ),
        ("prior", "image_encoder/model.safetensors", "prior_model_name", "CLIP image encoder", "image_encoder/"),
    ],
)
def test_a_model_whose_weights_lack_tensors_is_refused_naming_them_before_any_step(
    settings, cache, plain_image, tiny_repos, tmp_path, role, weights, parameter, what, component
):
    pruned = without_tensors(getattr(tiny_repos, role), tmp_path, weights, 4)
    missing = sorted(load_file(getattr(tiny_repos, role) / weights))[:4]
    steps = []
    with pytest.raises(ModelLoadError) as refused:
        # An empty negative prompt loads the image encoder too.
        generate(
            replace(settings, **{parameter: str(pruned)}, negative_prompt=""),
            cache=cache,
            on_step=lambda: steps.append(1),
        )
    assert str(refused.value) == (
        f"{parameter}: folder {str(pruned)!r} is not a usable {what} (broken or incomplete): the weights in "
        f"{component} lack 4 tensor(s) of its model ({', '.join(missing[:3])} and 1 more); accepted: safetensors "
        "holding every weight."
    )
    assert steps == []
    assert np.array_equal(generate(settings, cache=cache).images[0], plain_image)


@pytest.mark.parametrize("damage", ["missing-unet", "corrupted", "pickle-only"])
def test_a_broken_decoder_folder_is_named_and_nothing_half_loaded_stays(
    settings, cache, plain_image, tiny_repos, tmp_path, damage
):
    folder = broken_decoder(tiny_repos.decoder, tmp_path, damage)
    load_models(settings, runtime_for(settings), cache)
    loaded = cache.loaded_keys()["decoder"]
    with pytest.raises(ModelLoadError) as refused:
        generate(replace(settings, model_name=str(folder)), cache=cache)
    if damage == "pickle-only":
        assert str(refused.value) == (
            f"model_name: folder {str(folder)!r} holds its weights only as pickle files "
            "(unet/diffusion_pytorch_model.bin), which the task never loads (unpickling can run code); accepted: "
            "safetensors weights. Convert them to safetensors where you trust them, or use a repo that has "
            "safetensors."
        )
    elif damage == "missing-unet":
        assert str(refused.value).startswith(
            f"model_name: folder {str(folder)!r} cannot serve text2img: it is a KandinskyV22Pipeline repo without a "
            "UNet (no unet/config.json); text2img needs a text-to-image decoder"
        )
    else:
        assert str(refused.value).startswith(
            f"model_name: folder {str(folder)!r} is not a usable KandinskyV22Pipeline repo (broken or incomplete): "
        )
    # Refused from its files before loading, the decoder in use stays; one that failed while loading is dropped.
    assert cache.loaded_keys().get("decoder") == (None if damage == "corrupted" else loaded)
    assert np.array_equal(generate(settings, cache=cache).images[0], plain_image)


def test_a_missing_folder_is_named(settings, cache, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError) as refused:
        generate(replace(settings, prior_model_name=missing), cache=cache)
    assert str(refused.value) == (
        f"prior_model_name: folder {missing!r} not found; accepted: an existing folder or a Hugging Face hub id "
        "(owner/name, or owner/name@revision)."
    )
    assert "prior" not in cache.loaded_keys()


def test_a_name_that_is_neither_folder_nor_hub_id_is_refused(settings, cache):
    with pytest.raises(ModelLoadError) as refused:
        generate(replace(settings, model_name="not a repo!"), cache=cache)
    assert str(refused.value) == (
        "model_name: 'not a repo!' is neither an existing folder nor a Hugging Face hub id (owner/name)."
    )


def test_a_hub_id_missing_from_the_cache_while_offline_says_so(settings, cache, monkeypatch):
    monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachable) as refused:
        generate(replace(settings, model_name="kandinsky-community/kandinsky-2-2-decoder"), cache=cache)
    assert str(refused.value) == (
        "model_name: 'kandinsky-community/kandinsky-2-2-decoder' is not (fully) in the local Hugging Face cache "
        f"({hub.hub_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, so it cannot be downloaded (missing: unet/, "
        "scheduler/, movq/). Download it once with network access, or give a local folder."
    )
    assert "decoder" not in cache.loaded_keys()


def test_the_image_encoder_loads_only_when_a_run_needs_it_and_the_zero_image_embedding_once(settings, cache):
    generate(settings, cache=cache)
    assert IMAGE_ENCODER not in cache.loaded_keys()
    assert load_models(settings, runtime_for(settings), cache).prior.image_encoder is None
    no_negative = replace(settings, negative_prompt="")
    first = generate(no_negative, cache=cache).images[0]
    assert cache.load_counts == {"prior": 1, "decoder": 1, IMAGE_ENCODER: 1}
    encoder = load_models(no_negative, runtime_for(no_negative), cache).image_encoder.model
    calls = []
    encoder.register_forward_hook(lambda module, inputs, output: calls.append(1))
    again = generate(no_negative, cache=cache).images[0]
    assert calls == []
    assert np.array_equal(first, again)
    generate(settings, cache=cache)
    assert cache.load_counts == {"prior": 1, "decoder": 1, IMAGE_ENCODER: 1}


def test_memory_modes_are_ignored_on_the_cpu_where_offloading_fails(settings, cache, plain_image, monkeypatch):
    def refuse(*arguments, **keywords):
        raise AssertionError("offloading asked for without an accelerator")

    monkeypatch.setattr(DiffusionPipeline, "enable_model_cpu_offload", refuse)
    monkeypatch.setattr(DiffusionPipeline, "enable_sequential_cpu_offload", refuse)
    load_models(settings, runtime_for(settings), cache)
    for memory_mode in ("model_offload", "sequential_offload"):
        result = generate(replace(settings, memory_mode=memory_mode, cuda=True), cache=cache)
        assert np.array_equal(result.images[0], plain_image)
        assert result.metadata["memory_mode"] == "none"
    assert cache.load_counts == {"prior": 1, "decoder": 1}


def test_on_cuda_the_memory_mode_is_part_of_what_identifies_a_loaded_model(fake_gpus):
    fake_gpus(1)
    runtimes = [runtime_for(Settings(cuda=True, memory_mode=mode)) for mode in ("gpu", "model_offload")]
    assert [(runtime.device, runtime.dtype) for runtime in runtimes] == [("cuda:0", torch.float16)] * 2
    assert runtimes[0].key("m") != runtimes[1].key("m")
    assert runtime_for(Settings(cuda=False, memory_mode="model_offload")).key("m").memory_mode == "none"


def test_switching_between_gpu_and_prior_offload_keeps_the_decoder_and_reloads_the_prior(settings, cache):
    for memory_mode in ("gpu", "prior_offload", "gpu"):
        # The memory modes as on CUDA, with the CPU as the device.
        load_models(settings, Runtime("cpu", torch.float32, memory_mode), cache)
    assert cache.load_counts == {"prior": 3, "decoder": 1}
    assert cache.loaded_keys()["decoder"].memory_mode == "gpu"


def test_on_cuda_the_compile_mode_identifies_a_decoder_but_not_a_prior(fake_gpus):
    fake_gpus(1)
    plain, compiled = (runtime_for(Settings(cuda=True, compile_unet=mode)) for mode in ("off", "reduce-overhead"))
    assert compiled.decoder_key("m").compile_unet == "reduce-overhead"
    assert plain.decoder_key("m") != compiled.decoder_key("m")
    assert plain.key("m") == compiled.key("m")
    assert runtime_for(Settings(cuda=False, compile_unet="default")).decoder_key("m").compile_unet == "off"


def test_compiling_is_ignored_on_the_cpu(settings, warm_cache, plain_image):
    # The models of the plain run, which plain_image left in the cache, serve it: nothing loads again.
    loads = dict(warm_cache.load_counts)
    result = generate(replace(settings, compile_unet="default", cuda=True), cache=warm_cache)
    assert result.metadata["compile_unet"] == "off"
    assert warm_cache.loaded_keys()["decoder"].compile_unet == "off"
    assert warm_cache.load_counts == loads


@pytest.mark.parametrize("memory_mode", ["none", "gpu", "model_offload"])
def test_a_decoder_key_with_a_compile_mode_compiles_its_unet_in_place(tiny_repos, cache, monkeypatch, memory_mode):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **options: compiled.append((module, options)))
    key = ModelKey(str(tiny_repos.decoder), "cpu", torch.float32, memory_mode, compile_unet="reduce-overhead")
    decoder = cache.get("decoder", key, DECODER)
    assert compiled == [(decoder.unet, {"mode": "reduce-overhead"})]
    plain = ModelKey(str(tiny_repos.decoder), "cpu", torch.float32, memory_mode)
    cache.get("decoder", plain, DECODER)
    assert len(compiled) == 1


def first_weight(module: torch.nn.Module) -> int:
    """Where the first weight of ``module`` lives: a parked module's and a visiting copy's differ."""
    return next(module.parameters()).data_ptr()


def weight_addresses(module: torch.nn.Module) -> dict[str, int]:
    """Where each weight and buffer of ``module`` lives, by name."""
    return {name: tensor.data_ptr() for name, tensor in module.state_dict().items()}


@pytest.mark.parametrize("mode", ["text2img", "mix"])
@pytest.mark.parametrize("memory_mode", ["gpu", "prior_offload"])
def test_parked_models_are_on_the_device_only_while_the_prior_stage_uses_them_and_no_pixel_changes(
    settings, cache, warm_cache, monkeypatch, memory_mode, mode
):
    settings = replace(settings, mode=mode)
    inputs = Inputs(mix_images=(random_image(1), random_image(2))) if mode == "mix" else Inputs()
    expected = generate(settings, inputs, cache=warm_cache).images[0]
    # The memory mode as on CUDA, with the CPU as the device: the weights are copied in and parked again all the
    # same, packed in small chunks so that each model spans several.
    runtime = Runtime("cpu", torch.float32, memory_mode)
    monkeypatch.setattr(models, "_CHUNK_BYTES", 2**16)
    pipelines = load_models(settings, runtime, cache)
    stage = {name: getattr(pipelines.prior, name) for name in ("text_encoder", "prior")}
    if mode == "mix":
        stage[IMAGE_ENCODER] = pipelines.image_encoder.model
    else:
        assert pipelines.image_encoder is None and IMAGE_ENCODER not in cache.loaded_keys()
    placed = {name: first_weight(module) for name, module in stage.items()}
    used, during_decoder = {}, []

    def note_use(module: torch.nn.Module, inputs: tuple) -> None:
        used.update({name: first_weight(module) for name, each in stage.items() if each is module})

    for module in stage.values():
        module.register_forward_pre_hook(note_use)
    pipelines.decoder.unet.register_forward_pre_hook(
        lambda module, inputs: during_decoder.append({name: first_weight(module) for name, module in stage.items()})
    )
    result = generate(settings, inputs, runtime=runtime, cache=cache)
    # The copies hold the same bits, but on the CPU the image encoder's kernels round by memory alignment:
    # cloning its weights in place moves mix's pixels by one level too.
    assert max_difference(result.images[0], expected) <= (1 if mode == "mix" else 0)
    assert result.metadata["memory_mode"] == memory_mode
    assert set(used) == set(stage)
    # The image encoder, which only mix loads, is parked in every memory mode on CUDA; prior_offload parks the
    # text encoder and prior too.
    parked = {"gpu": {IMAGE_ENCODER}, "prior_offload": {"text_encoder", "prior", IMAGE_ENCODER}}[memory_mode]
    assert {name for name in used if used[name] != placed[name]} == set(used) & parked
    assert during_decoder and all(weights == placed for weights in during_decoder)
    assert {name: first_weight(module) for name, module in stage.items()} == placed
    assert cache.load_counts == {"prior": 1, "decoder": 1, **({IMAGE_ENCODER: 1} if mode == "mix" else {})}


@pytest.mark.parametrize("memory_mode", ["gpu", "prior_offload"])
def test_prior_offload_keeps_one_decoder_on_the_device_and_brings_another_back_without_loading_it(
    settings, tiny_repos, cache, warm_cache, monkeypatch, memory_mode
):
    runs = {
        "text2img": (settings, Inputs()),
        "inpaint": (
            replace(settings, mode="inpaint", model_name=str(tiny_repos.inpaint_decoder)),
            Inputs(image=random_image(3), mask=left_half_mask()),
        ),
    }
    expected = {name: generate(*run, cache=warm_cache).images[0] for name, run in runs.items()}
    # The memory mode as on CUDA, with the CPU as the device.
    runtime = Runtime("cpu", torch.float32, memory_mode)
    unets = {name: load_models(run[0], runtime, cache).decoder.unet for name, run in runs.items()}
    seen = []  # at each UNet step: which decoder ran, and where each decoder's weights were
    for name, unet in unets.items():
        unet.register_forward_pre_hook(
            lambda module, inputs, name=name: seen.append((name, {each: first_weight(unets[each]) for each in unets}))
        )
    for name in ("text2img", "inpaint", "inpaint", "text2img"):
        # The copies hold the same bits, but on the CPU the kernels round by memory alignment: a decoder that
        # came back as a copy moves pixels by one level (cloning its weights in place does the same).
        picture = generate(*runs[name], runtime=runtime, cache=cache).images[0]
        assert max_difference(picture, expected[name]) <= 1, name
    own = {name: {where[name] for running, where in seen if running == name} for name in unets}
    other = {name: {where[name] for running, where in seen if running != name} for name in unets}
    if memory_mode == "gpu":
        # Every decoder stays where it was placed.
        assert all(len(own[name]) == 1 and other[name] == own[name] for name in unets)
    else:
        # While one decoder runs, the other waits in CPU memory, at one place, and it runs on a copy.
        assert all(len(other[name]) == 1 and not other[name] & own[name] for name in unets)
    assert cache.load_counts == {"prior": 1, "decoder": 1, "inpaint_decoder": 1}


def test_parked_weights_keep_their_values_across_chunks_and_park_again_when_the_stage_fails(monkeypatch):
    monkeypatch.setattr(models, "_CHUNK_BYTES", 512)
    layers = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 3), torch.nn.BatchNorm1d(3))
    weights = {name: tensor.clone() for name, tensor in layers.state_dict().items()}
    parking = Parking({"layers": layers}, "cpu")
    parked = weight_addresses(layers)
    with pytest.raises(GenerationStopped), parking.visit("layers", "absent"):
        visiting = layers.state_dict()
        assert all(visiting[name].data_ptr() != parked[name] for name in parked)
        assert all(torch.equal(visiting[name], weights[name]) for name in weights)
        raise GenerationStopped("stopped")
    assert weight_addresses(layers) == parked
    assert all(torch.equal(layers.state_dict()[name], weights[name]) for name in weights)
    with Parking().visit("layers"):
        assert weight_addresses(layers) == parked


def test_a_copy_to_the_device_that_fails_midway_leaves_every_weight_parked(monkeypatch):
    monkeypatch.setattr(models, "_CHUNK_BYTES", 512)
    layers = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    parking = Parking({"layers": layers}, "cpu")
    parked = weight_addresses(layers)
    copy, copies = torch.Tensor.to, []

    def out_of_memory_at_the_second_chunk(tensor: torch.Tensor, *arguments, **keywords) -> torch.Tensor:
        copies.append(tensor)
        if len(copies) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 256.00 MiB")
        return copy(tensor, *arguments, **keywords)

    monkeypatch.setattr(torch.Tensor, "to", out_of_memory_at_the_second_chunk)
    with pytest.raises(torch.OutOfMemoryError), parking.visit("layers"):
        pytest.fail("the block ran although the weights were not all on the device")
    assert len(copies) == 2
    assert weight_addresses(layers) == parked
    # Held (a decoder brought back) rather than visited: parked again all the same, and the next hold copies.
    copies.clear()
    with pytest.raises(torch.OutOfMemoryError):
        parking.hold("layers")
    assert weight_addresses(layers) == parked
    monkeypatch.undo()
    parking.hold("layers")
    assert not set(weight_addresses(layers).values()) & set(parked.values())


@pytest.mark.parametrize("memory_mode", ["gpu", "prior_offload", "model_offload", "sequential_offload", "none"])
def test_every_mode_but_gpu_sets_the_idle_decoders_aside_before_it_places_its_own(settings, monkeypatch, memory_mode):
    class RecordingCache(ModelCache):
        def __init__(self) -> None:
            super().__init__()
            self.calls = []

        def holds(self, role, key):
            return True

        def get(self, role, key, load):
            self.calls.append(("get", role))
            return KandinskyV22PriorPipeline.__new__(KandinskyV22PriorPipeline)

        def set_aside(self, role):
            self.calls.append(("set_aside", role))

        def parking(self, role):
            return Parking()

    cache = RecordingCache()
    load_models(replace(settings, mode="inpaint"), Runtime("cuda", torch.float16, memory_mode), cache)
    # The decoder first: a repo that cannot serve the mode is refused before the prior is fetched or loaded.
    gets = [("get", "inpaint_decoder"), ("get", "prior")]
    # gpu keeps every decoder on the GPU; a CPU run ("none") leaves the GPU as earlier runs left it.
    keeping = memory_mode in ("gpu", "none")
    asides = [] if keeping else [("set_aside", "decoder"), ("set_aside", "controlnet_decoder")]
    assert cache.calls == asides + gets


def test_only_a_decoder_whole_on_the_device_and_not_compiled_is_set_aside(tiny_repos, cache, monkeypatch):
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **options: None)
    keys = {
        "decoder": ModelKey(str(tiny_repos.decoder), "cpu", torch.float32, "gpu"),
        "compiled": ModelKey(str(tiny_repos.decoder), "cpu", torch.float32, "gpu", "reduce-overhead"),
        "offloaded": ModelKey(str(tiny_repos.decoder), "cpu", torch.float32, "model_offload"),
        "prior": ModelKey(str(tiny_repos.prior), "cpu", torch.float32, "gpu"),
    }
    loaders = {"prior": PipelineLoader(KandinskyV22PriorPipeline, "prior_model_name", skip=(IMAGE_ENCODER,))}
    unets = {}
    for role, key in keys.items():
        pipeline = cache.get(role, key, loaders.get(role, DECODER))
        unets[role] = pipeline.prior if role == "prior" else pipeline.unet
    monkeypatch.setattr(models, "Parking", lambda *arguments: pytest.fail("only the decoder may be set aside"))
    placed = {role: weight_addresses(unet) for role, unet in unets.items()}
    for role in ("compiled", "offloaded", "prior"):
        cache.set_aside(role)
    assert {role: weight_addresses(unet) for role, unet in unets.items()} == placed
    monkeypatch.undo()
    cache.set_aside("decoder")
    assert not set(weight_addresses(unets["decoder"]).values()) & set(placed["decoder"].values())


def test_a_decoder_whose_setting_aside_fails_midway_is_dropped_not_left_split(tiny_repos, cache, monkeypatch):
    key = ModelKey(str(tiny_repos.decoder), "cpu", torch.float32, "gpu")
    cache.get("decoder", key, DECODER)
    pack, packed = models._pack, []

    def refuse_the_second_model(tensors: list[torch.Tensor], pin: bool) -> list:
        packed.append(tensors)
        if len(packed) == 2:
            raise RuntimeError("CUDA error: out of memory")
        return pack(tensors, pin)

    monkeypatch.setattr(models, "_pack", refuse_the_second_model)
    with pytest.raises(RuntimeError, match="out of memory"):
        cache.set_aside("decoder")
    assert "decoder" not in cache.loaded_keys()
    monkeypatch.undo()
    cache.get("decoder", key, DECODER)
    assert cache.load_counts["decoder"] == 2


def test_releasing_models_on_cuda_gives_back_the_gpu_cache_and_the_pinned_host_cache(settings, cache, monkeypatch):
    load_for(settings, cache)
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append("gpu"))
    monkeypatch.setattr(torch.accelerator, "empty_host_cache", lambda: emptied.append("pinned host"))
    cache.release()
    assert emptied == ["gpu", "pinned host"]


def test_garbage_is_collected_when_a_model_is_dropped_and_not_before_a_load_into_an_empty_role(
    settings, cache, other_decoder, monkeypatch
):
    collections = []
    monkeypatch.setattr(models.gc, "collect", lambda: collections.append("collect") or 0)
    load_for(settings, cache)
    assert collections == []
    load_for(replace(settings, model_name=str(other_decoder)), cache)
    assert collections == ["collect"]
    cache.release("decoder")
    cache.release("inpaint_decoder")
    assert collections == ["collect"] * 2


def test_parking_falls_back_to_pageable_memory_where_pinned_memory_is_refused_and_says_so(monkeypatch, caplog):
    empty = torch.empty

    def refuse_pinning(*arguments, pin_memory: bool = False, **keywords) -> torch.Tensor:
        if pin_memory:
            raise RuntimeError("CUDA error: out of memory\nmore detail")
        return empty(*arguments, **keywords)

    monkeypatch.setattr(torch, "empty", refuse_pinning)
    monkeypatch.setattr(models, "_CHUNK_BYTES", 512)
    layers = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    weights = {name: tensor.clone() for name, tensor in layers.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        Parking({"layers": layers}, "cuda")
    assert caplog.messages == [
        "infer_kandinsky_2_2: pinned CPU memory refused (CUDA error: out of memory); parked models are copied to "
        "the GPU from pageable memory, which is slower."
    ]
    assert all(torch.equal(layers.state_dict()[name], weights[name]) for name in weights)


def test_mix_notes_say_how_clip_resized_the_images_whatever_its_processor_does():
    from types import SimpleNamespace

    from infer_kandinsky_2_2.kandinsky22_engine.generation import _input_notes
    from infer_kandinsky_2_2.kandinsky22_engine.inputs import Prepared

    settings = Settings(mode="mix")
    prepared = Prepared(notes={"image 1": "128x64", "image 2": "32x32"})
    fixed = SimpleNamespace(size={"height": 224, "width": 224}, crop_size=None, do_center_crop=False)
    notes = _input_notes(settings, prepared, SimpleNamespace(image_processor=fixed))
    assert notes == {
        "image 1": "128x64, embedded by CLIP scaled to 224x224",
        "image 2": "32x32, embedded by CLIP scaled to 224x224",
    }
    assert prepared.notes == {"image 1": "128x64", "image 2": "32x32"}
