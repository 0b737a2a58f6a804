"""The diffusers behaviours that the engine patches or works around, checked on diffusers itself.

Each test states what diffusers does in the releases CI runs (0.40.0 to 0.42.1) and fails when a release
changes it, naming the engine code to revisit: a patch that no longer takes effect, or a workaround that is
no longer needed.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    KandinskyV22Img2ImgPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    UnCLIPScheduler,
)
from PIL import Image

from infer_kandinsky_2_2.kandinsky22_engine.models import IMAGE_ENCODER
from infer_kandinsky_2_2.kandinsky22_engine.parameters import PARAMETERS


def test_the_prior_asks_get_zero_embed_for_its_negative_when_there_is_no_negative_prompt(tiny_repos):
    # generation.load_pipelines answers get_zero_embed with the image encoder loaded apart from the prior.
    prior = KandinskyV22PriorPipeline.from_pretrained(tiny_repos.prior, **{IMAGE_ENCODER: None})
    prior.set_progress_bar_config(disable=True)
    asked = []
    zero = torch.full((2, prior.prior.config.embedding_dim), 0.5)

    def get_zero_embed(batch_size: int = 1, device: object = None) -> torch.Tensor:
        asked.append(batch_size)
        return zero

    prior.get_zero_embed = get_zero_embed
    output = prior("a red cat", num_inference_steps=2, num_images_per_prompt=2, generator=torch.manual_seed(0))
    assert asked == [2], "diffusers' prior no longer calls get_zero_embed: revisit generation.load_pipelines"
    assert output.negative_image_embeds is zero


def test_diffusers_img2img_resizes_with_height_and_width_swapped(tiny_repos):
    # generation._img2img_pipeline replaces the resizer by one that does not resize, since it is called so.
    decoder = KandinskyV22Pipeline.from_pretrained(tiny_repos.decoder)
    pipeline = KandinskyV22Img2ImgPipeline(**decoder.components)
    pipeline.set_progress_bar_config(disable=True)
    asked = []
    preprocess = pipeline.image_processor.preprocess

    def recording(image: object, height: int | None = None, width: int | None = None, **rest: object) -> object:
        asked.append((height, width))
        return preprocess(image, height, width, **rest)

    pipeline.image_processor.preprocess = recording
    embeds = torch.zeros(1, decoder.unet.config.encoder_hid_dim)
    picture = Image.fromarray(np.zeros((64, 128, 3), np.uint8))
    pipeline(
        image=picture,
        image_embeds=embeds,
        negative_image_embeds=embeds,
        height=64,
        width=128,
        num_inference_steps=2,
        strength=1.0,
    )
    assert asked == [(128, 64)], "diffusers' img2img resizes to the asked size now: the workaround can go"


def test_diffusers_decoders_leave_the_embeddings_uncast_without_guidance(tiny_repos):
    # generation._decode casts the embeddings to the UNet's dtype itself, since with guidance at 1 diffusers
    # passes them as they come: float32 embeddings then meet a float16 UNet.
    decoder = KandinskyV22Pipeline.from_pretrained(tiny_repos.decoder, dtype=torch.float16)
    decoder.set_progress_bar_config(disable=True)
    embeds = torch.zeros(1, decoder.unet.config.encoder_hid_dim)
    with pytest.raises(RuntimeError, match="dtype"):
        decoder(
            image_embeds=embeds,
            negative_image_embeds=embeds,
            height=64,
            width=64,
            num_inference_steps=1,
            guidance_scale=1.0,
            output_type="latent",
        )


def test_the_prior_scheduler_fails_on_one_step_which_the_steps_minimum_refuses():
    steps = next(parameter for parameter in PARAMETERS if parameter.name == "prior_num_inference_steps")
    assert steps.minimum == 2
    with pytest.raises(ZeroDivisionError):
        UnCLIPScheduler().set_timesteps(1)
