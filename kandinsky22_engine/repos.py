"""Which repos can serve which role, read from their configs before any weights are fetched or loaded.

diffusers would build any decoder pipeline over any UNet, and transformers' depth-estimation pipeline fails late
on a model of another kind: each check here refuses a wrong repo at once, naming the parameter, what the repo
is and what the role needs (``models.PipelineLoader`` and ``models.DepthEstimatorLoader`` call them).
"""

import json
from collections.abc import Callable
from pathlib import Path

from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES

from .constants import DEFAULT_PRIOR
from .errors import ModelLoadError
from .hub import TRANSFORMERS_INDEX, Source
from .modes import DEPTH_INPUT, MODES


def _read_config(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe_repo(folder: Path) -> str:
    """What a diffusers repo is, from its configs: its pipeline class, and its UNet's input channels and added
    embedding (and so which modes it serves), or what it has instead of a UNet."""
    index = _read_config(folder / "model_index.json") or {}
    pipeline = f"a {index.get('_class_name', 'diffusers')} repo"
    unet = _read_config(folder / "unet" / "config.json")
    if unet is None:
        has_prior = "prior" in index and "text_encoder" in index
        return f"{pipeline} without a UNet ({'a prior, for prior_model_name' if has_prior else 'no unet/config.json'})"
    found = (unet.get("in_channels"), unet.get("addition_embed_type"))
    modes = [
        name for name, mode in MODES.items() if (mode.decoder.in_channels, mode.decoder.addition_embed_type) == found
    ]
    serves = f" ({MODES[modes[0]].decoder.kind}, for {', '.join(modes)})" if modes else ""
    return f"{pipeline} whose UNet takes {found[0]} input channels with added embedding {found[1]!r}{serves}"


def check_decoder(mode: str) -> Callable[[Path, Source], None]:
    """A check for ``models.load_pipeline``: refuse a decoder repo whose UNet cannot serve ``mode``, from its configs.

    diffusers would build any decoder pipeline over any UNet: an inpainting run on a text-to-image UNet
    fails inside its first step ("expected input to have 4 channels, but got 9"), after the prior ran, and a
    ControlNet run on it ignores the depth map without error. A folder without configs is left to the load.
    """
    decoder = MODES[mode].decoder

    def check(folder: Path, source: Source) -> None:
        unet = _read_config(folder / "unet" / "config.json")
        if unet is None and not (folder / "model_index.json").exists():
            return
        if unet is not None and (unet.get("in_channels"), unet.get("addition_embed_type")) == (
            decoder.in_channels,
            decoder.addition_embed_type,
        ):
            return
        raise ModelLoadError(
            f"model_name: {source.describe()} cannot serve {mode}: it is {describe_repo(folder)}; {mode} needs "
            f"{decoder.kind} (a UNet with {decoder.in_channels} input channels and added embedding "
            f"{decoder.addition_embed_type!r}), such as {decoder.default_model}."
        )

    return check


# The model types of transformers' depth-estimation models (those ``AutoModelForDepthEstimation`` loads).
DEPTH_MODEL_TYPES = tuple(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES)


def check_depth_model(folder: Path, source: Source) -> None:
    """A check for ``DepthEstimatorLoader``: refuse, from its configs, a repo that is not a transformers
    depth-estimation model (``config.json`` of a type in ``DEPTH_MODEL_TYPES``) with its image processor
    (``preprocessor_config.json``), which transformers' depth-estimation pipeline needs."""
    config = _read_config(folder / TRANSFORMERS_INDEX)
    model_type = (config or {}).get("model_type")
    if model_type in DEPTH_MODEL_TYPES and (folder / "preprocessor_config.json").is_file():
        return
    index = _read_config(folder / "model_index.json")
    if index is not None:
        found = f"a diffusers {index.get('_class_name', 'pipeline')} repo"
    elif config is None:
        found = "a model without config.json at its root"
    elif model_type not in DEPTH_MODEL_TYPES:
        found = f"a transformers model of type {model_type!r}, which does not estimate depth"
    else:
        found = f"a {model_type} model without preprocessor_config.json (its image processor)"
    raise ModelLoadError(
        f"depth_model: {source.describe()} is not a transformers depth-estimation model: it is {found}; accepted: a "
        f"depth-estimation model ({', '.join(DEPTH_MODEL_TYPES)}) with config.json, preprocessor_config.json and "
        "safetensors weights at its root, such as depth-anything/Depth-Anything-V2-Small-hf, or depth_model empty "
        f"to give a depth map (input '{DEPTH_INPUT}')."
    )


def check_prior(folder: Path, source: Source) -> None:
    """A check for ``load_pipeline``: refuse as prior a repo that has no prior transformer and text encoder."""
    index = _read_config(folder / "model_index.json")
    if index is None or ("prior" in index and "text_encoder" in index):
        return
    raise ModelLoadError(
        f"prior_model_name: {source.describe()} is not a Kandinsky 2.2 prior: it is {describe_repo(folder)}; "
        f"accepted: a prior repo (CLIP text encoder and prior transformer), such as {DEFAULT_PRIOR}."
    )
