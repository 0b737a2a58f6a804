"""The diffusers behaviours that the engine patches or works around, checked on diffusers itself.

Each test states what diffusers does in the releases CI runs (0.40.0 to 0.42.1) and fails when a release
changes it, naming the engine code to revisit: a patch that no longer takes effect, or a workaround that is
no longer needed.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KandinskyV22ControlnetImg2ImgPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorEmb2EmbPipeline,
    KandinskyV22PriorPipeline,
    UnCLIPScheduler,
    UniPCMultistepScheduler,
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


@pytest.mark.parametrize(
    ("pipeline_class", "decoder_class", "repo"),
    [
        (KandinskyV22Img2ImgPipeline, KandinskyV22Pipeline, "decoder"),
        (KandinskyV22ControlnetImg2ImgPipeline, KandinskyV22ControlnetPipeline, "controlnet_decoder"),
    ],
)
def test_diffusers_image_to_image_pipelines_resize_with_height_and_width_swapped(
    tiny_repos, pipeline_class, decoder_class, repo
):
    # modes.over_components replaces the resizer by one that does not resize, since it is called so.
    decoder = decoder_class.from_pretrained(getattr(tiny_repos, repo))
    pipeline = pipeline_class(**decoder.components)
    pipeline.set_progress_bar_config(disable=True)
    asked = []
    preprocess = pipeline.image_processor.preprocess

    def recording(image: object, height: int | None = None, width: int | None = None, **rest: object) -> object:
        asked.append((height, width))
        return preprocess(image, height, width, **rest)

    pipeline.image_processor.preprocess = recording
    embeds = torch.zeros(1, decoder.unet.config.encoder_hid_dim)
    picture = Image.fromarray(np.zeros((64, 128, 3), np.uint8))
    # A hint for the ControlNet pipeline, of the size its swapped resize gives the latents.
    hint = {"hint": torch.zeros(1, 3, 128, 64)} if repo == "controlnet_decoder" else {}
    pipeline(
        image=picture,
        image_embeds=embeds,
        negative_image_embeds=embeds,
        height=64,
        width=128,
        num_inference_steps=2,
        strength=1.0,
        **hint,
    )
    assert asked == [(128, 64)], f"{pipeline_class.__name__} resizes to the asked size now: the workaround can go"


def test_the_emb2emb_prior_asks_get_zero_embed_returns_nothing_at_no_step_and_takes_no_callback(tiny_repos):
    # modes.emb2emb_prior answers get_zero_embed with the run's image encoder, refuses a prior_strength that
    # leaves no step (modes._check_strengths), and counts steps from the prior transformer's forward passes.
    prior = KandinskyV22PriorEmb2EmbPipeline.from_pretrained(tiny_repos.prior, **{IMAGE_ENCODER: None})
    prior.set_progress_bar_config(disable=True)
    asked = []
    zero = torch.full((1, prior.prior.config.embedding_dim), 0.5)

    def get_zero_embed(batch_size: int = 1, device: object = None) -> torch.Tensor:
        asked.append(batch_size)
        return zero

    prior.get_zero_embed = get_zero_embed
    embedding = torch.ones(1, prior.prior.config.embedding_dim)
    output = prior("a red cat", image=embedding, strength=0.5, num_inference_steps=4, generator=torch.manual_seed(0))
    assert asked == [1], "diffusers' emb2emb prior no longer calls get_zero_embed: revisit modes.emb2emb_prior"
    assert output.negative_image_embeds is zero
    nothing = prior("a red cat", image=embedding, strength=0.2, num_inference_steps=4, generator=torch.manual_seed(0))
    assert nothing.image_embeds.shape[0] == 0, "emb2emb now handles a strength with no step: revisit the check"
    with pytest.raises(TypeError, match="callback"):
        prior("a red cat", image=embedding, num_inference_steps=4, callback_on_step_end=lambda *arguments: {})


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


def test_diffusers_kandinsky_pipelines_give_step_a_generator_and_never_scale_the_model_input(tiny_repos):
    # schedulers.sampling drops the generator for a step that takes none and scales the UNet's latent input
    # itself, since the pipelines do neither.
    decoder = KandinskyV22Pipeline.from_pretrained(tiny_repos.decoder)
    embeds = torch.zeros(1, decoder.unet.config.encoder_hid_dim)
    arguments = {"image_embeds": embeds, "negative_image_embeds": embeds, "height": 64, "width": 64}
    scheduler = UniPCMultistepScheduler.from_config(decoder.scheduler.config)
    unipc = KandinskyV22Pipeline(**{**decoder.components, "scheduler": scheduler})
    unipc.set_progress_bar_config(disable=True)
    with pytest.raises(TypeError, match="generator"):
        unipc(**arguments, num_inference_steps=2, output_type="latent")
    euler = EulerDiscreteScheduler.from_config(decoder.scheduler.config)
    pipeline = KandinskyV22Pipeline(**{**decoder.components, "scheduler": euler})
    pipeline.set_progress_bar_config(disable=True)
    pipeline(**arguments, num_inference_steps=2, output_type="latent")
    assert not euler.is_scale_input_called, "the pipelines scale the model input now: revisit schedulers.sampling"


def test_diffusers_img2img_cuts_a_second_order_schedule_by_timesteps_and_inpainting_noises_with_its_latents(
    tiny_repos,
):
    # schedulers.cut_by_order cuts at whole steps; schedulers.sampling brings the inpainting noise to unit variance.
    decoder = KandinskyV22Pipeline.from_pretrained(tiny_repos.decoder)
    heun = HeunDiscreteScheduler.from_config(decoder.scheduler.config)
    pipeline = KandinskyV22Img2ImgPipeline(**{**decoder.components, "scheduler": heun})
    heun.set_timesteps(10)
    timesteps, _ = pipeline.get_timesteps(10, 0.3, "cpu")
    assert len(timesteps) == len(heun.timesteps) - 7, "img2img now cuts by the scheduler's order: revisit"
    inpaint = KandinskyV22InpaintPipeline.from_pretrained(tiny_repos.inpaint_decoder)
    euler = EulerDiscreteScheduler.from_config(inpaint.scheduler.config)
    inpaint = KandinskyV22InpaintPipeline(**{**inpaint.components, "scheduler": euler})
    inpaint.set_progress_bar_config(disable=True)
    noises = []
    add_noise = euler.add_noise
    euler.add_noise = lambda original, noise, timesteps: (
        noises.append(float(noise.std())) or add_noise(original, noise, timesteps)
    )
    embeds = torch.zeros(1, decoder.unet.config.encoder_hid_dim)
    mask = np.zeros((64, 64), np.float32)
    mask[:, :32] = 1
    picture = np.zeros((64, 64, 3), np.uint8)
    inpaint(
        image=picture,
        mask_image=mask,
        image_embeds=embeds,
        negative_image_embeds=embeds,
        height=64,
        width=64,
        num_inference_steps=3,
        output_type="latent",
    )
    assert noises and min(noises) > 5, "the inpainting pipeline's noise has unit variance now: revisit"
