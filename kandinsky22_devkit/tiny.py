"""Random-weight Kandinsky 2.2 repos built from the published configs: tiny ones on disk, full-size ones in memory.

No machine of this project reaches a model hub, yet the real loading code must be tested. A tiny repo is
a published repo (``published.py``) with only its sizes scaled down: every config key and value is the
published one except those that ``TINY`` overrides (channels, layers, heads, vocabulary). The layout is
the hub's too: ``model_index.json`` and the config files as published, the tokenizer as ``vocab.json`` and
``merges.txt`` with no ``tokenizer.json``, the image processor in the older ``CLIPFeatureExtractor`` format,
safetensors weights, the image encoder's stored in float16. So tests, the offline demo and the
benchmarks load them through the same ``from_pretrained`` path as the real ``kandinsky-community``
weights, down to the decoder scheduler's clipping of the predicted sample (``clip_sample``). ``FULL``
overrides nothing: the published architectures, for the benchmarks, where speed and memory depend on
the sizes, not on the weights. The MoVQ keeps four blocks, hence a scale factor of 8, so images round
exactly as with the real models. ``build_tiny_depth_model`` builds a tiny transformers depth-estimation model,
for depth_model.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, VQModel
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
)

from .published import config_path, published_config, published_paths

MAX_TOKENS = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class TinyRepos:
    """Paths of the tiny repos: the prior and the decoders of text2img, inpaint and ControlNet depth."""

    prior: Path
    decoder: Path
    inpaint_decoder: Path
    controlnet_decoder: Path


def _byte_symbols() -> list[str]:
    """The 256 printable symbols that byte-level BPE uses for the 256 byte values (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {}
    shift = 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shift)
            shift += 1
    return [symbols[byte] for byte in range(256)]


def tiny_vocabulary() -> dict[str, int]:
    """A byte-level CLIP vocabulary with no merges: every byte, alone and word-final, then the start and end
    tokens, the end token last (highest id), as in CLIP's own vocabulary."""
    symbols = _byte_symbols()
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols), START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """Write the tiny tokenizer into ``folder`` in the published layout and return it, loaded back.

    The published tokenizer is ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json``, with no ``tokenizer.json``: the files are written as such, so that the
    tokenizers library builds the tokenizer from them as it does for the real repo.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tiny_vocabulary()), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(published_config("prior", "tokenizer/tokenizer_config.json"), indent=2), encoding="utf-8"
    )
    (folder / "special_tokens_map.json").write_bytes(
        config_path("prior", "tokenizer/special_tokens_map.json").read_bytes()
    )
    return CLIPTokenizer.from_pretrained(folder)


@dataclass(frozen=True)
class Architecture:
    """Config values that replace the published ones, per model: the sizes only."""

    text_encoder: dict = field(default_factory=dict)
    image_encoder: dict = field(default_factory=dict)
    prior: dict = field(default_factory=dict)
    unet: dict = field(default_factory=dict)
    movq: dict = field(default_factory=dict)


TINY = Architecture(
    text_encoder={
        "hidden_size": 32,
        "projection_dim": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": len(tiny_vocabulary()),
    },
    image_encoder={
        "hidden_size": 32,
        "projection_dim": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
    },
    prior={"num_attention_heads": 2, "attention_head_dim": 12, "embedding_dim": 32, "num_layers": 1},
    unet={
        "block_out_channels": [32, 32, 64, 64],
        "layers_per_block": 1,
        "attention_head_dim": 8,
        "encoder_hid_dim": 32,
        "cross_attention_dim": 32,
    },
    movq={"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "num_vq_embeddings": 12},
)
# The published models' sizes, for benchmarks.
FULL = Architecture()

# The models of the repos: each has a ``config.json``, and a field of ``Architecture`` of the same name.
MODELS = ("text_encoder", "image_encoder", "prior", "unet", "movq")


def model_config(repo: str, model: str, architecture: Architecture) -> dict:
    """The config of ``model`` (a folder of ``repo``): the published one with ``architecture``'s sizes."""
    return {**published_config(repo, f"{model}/config.json"), **getattr(architecture, model)}


def build_prior_pipeline(architecture: Architecture, tokenizer: CLIPTokenizer) -> diffusers.KandinskyV22PriorPipeline:
    """A prior with random (seeded) weights of the given sizes, in the current default device and dtype."""
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig.from_dict(model_config("prior", "text_encoder", architecture))
    )
    # The config records the dtype the published weights are stored in (float16), which transformers would build
    # the model in: it is built in the current default dtype, as the other models are.
    encoder_config = model_config("prior", "image_encoder", architecture)
    del encoder_config["torch_dtype"]
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(encoder_config))
    prior = PriorTransformer.from_config(model_config("prior", "prior", architecture))
    # A zero clip_std (the default init) makes every embedding zero.
    prior.clip_std = torch.nn.Parameter(torch.ones_like(prior.clip_std))
    return diffusers.KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=UnCLIPScheduler.from_config(published_config("prior", "scheduler/scheduler_config.json")),
        image_processor=CLIPImageProcessor.from_dict(
            published_config("prior", "image_processor/preprocessor_config.json")
        ),
    )


def build_decoder_pipeline(architecture: Architecture, repo: str = "decoder") -> DiffusionPipeline:
    """A decoder of the published ``repo`` ("decoder", "decoder-inpaint" or "controlnet-depth", which differ
    in their pipeline, the UNet's input channels and added embedding, and the scheduler's clipping), with
    random (seeded) weights of the given sizes."""
    torch.manual_seed(0)
    pipeline_class = getattr(diffusers, published_config(repo, "model_index.json")["_class_name"])
    unet = UNet2DConditionModel.from_config(model_config(repo, "unet", architecture))
    hint_block = getattr(unet.add_embedding, "input_hint_block", None)
    if hint_block is not None:
        # With PyTorch's default init the hint's effect on the picture stays below one grey level, so a test could
        # not tell a right depth map from a wrong one; He init keeps it through the block's seven convolutions.
        for layer in hint_block:
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                torch.nn.init.zeros_(layer.bias)
    return pipeline_class(
        unet=unet,
        scheduler=DDPMScheduler.from_config(published_config(repo, "scheduler/scheduler_config.json")),
        movq=VQModel.from_config(model_config(repo, "movq", architecture)),
    )


def _write_repo(pipeline: DiffusionPipeline, folder: Path, repo: str, architecture: Architecture) -> None:
    """Save ``pipeline``'s weights as safetensors, then give every config file the published text (with the
    sizes of ``architecture`` for the models' configs)."""
    pipeline.save_pretrained(folder, safe_serialization=True)
    for path in published_paths(repo):
        (folder / path).write_bytes(config_path(repo, path).read_bytes())
    for model in MODELS:
        if (folder / model / "config.json").exists():
            config = model_config(repo, model, architecture)
            (folder / model / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_tiny_repos(folder: str | Path) -> TinyRepos:
    """Build the tiny prior and decoder repos under ``folder`` and return their paths.

    The weights are random but fixed (seeded), so two builds give the same models.
    """
    folder = Path(folder)
    repos = TinyRepos(
        prior=folder / "tiny-kandinsky-2-2-prior",
        decoder=folder / "tiny-kandinsky-2-2-decoder",
        inpaint_decoder=folder / "tiny-kandinsky-2-2-decoder-inpaint",
        controlnet_decoder=folder / "tiny-kandinsky-2-2-controlnet-depth",
    )
    prior = build_prior_pipeline(TINY, write_tokenizer(repos.prior / "tokenizer"))
    # The published image encoder is stored in float16.
    prior.image_encoder.to(torch.float16)
    _write_repo(prior, repos.prior, "prior", TINY)
    for name in {*(path.name for path in (repos.prior / "tokenizer").iterdir())} - set(TOKENIZER_FILES):
        (repos.prior / "tokenizer" / name).unlink()
    write_tokenizer(repos.prior / "tokenizer")
    for repo, path in (
        ("decoder", repos.decoder),
        ("decoder-inpaint", repos.inpaint_decoder),
        ("controlnet-depth", repos.controlnet_decoder),
    ):
        _write_repo(build_decoder_pipeline(TINY, repo), path, repo, TINY)
    return repos


# Depth Anything's image processor (a DPT one), scaled down: 56 pixels, a multiple of the 14-pixel patches. Written
# as JSON rather than saved from a class, as transformers 5.0.0 and 5.24 name their DPT processor classes apart
# (DPTImageProcessor, DPTImageProcessorPil); both load this file.
TINY_DEPTH_PROCESSOR = {
    "image_processor_type": "DPTImageProcessor",
    "do_resize": True,
    "size": {"height": 56, "width": 56},
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 14,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_pad": False,
}


def build_tiny_depth_model(folder: str | Path) -> Path:
    """Build a tiny Depth Anything model with random (seeded) weights in ``folder``, as a transformers
    depth-estimation repo: ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` at its root.

    Two builds give the same model. transformers' ``pipeline("depth-estimation", model=folder)`` loads it, offline,
    in transformers 5.0.0 and 5.24. Returns ``folder``.
    """
    folder = Path(folder)
    torch.manual_seed(0)
    backbone = Dinov2Config(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_indices=[1, 2, 3, 4],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(TINY_DEPTH_PROCESSOR, indent=2), encoding="utf-8")
    return folder
