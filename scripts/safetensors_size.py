"""The size in bytes of each safetensors file of the published repos, computed from the models' configs.

The hub's file lists give the sizes of most files the task fetches, not of the inpainting decoder's UNet.
A safetensors file is an 8-byte header length, a JSON header (each tensor's dtype, shape and byte range,
and the metadata ``{"format": "pt"}`` first), padded with spaces to a multiple of 8, then the tensors'
bytes, ordered by dtype (largest enum value first: int64 before float32), then by name. So its size
follows from the model's state dict, which is built here on the meta device (no memory, no weights).
The published files were written in float32, the text encoder by transformers 4.24, which also saved
the ``position_ids`` buffer (int64, 1 x 77) that later releases no longer have.

Usage: python scripts/safetensors_size.py (prints each file's computed size; a test checks them against
the sizes the file list gives).
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kandinsky22_devkit.published import REPOS
from kandinsky22_devkit.tiny import FULL, build_decoder_pipeline, build_prior_pipeline, write_tokenizer

# The position of each dtype in the safetensors library's own enum, which orders the tensors' data.
_DTYPE_ORDER = {torch.int64: ("I64", 13, 8), torch.float32: ("F32", 11, 4)}


def file_size(tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    """The size of the safetensors file holding ``tensors`` (name -> (shape, dtype)), as the library writes it."""
    ordered = sorted(tensors.items(), key=lambda item: (-_DTYPE_ORDER[item[1][1]][1], item[0]))
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (shape, dtype) in ordered:
        code, _, width = _DTYPE_ORDER[dtype]
        size = width * int(torch.Size(shape).numel())
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    length = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + length + (-length % 8) + offset


def _layout(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in module.state_dict().items()}


def computed_sizes() -> dict[str, dict[str, int]]:
    """The computed size of every float32 model file of the published repos: hub id -> path -> bytes."""
    sizes: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as folder, torch.device("meta"):
        prior = build_prior_pipeline(FULL, write_tokenizer(Path(folder)))
        text_encoder = _layout(prior.text_encoder)
        text_encoder.setdefault("text_model.embeddings.position_ids", ((1, 77), torch.int64))
        sizes[REPOS["prior"]] = {
            "prior/diffusion_pytorch_model.safetensors": file_size(_layout(prior.prior)),
            "text_encoder/model.safetensors": file_size(text_encoder),
        }
        for repo in ("decoder", "decoder-inpaint", "controlnet-depth"):
            decoder = build_decoder_pipeline(FULL, repo)
            sizes[REPOS[repo]] = {
                f"{model}/diffusion_pytorch_model.safetensors": file_size(_layout(getattr(decoder, model)))
                for model in ("unet", "movq")
            }
    return sizes


if __name__ == "__main__":
    print(json.dumps(computed_sizes(), indent=2))
