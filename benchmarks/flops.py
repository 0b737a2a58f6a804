"""The FLOP floor of one Kandinsky 2.2 text2img run, counted with torch's FlopCounterMode.

The models are built on the meta device (no memory, no weights), so this runs anywhere in seconds:
python benchmarks/flops.py [--height 768 --width 768 --steps 100 --prior-steps 25 --guidance 1.0]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kandinsky22_devkit.tiny import (
    FULL,
    MAX_TOKENS,
    Architecture,
    build_decoder_pipeline,
    build_prior_pipeline,
    write_tokenizer,
)


def _flops(function) -> int:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def count_flops(
    architecture: Architecture, height: int, width: int, steps: int, prior_steps: int, guidance: float
) -> dict[str, int]:
    """FLOPs of each stage of one run with a prompt and a negative prompt, as diffusers runs it."""
    with tempfile.TemporaryDirectory() as folder, torch.device("meta"):
        tokenizer = write_tokenizer(Path(folder))
        prior = build_prior_pipeline(architecture, tokenizer)
        decoder = build_decoder_pipeline(architecture)
        # The prior encodes [prompt, negative] and, for its guidance, two empty prompts: 4 sequences.
        tokens = torch.zeros(4, MAX_TOKENS, dtype=torch.long)
        text = _flops(lambda: prior.text_encoder(tokens))
        embedding = prior.prior.config.embedding_dim
        prior_step = _flops(
            lambda: prior.prior(
                torch.randn(4, embedding),
                timestep=torch.tensor(10),
                proj_embedding=torch.randn(4, embedding),
                encoder_hidden_states=torch.randn(4, MAX_TOKENS, prior.text_encoder.config.hidden_size),
                attention_mask=torch.ones(4, MAX_TOKENS, dtype=torch.bool),
            )
        )
        batch = 2 if guidance > 1 else 1
        latent = torch.randn(batch, 4, height // 8, width // 8)
        unet_step = _flops(
            lambda: decoder.unet(
                latent,
                torch.tensor(10),
                encoder_hidden_states=None,
                added_cond_kwargs={"image_embeds": torch.randn(batch, embedding)},
            )
        )
        movq = _flops(lambda: decoder.movq.decode(torch.randn(1, 4, height // 8, width // 8), force_not_quantize=True))
    return {"text_encoder": text, "prior": prior_step * prior_steps, "unet": unet_step * steps, "movq": movq}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=1.0)
    arguments = parser.parse_args()
    flops = count_flops(
        FULL, arguments.height, arguments.width, arguments.steps, arguments.prior_steps, arguments.guidance
    )
    flops["total"] = sum(flops.values())
    print(json.dumps({name: round(value / 1e12, 2) for name, value in flops.items()}, indent=2))


if __name__ == "__main__":
    main()
