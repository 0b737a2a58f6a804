"""LoRA weights (``lora``, ``lora_scale``): files written the way the tools write them, pictures equal to the
weights merged by hand, no reload, exact removal, every memory mode, graphs, refusals and hub repos.

Pictures are compared in float64: a tiny random-weight model amplifies float32's rounding to tens of grey
levels, between a LoRA computed beside its layer and one merged into it (about 1e-5), and even between two runs of
the same weights after the process's memory has moved (about 1e-6, as the CPU's vector code follows alignment);
float64 leaves both below one.
"""

import copy
import logging
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import cpu_offload
from diffusers import PriorTransformer, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from fake_hub import FakeHub, FakeRepo, hub_at
from helpers import MODE_INPUTS, EagerCapture, Written, attention_processor_lora, max_difference, settings_in_mode
from infer_kandinsky_2_2.kandinsky22_engine import graphs, hub
from infer_kandinsky_2_2.kandinsky22_engine.errors import ModelLoadError, SettingsError
from infer_kandinsky_2_2.kandinsky22_engine.generation import generate, load_models
from infer_kandinsky_2_2.kandinsky22_engine.lora import DECODER, apply, assign_models, read_loras
from infer_kandinsky_2_2.kandinsky22_engine.memory import MEMORY_MODES
from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

FLOAT64 = Runtime("cpu", torch.float64)
WEIGHTS = "diffusion_pytorch_model.safetensors"


def unet(repo: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(repo / "unet")


def prior(repo: Path) -> PriorTransformer:
    return PriorTransformer.from_pretrained(repo / "prior")


def peft_adapter(model: torch.nn.Module, seed: int, rank: int, alpha: float) -> torch.nn.Module:
    """A copy of ``model`` with a PEFT LoRA of random (not zero) weights on every attention's linear layers."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    targets = [
        name for name, module in model.named_modules() if re.search(r"\.(to_[qkv]|to_out\.0|add_[kv]_proj)$", name)
    ]
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False))
    return model


def peft_deltas(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    return {
        key.removesuffix(".lora_A.weight"): scaling * state[key.replace("lora_A", "lora_B")] @ state[key]
        for key in state
        if key.endswith(".lora_A.weight")
    }


def peft_lora_with_prefixes(models: dict[str, torch.nn.Module], path: Path, seed: int) -> Written:
    """One PEFT-format file for several models: keys prefixed with ``unet.`` or ``prior.``, with each layer's
    ``alpha`` as a key (rank 4, alpha 2)."""
    state, deltas = {}, {}
    for component, model in models.items():
        own = get_peft_model_state_dict(peft_adapter(model, seed, rank=4, alpha=2.0))
        deltas[component] = peft_deltas(own, 2.0 / 4)
        state.update({f"{component}.{key}": value for key, value in own.items()})
        state.update({f"{component}.{layer}.alpha": torch.tensor(2.0) for layer in deltas[component]})
    save_file(state, path)
    return Written(path, deltas)


def saved_adapter(model: torch.nn.Module, component: str, folder: Path, seed: int) -> Written:
    """A LoRA saved by diffusers' own ``save_lora_adapter`` (rank 4, alpha 8): unprefixed PEFT keys, the alpha in
    the file's metadata, in a folder as ``pytorch_lora_weights.safetensors``."""
    adapted = peft_adapter(model, seed, rank=4, alpha=8.0)
    adapted.save_lora_adapter(folder)
    state = get_peft_model_state_dict(adapted)
    return Written(folder, {component: peft_deltas(state, 8.0 / 4)})


def merged_by_hand(repo: Path, out: Path, component: str, *scaled: tuple[float, Written]) -> Path:
    """A copy of ``repo`` whose ``component`` weights are W + scale x delta for each LoRA."""
    shutil.copytree(repo, out)
    file = out / component / WEIGHTS
    weights = load_file(file)
    for scale, written in scaled:
        for layer, delta in written.deltas.get(component, {}).items():
            key = f"{layer}.weight"
            weights[key] = (weights[key].double() + scale * delta.double()).to(weights[key].dtype)
    save_file(weights, file)
    return out


@pytest.fixture(scope="module")
def settings(tiny_strings) -> Settings:
    return Settings.from_strings({**tiny_strings, "guidance_scale": "2.0"})


@pytest.fixture(scope="module")
def files(tiny_repos, tmp_path_factory) -> dict[str, Written]:
    folder = tmp_path_factory.mktemp("loras")
    decoder, prior_model = unet(tiny_repos.decoder), prior(tiny_repos.prior)
    (folder / "saved").mkdir()
    return {
        "decoder": attention_processor_lora(decoder, "unet", folder / "decoder.safetensors", seed=1),
        "prior": attention_processor_lora(prior_model, "prior", folder / "prior.safetensors", seed=2),
        "both": peft_lora_with_prefixes({"unet": decoder, "prior": prior_model}, folder / "both.safetensors", seed=3),
        "saved": saved_adapter(decoder, "unet", folder / "saved", seed=4),
    }


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache()


def picture(settings: Settings, cache: ModelCache, runtime: Runtime = FLOAT64, **changes: str) -> np.ndarray:
    return generate(replace(settings, **changes), runtime=runtime, cache=cache).images[0]


def reference(settings, tiny_repos, tmp_path, *scaled: tuple[float, Written]) -> np.ndarray:
    """The picture of ``settings`` with the LoRAs merged by hand into copies of the tiny repos."""
    decoder = merged_by_hand(tiny_repos.decoder, tmp_path / "decoder", "unet", *scaled)
    prior_repo = merged_by_hand(tiny_repos.prior, tmp_path / "prior", "prior", *scaled)
    merged = replace(settings, model_name=str(decoder), prior_model_name=str(prior_repo))
    return picture(merged, ModelCache())


@pytest.mark.parametrize(
    ("loras", "lora_scale", "scales"),
    [
        # The two-LoRA case below has the decoder in this format too: the quick loop leaves this one out.
        pytest.param(["decoder"], "0.7", [0.7], marks=pytest.mark.slow),
        (["prior"], "", [1.0]),
        (["both"], "1.5", [1.5]),
        (["decoder", "saved"], "0.5, -0.8", [0.5, -0.8]),
    ],
    ids=["decoder-attention-processors", "prior-attention-processors", "both-peft-prefixed", "two-with-scales"],
)
def test_a_lora_gives_the_picture_of_its_weights_merged_by_hand(
    settings, cache, files, tiny_repos, tmp_path, loras, lora_scale, scales
):
    chosen = [files[name] for name in loras]
    with_lora = picture(settings, cache, lora=", ".join(str(each.path) for each in chosen), lora_scale=lora_scale)
    assert max_difference(with_lora, picture(settings, cache)) > 8
    assert max_difference(with_lora, reference(settings, tiny_repos, tmp_path, *zip(scales, chosen, strict=True))) <= 1


def test_changing_a_lora_reloads_nothing_and_removing_it_gives_the_picture_of_a_run_that_never_had_it(
    settings, files, tiny_repos
):
    cache = ModelCache()
    plain = picture(settings, cache)
    counts = dict(cache.load_counts)
    pictures = {}
    for entries, scales in [("decoder", "1"), ("decoder", "0.3"), ("decoder, prior", "0.3, 1"), ("prior", "")]:
        lora = ", ".join(str(files[name].path) for name in entries.split(", "))
        pictures[entries, scales] = picture(settings, cache, lora=lora, lora_scale=scales)
    assert dict(cache.load_counts) == counts
    assert len({image.tobytes() for image in [plain, *pictures.values()]}) == 5
    assert np.array_equal(picture(settings, cache), plain)
    decoder = load_models(settings, FLOAT64, cache).decoder.unet
    assert not getattr(decoder, "peft_config", {})
    assert not any("lora" in name for name, _ in decoder.named_parameters())
    # Back to an earlier set, with its scales: its picture again.
    again = picture(settings, cache, lora=str(files["decoder"].path), lora_scale="0.3")
    assert np.array_equal(again, pictures["decoder", "0.3"])


def test_a_file_rewritten_in_place_is_read_again_and_the_applied_weights_never_follow_the_file(
    settings, files, tiny_repos, tmp_path
):
    decoder = unet(tiny_repos.decoder)
    path = attention_processor_lora(decoder, "unet", tmp_path / "style.safetensors", seed=5).path
    other = attention_processor_lora(decoder, "unet", tmp_path / "other.safetensors", seed=6).path
    assert path.stat().st_size == other.stat().st_size
    cache = ModelCache()
    runtime = Runtime("cpu", torch.float32)
    first = picture(settings, cache, runtime, lora=str(path))
    unet_with_lora = load_models(settings, runtime, cache).decoder.unet
    applied = {name: value.clone() for name, value in unet_with_lora.state_dict().items() if "lora" in name}
    status = path.stat()
    with open(path, "r+b") as file:  # as a training script saving again: same size, then the old times put back
        file.write(other.read_bytes())
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert all(torch.equal(value, unet_with_lora.state_dict()[name]) for name, value in applied.items())
    again = picture(settings, cache, runtime, lora=str(path))
    assert max_difference(again, first) > 8
    assert max_difference(again, picture(settings, ModelCache(), runtime, lora=str(other))) <= 1


def test_one_file_may_name_a_model_s_layers_with_and_without_its_prefix_but_not_a_layer_twice(
    settings, cache, files, tmp_path
):
    state = load_file(files["decoder"].path)
    keys = sorted(state)
    half = len(keys) // 2 // 2 * 2  # whole layers: a down and an up key each
    mixed = {**{key: state[key] for key in keys[:half]}, **{f"unet.{key}": state[key] for key in keys[half:]}}
    path = write(tmp_path / "mixed.safetensors", mixed)
    expected = picture(settings, cache, lora=str(files["decoder"].path))
    assert np.array_equal(picture(settings, cache, lora=path), expected)
    layer = keys[0].removesuffix(".down.weight").removesuffix("_lora")
    peft_key = layer.replace(".processor.", ".").replace(".to_out", ".to_out.0") + ".lora_A.weight"
    twice = write(tmp_path / "twice.safetensors", {**state, peft_key: state[keys[0]].clone()})
    with pytest.raises(ModelLoadError) as refused:
        generate(replace(settings, lora=twice), runtime=FLOAT64, cache=cache)
    assert str(refused.value) == (
        f"lora: {twice!r} holds the down matrix of layer {peft_key.removesuffix('.lora_A.weight')!r} twice, as "
        f"{min(keys[0], peft_key)!r} and {max(keys[0], peft_key)!r}; accepted: one key per matrix."
    )


def test_the_metadata_lists_each_lora_its_file_scale_and_the_models_it_changed(settings, cache, files):
    lora = f"{files['both'].path}, {files['saved'].path}"
    metadata = generate(replace(settings, lora=lora, lora_scale="2 0.25"), runtime=FLOAT64, cache=cache).metadata
    assert metadata["lora"] == [
        {
            "lora": str(files["both"].path),
            "file": str(files["both"].path),
            "scale": 2.0,
            "models": ["the decoder's UNet", "the prior transformer"],
        },
        {
            "lora": str(files["saved"].path),
            "file": str(files["saved"].path / "pytorch_lora_weights.safetensors"),
            "scale": 0.25,
            "models": ["the decoder's UNet"],
        },
    ]
    assert generate(settings, runtime=FLOAT64, cache=cache).metadata["lora"] == []


# The quick loop runs the two decoders text2img does not: the inpainting UNet and the ControlNet UNet.
@pytest.mark.parametrize(
    "mode",
    [
        "inpaint",
        "controlnet_depth",
        *[pytest.param(mode, marks=pytest.mark.slow) for mode in ("controlnet_img2img", "img2img", "mix")],
    ],
)
def test_a_decoder_lora_changes_the_decoder_of_every_mode_and_leaves_it_as_it_was(
    tiny_strings, tiny_repos, warm_cache, files, mode
):
    settings = settings_in_mode(tiny_strings, tiny_repos, mode)
    runtime = FLOAT64
    inputs = MODE_INPUTS[mode]
    plain = generate(settings, inputs, runtime=runtime, cache=warm_cache).images[0]
    changed = generate(replace(settings, lora=str(files["decoder"].path)), inputs, runtime=runtime, cache=warm_cache)
    assert changed.metadata["lora"][0]["models"] == ["the decoder's UNet"]
    assert max_difference(changed.images[0], plain) > 8
    assert np.array_equal(generate(settings, inputs, runtime=runtime, cache=warm_cache).images[0], plain)


# gpu keeps every model in place, as the plain runs of the other tests do: the quick loop leaves it out.
@pytest.mark.parametrize(
    "memory_mode",
    [
        pytest.param(mode, marks=pytest.mark.slow) if mode == "gpu" else mode
        for mode in MEMORY_MODES
        if mode != "sequential_offload"
    ],
)
def test_every_memory_mode_gives_the_lora_s_picture_and_takes_it_off_again(settings, files, memory_mode):
    # accelerate's layer-by-layer offload cannot run CLIP on the CPU (it rebuilds a buffer as a parameter): the
    # next test runs a LoRA on a UNet offloaded that way. Pictures of the same weights from different caches may
    # differ by a grey level in float32 (the module's docstring says why).
    lora = f"{files['decoder'].path}, {files['prior'].path}"
    expected = picture(settings, ModelCache(), Runtime("cpu", torch.float32), lora=lora)
    runtime = Runtime("cpu", torch.float32, memory_mode)
    cache = ModelCache()
    plain = picture(settings, cache, runtime)
    assert max_difference(picture(settings, cache, runtime, lora=lora), expected) <= 1
    assert max_difference(picture(settings, cache, runtime), plain) <= 1
    assert max_difference(plain, expected) > 8
    models = load_models(settings, runtime, cache)
    for model in (models.decoder.unet, models.prior.prior):
        assert not any("lora" in name for name, _ in model.named_parameters())
    assert sum(cache.load_counts.values()) == 2


def test_a_lora_on_a_unet_offloaded_layer_by_layer_computes_as_on_one_in_place(tiny_repos, files):
    # As sequential_offload places it: accelerate keeps the weights off the model (on the meta device) and brings
    # each layer's to it for its forward; the LoRA's own weights stay where the layer computes.
    in_place, offloaded = unet(tiny_repos.decoder).double(), unet(tiny_repos.decoder).double()
    cpu_offload(offloaded, execution_device="cpu")
    loras = read_loras([str(files["decoder"].path)], [0.7])
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 16, generator=generator, dtype=torch.float64)
    embeds = {"image_embeds": torch.randn(2, in_place.config.encoder_hid_dim, generator=generator, dtype=torch.float64)}

    def forward(model: UNet2DConditionModel) -> torch.Tensor:
        with torch.no_grad():
            return model(sample, 500, encoder_hidden_states=None, added_cond_kwargs=embeds).sample

    plain = forward(in_place)
    for model in (in_place, offloaded):
        assert apply(
            model, assign_models(loras, {DECODER: model}, {DECODER: "the UNet"})[DECODER], "cpu", torch.float64
        )
        assert all(parameter.device.type == "cpu" for name, parameter in model.named_parameters() if "lora" in name)
    assert torch.allclose(forward(offloaded), forward(in_place), rtol=0, atol=1e-12)
    assert (forward(offloaded) - plain).abs().max() > 1e-3
    assert apply(offloaded, [], "cpu", torch.float64)
    assert not any("lora" in name for name, _ in offloaded.named_modules())
    assert torch.allclose(forward(offloaded), plain, rtol=0, atol=1e-12)


class CountingCapture(EagerCapture):
    """``EagerCapture`` that counts its captures: a CUDA graph replays the kernels it recorded, so a LoRA added,
    removed or scaled must be captured again (an eager replay would follow the change by itself)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, run, pool, device):
        self.count += 1
        return super().__call__(run, pool, device)


def test_cuda_graphs_are_captured_again_when_the_loras_change_and_replay_their_pictures(settings, files, monkeypatch):
    capture = CountingCapture()
    monkeypatch.setattr(graphs, "CAPTURE", capture)
    as_on_cuda = Runtime("cpu", torch.float64, "gpu")
    graphed = replace(settings, cuda_graphs=True)
    cache = ModelCache()
    both, decoder = str(files["both"].path), str(files["decoder"].path)
    captures = []
    pictures = {}
    for lora, lora_scale in [("", ""), ("", ""), (both, ""), (both, ""), (both, "0.5"), (decoder, ""), ("", "")]:
        result = generate(replace(graphed, lora=lora, lora_scale=lora_scale), runtime=as_on_cuda, cache=cache)
        assert result.metadata["cuda_graphs"] == ["prior", "decoder"]
        pictures.setdefault((lora, lora_scale), []).append(result.images[0])
        captures.append(capture.count)
        capture.count = 0
    # One signature per model: the prior's and the UNet's. A change captures again the models it changed: both
    # for a LoRA of both added or scaled, both when it gives way to a decoder LoRA (the prior's goes), and the
    # UNet alone when that one goes.
    assert captures == [2, 0, 2, 0, 2, 2, 1]
    for (lora, lora_scale), replayed in pictures.items():
        expected = picture(settings, ModelCache(), lora=lora, lora_scale=lora_scale)
        assert all(np.array_equal(image, expected) for image in replayed)


def test_a_decoder_lora_with_compile_unet_is_refused_before_any_step(settings, files, tiny_repos):
    steps = []
    runtime = Runtime("cpu", torch.float32, "gpu", "reduce-overhead")
    with pytest.raises(SettingsError) as refused:
        generate(
            replace(settings, lora=str(files["decoder"].path)),
            runtime=runtime,
            cache=ModelCache(),
            on_step=lambda: steps.append(1),
        )
    assert str(refused.value) == (
        f"lora: {str(files['decoder'].path)!r} changes the decoder's UNet, which compile_unet 'reduce-overhead' "
        "compiles as it is; accepted: compile_unet off with a decoder LoRA (cuda_graphs replays the UNet with its "
        "LoRAs)."
    )
    assert steps == []


def write(path: Path, state: dict[str, torch.Tensor]) -> str:
    save_file(state, path)
    return str(path)


def test_refusals_name_lora_the_entry_and_what_is_wrong_before_any_model_loads(tmp_path, settings):
    down, up = torch.zeros(4, 32), torch.zeros(32, 4)
    pickle = tmp_path / "lora.bin"
    pickle.write_bytes(b"pickle")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors")
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        write(several / name, {"x.lora_A.weight": down, "x.lora_B.weight": up})
    unknown = write(tmp_path / "unknown.safetensors", {"down_blocks.1.attentions.0.to_q.weight": down})
    half = write(tmp_path / "half.safetensors", {"unet.mid_block.attentions.0.to_q.lora_A.weight": down})
    ranks = write(tmp_path / "ranks.safetensors", {"a.lora_A.weight": down, "a.lora_B.weight": torch.zeros(32, 2)})
    cases = {
        str(tmp_path / "missing.safetensors"): (
            f"lora: {str(tmp_path / 'missing.safetensors')!r} not found; accepted: a local .safetensors file, a local "
            "folder or a Hugging Face hub repo (owner/name, or owner/name@revision) holding one."
        ),
        str(pickle): (
            f"lora: {str(pickle)!r} is a pickle file, which the task never loads (unpickling can run code); "
            "accepted: a .safetensors file."
        ),
        str(several): (
            f"lora: folder {str(several)!r} holds several .safetensors files (a.safetensors, b.safetensors) and none "
            "named pytorch_lora_weights.safetensors; accepted: the path of one of them."
        ),
        unknown: (
            f"lora: {unknown!r} holds key 'down_blocks.1.attentions.0.to_q.weight', in no known format; accepted: LoRA "
            "weights in diffusers' attention-processor format (keys such as "
            "'down_blocks.1.attentions.0.processor.to_q_lora.down.weight') or the PEFT format (keys such as "
            "'unet.down_blocks.1.attentions.0.to_q.lora_A.weight')."
        ),
        half: (
            f"lora: {half!r} lacks the up matrix of layer 'mid_block.attentions.0.to_q'; accepted: a down and an up "
            "matrix for every layer."
        ),
        ranks: (
            f"lora: {ranks!r}: layer 'a' has a down matrix of shape (4, 32) and an up matrix of shape (32, 2); "
            "accepted: (rank, in) and (out, rank), of one rank."
        ),
    }
    for entry, message in cases.items():
        cache = ModelCache()
        with pytest.raises(ModelLoadError) as refused:
            generate(replace(settings, lora=entry), runtime=Runtime("cpu", torch.float32), cache=cache)
        assert str(refused.value) == message
        assert not cache.load_counts
    with pytest.raises(ModelLoadError, match=r"^lora: '.*garbage.safetensors' is not a readable safetensors file: "):
        generate(replace(settings, lora=str(garbage)), runtime=Runtime("cpu", torch.float32), cache=ModelCache())


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (
            {
                "mid_block.attentions.0.nowhere.lora_A.weight": (4, 32),
                "mid_block.attentions.0.nowhere.lora_B.weight": (32, 4),
            },
            "key 'mid_block.attentions.0.nowhere.lora_A.weight' names layer 'mid_block.attentions.0.nowhere', which it "
            "does not have",
        ),
        (
            {"unet.conv_in.lora_A.weight": (4, 4), "unet.conv_in.lora_B.weight": (4, 4)},
            "key 'unet.conv_in.lora_A.weight' names layer 'conv_in', a Conv2d, not a linear layer",
        ),
    ],
    ids=["missing-layer", "convolution"],
)
def test_a_lora_that_does_not_fit_the_decoder_is_refused_naming_the_key_before_any_step(
    settings, tmp_path, state, problem
):
    path = write(tmp_path / "misfit.safetensors", {key: torch.zeros(shape) for key, shape in state.items()})
    steps = []
    with pytest.raises(ModelLoadError) as refused:
        generate(
            replace(settings, lora=path),
            runtime=Runtime("cpu", torch.float32),
            cache=ModelCache(),
            on_step=lambda: steps.append(1),
        )
    assert str(refused.value) == (
        f"lora: {path!r} does not fit the UNet of the decoder of text2img ({settings.model_name!r}): {problem}; "
        "accepted: LoRA weights trained for Kandinsky 2.2's decoder."
    )
    assert steps == []


def test_a_lora_of_the_wrong_shape_names_the_key_and_both_shapes(settings, tiny_repos, tmp_path):
    layer = next(iter(files_of_layers(unet(tiny_repos.decoder))))
    linear = unet(tiny_repos.decoder).get_submodule(layer)
    path = write(
        tmp_path / "wide.safetensors",
        {
            f"{layer}.lora_A.weight": torch.zeros(4, linear.in_features + 1),
            f"{layer}.lora_B.weight": torch.zeros(linear.out_features, 4),
        },
    )
    with pytest.raises(ModelLoadError) as refused:
        generate(replace(settings, lora=path), runtime=Runtime("cpu", torch.float32), cache=ModelCache())
    assert str(refused.value) == (
        f"lora: {path!r} does not fit the UNet of the decoder of text2img ({settings.model_name!r}): key "
        f"'{layer}.lora_A.weight' has shape (4, {linear.in_features + 1}), for {linear.in_features + 1} inputs, where "
        f"layer {layer!r} has {linear.in_features} inputs; accepted: LoRA weights trained for Kandinsky 2.2's decoder."
    )


def files_of_layers(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name.endswith(".to_q")]


@pytest.mark.parametrize(
    ("lora", "lora_scale", "message"),
    [
        (
            "a.safetensors",
            "1, 2",
            "lora_scale: received '1, 2'; accepted: one number per entry of lora, in order, "
            "separated by commas or spaces (1 for the 1 entry of lora), or empty for 1 each.",
        ),
        (
            "",
            "1",
            "lora_scale: received '1'; accepted: one number per entry of lora, in order, separated by commas or "
            "spaces (0 for lora, which is empty), or empty for 1 each.",
        ),
        (
            "a.safetensors,,b.safetensors",
            "",
            "lora: received 'a.safetensors,,b.safetensors', which has an empty "
            "entry; accepted: LoRA weights (files, folders or hub ids) separated by single commas.",
        ),
        (
            "a.safetensors",
            "inf",
            "lora_scale: received 'inf'; accepted: one number per entry of lora, in order, "
            "separated by commas or spaces (1 for the 1 entry of lora), or empty for 1 each.",
        ),
    ],
)
def test_scales_that_do_not_match_the_entries_are_refused_with_the_settings(lora, lora_scale, message):
    with pytest.raises(SettingsError) as refused:
        Settings.from_strings({"lora": lora, "lora_scale": lora_scale})
    assert message in str(refused.value)


def test_a_hub_lora_downloads_only_its_weights_then_runs_offline_from_the_cache(
    settings, files, cache_folder, monkeypatch, caplog
):
    weights = files["decoder"].path.read_bytes()
    repo = {"README.md": b"a LoRA", "pytorch_lora_weights.safetensors": weights, "image.png": b"sample"}
    lora = replace(settings, lora="someone/kandinsky-lora")
    expected = picture(settings, ModelCache(), Runtime("cpu", torch.float32), lora=str(files["decoder"].path))
    monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", False)
    with FakeHub({"someone/kandinsky-lora": FakeRepo.of(repo)}) as fake, hub_at(fake.endpoint):
        with caplog.at_level(logging.INFO, logger=hub.__name__):
            result = generate(lora, runtime=Runtime("cpu", torch.float32), cache=ModelCache())
        assert fake.downloaded() == ["someone/kandinsky-lora:pytorch_lora_weights.safetensors"]
    assert np.array_equal(result.images[0], expected)
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("infer_kandinsky_2_2: lora: downloading 1 file(s), ") for message in messages)
    monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", True)
    offline = generate(lora, runtime=Runtime("cpu", torch.float32), cache=ModelCache())
    assert np.array_equal(offline.images[0], expected)
    with pytest.raises(ModelLoadError) as refused:
        generate(replace(settings, lora="someone/other"), runtime=Runtime("cpu", torch.float32), cache=ModelCache())
    assert str(refused.value) == (
        f"lora: 'someone/other' is not in the local Hugging Face cache ({cache_folder}) and HF_HUB_OFFLINE is set, so "
        "it cannot be downloaded. Download it once with network access, or give a local file."
    )
