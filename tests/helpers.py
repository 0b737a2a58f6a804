"""Helpers shared by the tests: what diffusers' own pipelines return, which a plugin image must equal.

Each reference loads its own copies of the models and calls diffusers the way its documentation
does, with ``torch.Generator("cpu").manual_seed(seed)``, and returns the list of pictures.
"""

import numpy as np
import torch
from diffusers import (
    KandinskyV22CombinedPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22Img2ImgCombinedPipeline,
    KandinskyV22InpaintCombinedPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
)
from PIL import Image

from infer_kandinsky_2_2.kandinsky22_devkit.reference import combine, combined_arguments
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings


def _combined(combined_class: type, decoder_class: type, settings: Settings):
    prior = KandinskyV22PriorPipeline.from_pretrained(settings.prior_model_name)
    return combine(prior, decoder_class.from_pretrained(settings.model_name), combined_class)


def _pictures(images: list) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def diffusers_reference(settings: Settings, seed: int) -> np.ndarray:
    """text2img: diffusers' ``KandinskyV22CombinedPipeline``."""
    combined = _combined(KandinskyV22CombinedPipeline, KandinskyV22Pipeline, settings)
    return _pictures(combined(**combined_arguments(settings, seed)).images)


def img2img_reference(settings: Settings, seed: int, image: np.ndarray, *, swap_sizes: bool) -> np.ndarray:
    """img2img: ``KandinskyV22Img2ImgCombinedPipeline`` on an image that already has the output size.

    diffusers resizes the image with height and width swapped; ``swap_sizes`` asks for the swapped size,
    which leaves the image as it is, so that the reference is free of that bug.
    """
    combined = _combined(KandinskyV22Img2ImgCombinedPipeline, KandinskyV22Pipeline, settings)
    arguments = combined_arguments(settings, seed)
    if swap_sizes:
        arguments["height"], arguments["width"] = settings.width, settings.height
    return _pictures(combined(**arguments, image=Image.fromarray(image), strength=settings.strength).images)


def inpaint_reference(settings: Settings, seed: int, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """inpaint: ``KandinskyV22InpaintCombinedPipeline``, mask white (1) where to repaint.

    Arrays go in as lists of one per picture: the combined pipeline repeats only PIL images.
    """
    combined = _combined(KandinskyV22InpaintCombinedPipeline, KandinskyV22InpaintPipeline, settings)
    count = settings.num_images
    return _pictures(
        combined(**combined_arguments(settings, seed), image=[image] * count, mask_image=[mask] * count).images
    )


def controlnet_reference(settings: Settings, seed: int, depth: np.ndarray) -> np.ndarray:
    """controlnet_depth: the prior, then ``KandinskyV22ControlnetPipeline`` with the same generator.

    The hint is built as in diffusers' example: the depth map over three channels, divided by 255.
    """
    prior = KandinskyV22PriorPipeline.from_pretrained(settings.prior_model_name)
    decoder = KandinskyV22ControlnetPipeline.from_pretrained(settings.model_name)
    generator = torch.Generator("cpu").manual_seed(seed)
    image_embeds, negative_image_embeds = prior(
        settings.prompt,
        negative_prompt=settings.negative_prompt or None,
        num_images_per_prompt=settings.num_images,
        num_inference_steps=settings.prior_num_inference_steps,
        guidance_scale=settings.prior_guidance_scale,
        generator=generator,
        return_dict=False,
    )
    rgb = np.repeat(depth[:, :, None], 3, axis=2) if depth.ndim == 2 else depth
    hint = torch.from_numpy(rgb).float().div(255).permute(2, 0, 1).unsqueeze(0).repeat(settings.num_images, 1, 1, 1)
    return _decode(decoder, settings, (image_embeds, negative_image_embeds), generator, hint=hint)


def mix_reference(settings: Settings, seed: int, images: list[np.ndarray]) -> np.ndarray:
    """mix: ``KandinskyV22PriorPipeline.interpolate`` over the images then the prompt, then the decoder."""
    prior = KandinskyV22PriorPipeline.from_pretrained(settings.prior_model_name)
    decoder = KandinskyV22Pipeline.from_pretrained(settings.model_name)
    generator = torch.Generator("cpu").manual_seed(seed)
    items = [Image.fromarray(image) for image in images] + ([settings.prompt] if settings.prompt else [])
    embeddings = prior.interpolate(
        items,
        list(settings.mix_weight_values()),
        num_images_per_prompt=settings.num_images,
        num_inference_steps=settings.prior_num_inference_steps,
        generator=generator,
        negative_prompt=settings.negative_prompt,
        guidance_scale=settings.prior_guidance_scale,
    )
    embeds = (embeddings.image_embeds, embeddings.negative_image_embeds)
    return _decode(decoder, settings, embeds, generator)


def _decode(decoder, settings: Settings, embeds: tuple, generator: torch.Generator, **extra) -> list[np.ndarray]:
    """A decoder pipeline's pictures from the prior's (image, negative) embeddings, as diffusers documents it."""
    images = decoder(
        image_embeds=embeds[0],
        negative_image_embeds=embeds[1],
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        generator=generator,
        output_type="pil",
        **extra,
    ).images
    return _pictures(images)


def max_difference(first: np.ndarray, second: np.ndarray) -> int:
    assert first.shape == second.shape
    return int(np.abs(first.astype(int) - second.astype(int)).max())
