"""Random-weight Kandinsky 2.2 models: tiny repos built on disk in about a second, and full-size ones.

No machine of this project reaches a model hub, yet the real loading code must be tested. These
repos have the layout of the hub's (``model_index.json``, one folder per component, safetensors),
so tests, the offline demo and the benchmarks load them through the same ``from_pretrained`` path
as the real ``kandinsky-community`` weights. Sizes are chosen so that images round exactly as they
do with the real models: the MoVQ has four blocks, hence a scale factor of 8. ``FULL`` has the sizes of
the published models, for the benchmarks: speed and memory depend on the sizes, not on the weights.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    PriorTransformer,
    UnCLIPScheduler,
    UNet2DConditionModel,
    VQModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

EMBEDDING_DIM = 32
MAX_TOKENS = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


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


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """Write a byte-level CLIP tokenizer with no merges into ``folder`` and return it, loaded back.

    transformers 5 saves only ``tokenizer.json``; ``vocab.json`` and ``merges.txt`` are written too,
    so that transformers 4.x loads the folder as well.
    """
    symbols = _byte_symbols()
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols), START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_TOKENS)


@dataclass(frozen=True)
class Architecture:
    """The sizes of every Kandinsky 2.2 model, as constructor arguments."""

    text_encoder: dict
    image_encoder: dict
    prior: dict
    unet: dict
    movq: dict


_UNET_BLOCKS = {
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "encoder_hid_dim_type": "image_proj",
    "resnet_time_scale_shift": "scale_shift",
    "class_embed_type": None,
}
_MOVQ_BLOCKS = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "norm_type": "spatial", "vq_embed_dim": 4}

TINY = Architecture(
    text_encoder={
        "hidden_size": 32,
        "projection_dim": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
    },
    image_encoder={
        "hidden_size": 32,
        "projection_dim": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": 224,
        "patch_size": 14,
    },
    prior={"num_attention_heads": 2, "attention_head_dim": 12, "embedding_dim": EMBEDDING_DIM, "num_layers": 1},
    unet={
        **_UNET_BLOCKS,
        "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "encoder_hid_dim": EMBEDDING_DIM,
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
    },
    movq={
        **_MOVQ_BLOCKS,
        "block_out_channels": [32, 32, 64, 64],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "num_vq_embeddings": 12,
        "down_block_types": ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        "up_block_types": ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
    },
)

# The published models' sizes (kandinsky-community/kandinsky-2-2-prior and -decoder), for benchmarks:
# speed and memory depend on the architecture, not on the weights.
FULL = Architecture(
    text_encoder={
        "hidden_size": 1280,
        "projection_dim": 1280,
        "intermediate_size": 5120,
        "num_attention_heads": 20,
        "num_hidden_layers": 32,
        "vocab_size": 49408,
    },
    image_encoder={
        "hidden_size": 1664,
        "projection_dim": 1280,
        "intermediate_size": 8192,
        "num_attention_heads": 16,
        "num_hidden_layers": 48,
        "image_size": 224,
        "patch_size": 14,
    },
    prior={
        "num_attention_heads": 32,
        "attention_head_dim": 64,
        "embedding_dim": 1280,
        "num_layers": 20,
        "num_embeddings": 77,
        "additional_embeddings": 4,
    },
    unet={
        **_UNET_BLOCKS,
        "down_block_types": ["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
        "up_block_types": ["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
        "block_out_channels": [384, 768, 1152, 1536],
        "layers_per_block": 3,
        "encoder_hid_dim": 1280,
        "cross_attention_dim": 768,
        "attention_head_dim": 64,
    },
    movq={
        **_MOVQ_BLOCKS,
        "block_out_channels": [128, 256, 256, 512],
        "layers_per_block": 2,
        "num_vq_embeddings": 16384,
        "down_block_types": ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        "up_block_types": ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
    },
)


def build_prior_pipeline(architecture: Architecture, tokenizer: CLIPTokenizer) -> KandinskyV22PriorPipeline:
    """A prior with random (seeded) weights of the given sizes, in the current default device and dtype."""
    torch.manual_seed(0)
    vocab_size = len(tokenizer)
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            **{"vocab_size": vocab_size, **architecture.text_encoder},
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**architecture.image_encoder))
    prior = PriorTransformer(**architecture.prior)
    # A zero clip_std (the default init) makes every embedding zero.
    prior.clip_std = torch.nn.Parameter(torch.ones_like(prior.clip_std))
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    image_processor = CLIPImageProcessor(
        crop_size=224,
        size=224,
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
    )
    return KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        image_processor=image_processor,
    )


def build_decoder_pipeline(
    architecture: Architecture,
    pipeline_class: type[DiffusionPipeline] = KandinskyV22Pipeline,
    in_channels: int = 4,
    addition: str = "image",
) -> DiffusionPipeline:
    """A decoder with random (seeded) weights: 4 latent channels in for text2img, 9 for inpainting
    (latents, masked image, mask), and 8 with an image hint for ControlNet depth."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=in_channels, out_channels=8, addition_embed_type=addition, **architecture.unet
    )
    movq = VQModel(**architecture.movq)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
    )
    return pipeline_class(unet=unet, scheduler=scheduler, movq=movq)


def _make_loadable_by_transformers_4(prior_folder: Path) -> None:
    """Name the image processor by the class transformers 4.x knows.

    Without torchvision, transformers 5 records "CLIPImageProcessorPil", which 4.x cannot import.
    """
    for path in (prior_folder / "model_index.json", prior_folder / "image_processor" / "preprocessor_config.json"):
        config = json.loads(path.read_text(encoding="utf-8"))
        if path.name == "model_index.json":
            config["image_processor"] = ["transformers", "CLIPImageProcessor"]
        else:
            config["image_processor_type"] = "CLIPImageProcessor"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")


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
    tokenizer = write_tokenizer(repos.prior / "tokenizer")
    build_prior_pipeline(TINY, tokenizer).save_pretrained(repos.prior, safe_serialization=True)
    write_tokenizer(repos.prior / "tokenizer")
    _make_loadable_by_transformers_4(repos.prior)
    build_decoder_pipeline(TINY).save_pretrained(repos.decoder, safe_serialization=True)
    build_decoder_pipeline(TINY, KandinskyV22InpaintPipeline, in_channels=9).save_pretrained(
        repos.inpaint_decoder, safe_serialization=True
    )
    build_decoder_pipeline(TINY, KandinskyV22ControlnetPipeline, in_channels=8, addition="image_hint").save_pretrained(
        repos.controlnet_decoder, safe_serialization=True
    )
    return repos
