"""Helpers shared by the tests: the diffusers reference a plugin image must equal."""

import numpy as np
import torch
from diffusers import KandinskyV22CombinedPipeline, KandinskyV22Pipeline, KandinskyV22PriorPipeline

from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings


def diffusers_reference(settings: Settings, seed: int) -> np.ndarray:
    """What diffusers' own combined pipeline returns for the same arguments and seed."""
    prior = KandinskyV22PriorPipeline.from_pretrained(settings.prior_model_name)
    decoder = KandinskyV22Pipeline.from_pretrained(settings.model_name)
    combined = KandinskyV22CombinedPipeline(
        unet=decoder.unet,
        scheduler=decoder.scheduler,
        movq=decoder.movq,
        prior_prior=prior.prior,
        prior_image_encoder=prior.image_encoder,
        prior_text_encoder=prior.text_encoder,
        prior_tokenizer=prior.tokenizer,
        prior_scheduler=prior.scheduler,
        prior_image_processor=prior.image_processor,
    )
    image = combined(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt or None,
        prior_num_inference_steps=settings.prior_num_inference_steps,
        prior_guidance_scale=settings.prior_guidance_scale,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        height=settings.height,
        width=settings.width,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image)


def max_difference(first: np.ndarray, second: np.ndarray) -> int:
    assert first.shape == second.shape
    return int(np.abs(first.astype(int) - second.astype(int)).max())
