"""diffusers' own combined pipelines over stages already loaded, to compare the engine with them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers import DiffusionPipeline, KandinskyV22CombinedPipeline, KandinskyV22PriorPipeline

if TYPE_CHECKING:
    from kandinsky22_engine.parameters import Settings


def combine(
    prior: KandinskyV22PriorPipeline,
    decoder: DiffusionPipeline,
    combined_class: type[DiffusionPipeline] = KandinskyV22CombinedPipeline,
) -> DiffusionPipeline:
    """A combined pipeline (text2img, img2img or inpaint, as ``combined_class`` says) over the same models."""
    combined = combined_class(
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
    combined.set_progress_bar_config(disable=True)
    return combined


def combined_arguments(settings: Settings, seed: int | None = None) -> dict:
    """The arguments of a combined-pipeline call asking for what ``settings`` ask of the engine.

    The generator is a fresh CPU one seeded with ``seed`` (``settings.seed`` when None), as diffusers'
    documentation does it.
    """
    return {
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt or None,
        "prior_num_inference_steps": settings.prior_num_inference_steps,
        "prior_guidance_scale": settings.prior_guidance_scale,
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        "height": settings.height,
        "width": settings.width,
        "num_images_per_prompt": settings.num_images,
        "generator": torch.Generator("cpu").manual_seed(settings.seed if seed is None else seed),
    }
