"""The diffusers behaviours that the engine's loops depart from, checked on diffusers itself.

Each test states what diffusers does in the releases CI runs (0.40.0 to 0.42.1) and fails when a release
changes it, naming the engine code to revisit: a departure that is no longer needed.
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
    LMSDiscreteScheduler,
    UnCLIPScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

from infer_kandinsky_2_2.kandinsky22_engine.parameters import PARAMETERS


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
    # stages.img2img_pixels does not resize the input (it has the output size already), since this resize is
    # called so.
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


def test_the_emb2emb_prior_returns_nothing_at_a_strength_that_leaves_no_step(tiny_repos):
    # The parameters' check refuses a prior_strength that leaves no step (parameters._strengths_leave_a_step).
    prior = KandinskyV22PriorEmb2EmbPipeline.from_pretrained(tiny_repos.prior)
    prior.set_progress_bar_config(disable=True)
    embedding = torch.ones(1, prior.prior.config.embedding_dim)
    nothing = prior("a red cat", image=embedding, strength=0.2, num_inference_steps=4, generator=torch.manual_seed(0))
    assert nothing.image_embeds.shape[0] == 0, "emb2emb now handles a strength with no step: revisit the check"


def test_diffusers_decoders_leave_the_embeddings_uncast_without_guidance(tiny_repos):
    # stages.decode casts the embeddings to the UNet's dtype itself, since with guidance at 1 diffusers passes
    # them as they come: float32 embeddings then meet a float16 UNet.
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
    # schedulers.step_options passes the generator only to a step that takes one, and stages.decode scales the
    # UNet's latent input, since the pipelines do neither.
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
    assert not euler.is_scale_input_called, "the pipelines scale the model input now: revisit stages.decode"


def test_diffusers_img2img_cuts_a_second_order_schedule_by_timesteps_and_inpainting_noises_with_its_latents(
    tiny_repos,
):
    # schedulers.first_step cuts at whole steps; stages.decode brings the inpainting noise to unit variance.
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


def test_lms_takes_its_order_from_its_step_index_which_counts_the_steps_image_to_image_skips(tiny_repos):
    # schedulers.step_options gives LMS the order of the steps a run has taken.
    config = KandinskyV22Pipeline.from_pretrained(tiny_repos.decoder).scheduler.config
    sample, derivative = torch.ones(1, 4, 8, 8), torch.full((1, 4, 8, 8), 0.5)
    steps = {}
    for order in (4, 1):
        lms = LMSDiscreteScheduler.from_config(config)
        lms.set_timesteps(10)
        # Half the schedule skipped, as image-to-image at strength 0.5 starts.
        lms.set_begin_index(5)
        model_output = (sample - (sample - derivative * lms.sigmas[5])) / lms.sigmas[5]
        steps[order] = lms.step(model_output, lms.timesteps[5], sample, order=order).prev_sample
        euler = sample + (lms.sigmas[6] - lms.sigmas[5]) * model_output
    # With the one derivative it has, its first step is Euler's only at order 1.
    assert torch.allclose(steps[1], euler)
    assert not torch.allclose(steps[4], euler), "LMS counts its order from its first step now: revisit step_options"
