"""The published Kandinsky 2.2 repos the task loads by default: their configs and the files they hold.

``published_configs/`` holds the repos' config files byte for byte, named ``<repo>--<folder>--<file>`` in one
flat folder (Ikomia unloads every module whose name contains the name of a plugin sub-folder, so no folder
here may be called "unet" or "scheduler"). ``published_configs/files.json`` lists, per repo and revision,
the files the task may fetch with their sizes in bytes (``null`` where the size is not known here). The
tiny test repos are built from these configs, and the README's download table is computed from the list.
"""

import json
from functools import cache
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "published_configs"
_PREFIX = "kandinsky-community/kandinsky-2-2-"
# The short name of each published repo, as in the configs' file names ("prior", "decoder", ...) -> hub id.
REPOS = {
    hub_id.removeprefix(_PREFIX): hub_id
    for hub_id in json.loads((FOLDER / "files.json").read_text(encoding="utf-8"))
    if not hub_id.startswith("_")
}

# Two files of the prior repo were not recovered byte for byte; these are written from what is known of
# them: the image encoder is ViT-bigG/14 (hidden 1664, 48 layers, 16 heads, intermediate 8192, projection
# 1280, image 224, patch 14, gelu) stored in float16, and the tokenizer is CLIP's, reading 77 tokens.
_SPECIAL_TOKEN = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": True}
RECONSTRUCTED = {
    ("prior", "image_encoder/config.json"): {
        "architectures": ["CLIPVisionModelWithProjection"],
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": 1664,
        "image_size": 224,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_channels": 3,
        "num_hidden_layers": 48,
        "patch_size": 14,
        "projection_dim": 1280,
        "torch_dtype": "float16",
    },
    ("prior", "tokenizer/tokenizer_config.json"): {
        "add_prefix_space": False,
        "bos_token": {"content": "<|startoftext|>", **_SPECIAL_TOKEN},
        "do_lower_case": True,
        "eos_token": {"content": "<|endoftext|>", **_SPECIAL_TOKEN},
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": {"content": "<|endoftext|>", **_SPECIAL_TOKEN},
    },
}


def config_path(repo: str, path: str) -> Path:
    """Where the published ``path`` (say ``unet/config.json``) of ``repo`` (a key of ``REPOS``) is kept."""
    return FOLDER / f"{repo}--{path.replace('/', '--')}"


def published_paths(repo: str) -> list[str]:
    """The paths, in the repo, of every published config file kept for ``repo``."""
    return sorted(path.name.split("--", 1)[1].replace("--", "/") for path in FOLDER.glob(f"{repo}--*.json"))


def published_config(repo: str, path: str) -> dict:
    """The config ``path`` of ``repo`` as a dict: the published file, or what ``RECONSTRUCTED`` holds for it.

    Raises ``KeyError`` for a file that is neither kept nor reconstructed.
    """
    file = config_path(repo, path)
    if file.exists():
        return json.loads(file.read_text(encoding="utf-8"))
    return json.loads(json.dumps(RECONSTRUCTED[repo, path]))


@cache
def file_sizes() -> dict[str, dict[str, dict[str, int | None]]]:
    """The files of each published repo at each revision: hub id -> revision -> path -> size in bytes or None."""
    listing = json.loads((FOLDER / "files.json").read_text(encoding="utf-8"))
    return {repo: revisions for repo, revisions in listing.items() if not repo.startswith("_")}
