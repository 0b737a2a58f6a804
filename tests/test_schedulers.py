"""The decoder's samplers: drop-ins equal diffusers with the scheduler swapped in, the ODE solvers converge to
DDIM's result as their steps grow, the stochastic ones repeat with a seed and match DDPM's statistics, and every
one reports progress per UNet call and stops within one."""

import re
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KandinskyV22CombinedPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22InpaintCombinedPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from helpers import left_half_mask, max_difference, random_image
from infer_kandinsky_2_2.kandinsky22_devkit.reference import combine, combined_arguments
from infer_kandinsky_2_2.kandinsky22_engine.errors import GenerationStopped
from infer_kandinsky_2_2.kandinsky22_engine.generation import generate, progress_steps
from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs
from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache
from infer_kandinsky_2_2.kandinsky22_engine.parameters import MAX_STEPS, Settings
from infer_kandinsky_2_2.kandinsky22_engine.schedulers import (
    SAMPLERS,
    SCHEDULERS,
    make_scheduler,
    model_calls,
)
from infer_kandinsky_2_2.kandinsky22_engine.stages import DecoderModels, decode

# What each name means, as other tools use it (the diffusers documentation's table of A1111 and k-diffusion
# names): the class and its options; every one but DPM++ 2S (which has no such option) with trailing spacing.
MEANING = {
    "DDIM": (DDIMScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DPM++ 2M SDE": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 2S": (DPMSolverSinglestepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "DEIS": (DEISMultistepScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),
    "LMS": (LMSDiscreteScheduler, {}),
    "DPM2": (KDPM2DiscreteScheduler, {}),
}
# Those diffusers' Kandinsky pipelines run right as they are: their step takes the generator and their model
# input needs no scaling.
DROP_INS = ["DDIM", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2S"]
ODE_SOLVERS = ["DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2S", "UniPC", "DEIS", "Euler", "Heun", "LMS", "DPM2"]
STOCHASTIC = ["Euler a", "DPM++ 2M SDE"]


def scheduler_as_named(name: str, config: dict):
    scheduler_class, options = MEANING[name]
    spacing = {} if scheduler_class is DPMSolverSinglestepScheduler else {"timestep_spacing": "trailing"}
    return scheduler_class.from_config(config, **options, **spacing)


@pytest.fixture
def settings(tiny_strings) -> Settings:
    return Settings.from_strings({**tiny_strings, "guidance_scale": "2.0", "num_inference_steps": "6"})


def test_the_samplers_are_the_diffusers_schedulers_other_tools_name_so(tiny_repos):
    config = DDPMScheduler.from_pretrained(tiny_repos.decoder / "scheduler").config
    assert ("default", *MEANING) == SCHEDULERS
    for name, sampler in SAMPLERS.items():
        expected = scheduler_as_named(name, config)
        assert sampler.scheduler_class is type(expected)
        assert {key: expected.config[key] for key in sampler.options} == sampler.options
    assert {name for name, sampler in SAMPLERS.items() if sampler.stochastic} == set(STOCHASTIC)


@pytest.mark.parametrize("name", DROP_INS)
def test_a_drop_in_sampler_equals_diffusers_with_its_scheduler_swapped_in(settings, warm_cache, name):
    mine = generate(Settings(**{**settings.__dict__, "scheduler": name}), cache=warm_cache).images[0]
    prior = KandinskyV22PriorPipeline.from_pretrained(settings.prior_model_name, dtype=torch.float32)
    decoder = KandinskyV22Pipeline.from_pretrained(settings.model_name)
    decoder.scheduler = scheduler_as_named(name, decoder.scheduler.config)
    combined = combine(prior, decoder, KandinskyV22CombinedPipeline)
    reference = np.asarray(combined(**combined_arguments(settings)).images[0])
    assert max_difference(mine, reference) <= 1
    default = generate(settings, cache=warm_cache).images[0]
    assert max_difference(mine, default) > 1, "the sampler must change the picture"


@pytest.mark.parametrize("name", ["default", *SAMPLERS])
def test_every_sampler_reports_each_unet_call_and_stops_within_one(settings, warm_cache, name):
    chosen = Settings(**{**settings.__dict__, "scheduler": name})
    steps = []
    result = generate(chosen, cache=warm_cache, on_step=lambda: steps.append(1))
    assert len(steps) == progress_steps(chosen)
    # Second-order samplers call the UNet twice a step but the last.
    order = 2 if name in ("Heun", "DPM2") else 1
    assert len(steps) == 3 + order * 6 - (order - 1)
    assert all(np.isfinite(picture).all() for picture in result.images)
    calls, seen = len(steps) - 3, []
    with pytest.raises(GenerationStopped, match=re.escape(f"after step {calls - 1} of {calls} of the decoder.")):
        generate(chosen, cache=warm_cache, on_step=lambda: seen.append(1), should_stop=lambda: len(seen) == 2 + calls)


def test_changing_the_sampler_loads_nothing_again(settings):
    cache = ModelCache()
    generate(settings, cache=cache)
    loaded = dict(cache.load_counts)
    for name in ("DPM++ 2M", "Euler", "Heun", "default"):
        generate(Settings(**{**settings.__dict__, "scheduler": name}), cache=cache)
    assert cache.load_counts == loaded


def decoder_models(decoder, name: str, forward=None, config: dict | None = None) -> DecoderModels:
    """The decoder's loop over ``decoder``'s models with sampler ``name`` made from ``config`` (the repo's by
    default), on the CPU; ``forward`` is called in place of the UNet when given."""
    scheduler = make_scheduler(name, config or decoder.scheduler.config) or DDPMScheduler.from_config(
        config or decoder.scheduler.config
    )
    return DecoderModels(decoder.unet, decoder.movq, scheduler, "cpu", "cpu", forward or decoder.unet)


def fixed_arguments(steps: int, seed: int = 0) -> dict:
    """A decoder run's arguments from fixed embeddings, without guidance, at 64 x 64 pixels, as the engine's loop
    and diffusers' decoder pipelines both take them."""
    torch.manual_seed(0)
    embeds, negative = torch.randn(1, 32), torch.randn(1, 32)
    return {
        "image_embeds": embeds,
        "negative_image_embeds": negative,
        "height": 64,
        "width": 64,
        "num_inference_steps": steps,
        "guidance_scale": 1.0,
        "generator": torch.Generator("cpu").manual_seed(seed),
    }


class LatentsOut:
    """A MoVQ whose decode returns the latents it is given, as they are: the loop's final latents come out of
    ``stages.decode``; it encodes as the real one."""

    def __init__(self, movq: torch.nn.Module) -> None:
        self.config, self.encode = movq.config, movq.encode

    def decode(self, latents: torch.Tensor, force_not_quantize: bool) -> dict:
        return {"sample": latents}


def run_decoder_loop(models: DecoderModels, steps: int, seed: int = 0, **inputs: object) -> torch.Tensor:
    """The final latents of ``stages.decode`` (``fixed_arguments``)."""
    models = replace(models, movq=LatentsOut(models.movq))
    return decode(models, **fixed_arguments(steps, seed), callback=lambda index, total: None, **inputs)


def diffusers_latents(decoder, name: str, steps: int, **inputs: object) -> torch.Tensor:
    """The final latents of diffusers' own pipeline of ``decoder``'s class with sampler ``name`` swapped in
    (``fixed_arguments``)."""
    scheduler = scheduler_as_named(name, decoder.scheduler.config)
    pipeline = type(decoder)(**{**decoder.components, "scheduler": scheduler})
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(**fixed_arguments(steps), output_type="latent", **inputs).images


def recording(unet: torch.nn.Module, seen: list[dict]) -> Callable[..., object]:
    """A forward that notes the UNet's keyword arguments at every call, then calls it."""

    def forward(**keywords: object) -> object:
        seen.append(
            {name: value.clone() if isinstance(value, torch.Tensor) else value for name, value in keywords.items()}
        )
        return unet(**keywords)

    return forward


def test_only_the_latents_of_the_inpainting_unets_input_are_scaled(tiny_repos):
    decoder = KandinskyV22InpaintPipeline.from_pretrained(tiny_repos.inpaint_decoder)
    decoder.set_progress_bar_config(disable=True)
    image, mask = random_image(1, (64, 64, 3)), left_half_mask(np.float32, 1.0, (64, 64))
    mine: list[dict] = []
    models = decoder_models(decoder, "Euler", recording(decoder.unet, mine))
    run_decoder_loop(models, 2, image=image, mask=mask)
    # diffusers' inpainting pipeline with Euler swapped in, which never scales the UNet's input.
    theirs: list[torch.Tensor] = []
    hook = decoder.unet.register_forward_pre_hook(
        lambda unet, arguments, keywords: theirs.append(keywords["sample"].clone()), with_kwargs=True
    )
    diffusers_latents(decoder, "Euler", 2, image=[image], mask_image=[mask])
    hook.remove()
    sigma = float(models.scheduler.sigmas[0])
    # The UNet's input: 4 channels of latents, then the masked image's 4 and the mask's 1.
    scaled, unscaled = mine[0]["sample"], theirs[0]
    assert torch.allclose(scaled[:, :4], unscaled[:, :4] / (sigma**2 + 1) ** 0.5)
    assert torch.equal(scaled[:, 4:], unscaled[:, 4:])


@pytest.fixture(scope="module")
def unclipped_decoder(tiny_repos) -> KandinskyV22Pipeline:
    """The tiny decoder with its scheduler's clipping of the predicted sample off: DDIM honours the repo's
    clip_sample, the DPM family has no such step, and clipping is no part of the probability-flow ODE they
    all solve (the tiny random UNet's latents reach about 70, far past the clipping range)."""
    decoder = KandinskyV22Pipeline.from_pretrained(tiny_repos.decoder)
    decoder.scheduler = DDPMScheduler.from_config(decoder.scheduler.config, clip_sample=False)
    decoder.set_progress_bar_config(disable=True)
    return decoder


def final_latents(decoder: KandinskyV22Pipeline, name: str, steps: int, seed: int = 0) -> torch.Tensor:
    """The text2img decoder's latents after ``steps`` steps of sampler ``name``, in the engine's loop."""
    return run_decoder_loop(decoder_models(decoder, name), steps, seed)


@pytest.mark.slow
def test_the_ode_solvers_converge_to_ddims_result_and_diffusers_unscaled_euler_does_not(unclipped_decoder):
    few, many = 50, 200
    ddim = {steps: final_latents(unclipped_decoder, "DDIM", steps) for steps in (few, many)}
    scale = float(ddim[many].abs().max())
    for name in ODE_SOLVERS:
        distance = {
            steps: float((final_latents(unclipped_decoder, name, steps) - ddim[steps]).abs().max())
            for steps in (few, many)
        }
        # At 200 steps within 1.5% of the latents' largest magnitude, and closer than at 50 steps.
        assert distance[many] < 0.015 * scale, name
        assert distance[many] < 0.8 * distance[few], name
    # diffusers' own pipeline with Euler swapped in: its UNet input is never scaled.
    unscaled = diffusers_latents(unclipped_decoder, "Euler", many)
    assert float((unscaled - ddim[many]).abs().max()) > 0.1 * scale


@pytest.mark.slow
@pytest.mark.parametrize("name", STOCHASTIC)
def test_a_stochastic_sampler_repeats_with_its_seed_and_matches_ddpms_statistics(unclipped_decoder, name):
    assert torch.equal(
        final_latents(unclipped_decoder, name, 50, seed=1), final_latents(unclipped_decoder, name, 50, seed=1)
    )
    mine = torch.stack([final_latents(unclipped_decoder, name, 50, seed=seed) for seed in range(6)])
    ddpm = torch.stack([final_latents(unclipped_decoder, "default", 50, seed=seed) for seed in range(6)])
    assert torch.isfinite(mine).all()
    assert not torch.equal(mine[0], mine[1])
    assert abs(float(mine.mean() - ddpm.mean())) < 0.1 * float(ddpm.std())
    assert abs(float(mine.std() / ddpm.std()) - 1) < 0.25


# The decoders of the modes whose loop does not start from pure noise at every step: image-to-image (from the
# input, noised to strength 0.5), ControlNet image-to-image, and inpainting (the kept area noised again at every
# step), with what each loop reads besides the embeddings.
DECODER_KINDS = {
    "img2img": ("decoder", KandinskyV22Pipeline, {"image": random_image(1, (64, 64, 3)), "strength": 0.5}),
    "controlnet_img2img": (
        "controlnet_decoder",
        KandinskyV22ControlnetPipeline,
        {
            "image": random_image(1, (64, 64, 3)),
            "strength": 0.5,
            "hint": torch.from_numpy(random_image(4, (1, 3, 64, 64))).float() / 255,
        },
    ),
    "inpaint": (
        "inpaint_decoder",
        KandinskyV22InpaintPipeline,
        {"image": random_image(1, (64, 64, 3)), "mask": left_half_mask(np.float32, 1.0, (64, 64))},
    ),
}


def point_mass_forward(config: dict, point: torch.Tensor) -> Callable[..., tuple[torch.Tensor]]:
    """A UNet forward that predicts the noise exactly for data that is all at ``point`` (1, 4, 8, 8): for a
    sample x_t at the training schedule's noise level of timestep t (fractional timesteps read between two
    levels, as the schedulers interpolate them), (x_t - sqrt(alpha_bar_t) point) / sqrt(1 - alpha_bar_t), then 4
    channels of variance. The probability-flow ODE of this model carries any sample to ``point`` by sigma 0."""
    alphas_cumprod = DDPMScheduler.from_config(config).alphas_cumprod.double()
    log_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().log()

    def forward(sample: torch.Tensor, timestep: torch.Tensor, **conditions: object) -> tuple[torch.Tensor]:
        t = torch.as_tensor(timestep, dtype=torch.float64)
        low = t.floor().long().clamp(0, len(log_sigmas) - 2)
        sigma = torch.lerp(log_sigmas[low], log_sigmas[low + 1], t - low).exp()
        alpha_bar = 1 / (1 + sigma**2)
        noise = (sample[:, :4].double() - alpha_bar.sqrt() * point) / (1 - alpha_bar).sqrt()
        return (torch.cat([noise, torch.zeros_like(noise)], dim=1).float(),)

    return forward


# DEIS is left out: diffusers' DEISMultistepScheduler ends at the noise level of timestep 0 (its last sigma is
# sigma(t=0), about 0.03, not 0), short of the point by design; the convergence test below covers it.
@pytest.mark.parametrize("kind", list(DECODER_KINDS))
@pytest.mark.parametrize("name", [name for name in ODE_SOLVERS if name != "DEIS"] + ["DDIM"])
def test_every_ode_solver_lands_where_its_ode_leads_in_image_to_image_and_inpainting(tiny_repos, kind, name):
    # LMS is the one this guards in image-to-image: diffusers' LMSDiscreteScheduler.step takes its order from its
    # step index, which counts the skipped steps (schedulers.step_options).
    role, pipeline_class, inputs = DECODER_KINDS[kind]
    decoder = pipeline_class.from_pretrained(getattr(tiny_repos, role))
    # Clipping off, and DDIM's last step to alpha_bar 1: the ODE to sigma 0.
    config = {**decoder.scheduler.config, "clip_sample": False, "set_alpha_to_one": True}
    point = torch.linspace(-0.9, 0.9, 4 * 8 * 8, dtype=torch.float64).reshape(1, 4, 8, 8)
    models = decoder_models(decoder, name, point_mass_forward(config, point), config)
    latents = run_decoder_loop(models, 30, **inputs)
    repainted = latents[..., :4] if kind == "inpaint" else latents
    assert float((repainted.double() - point[..., : repainted.shape[-1]]).abs().max()) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(DECODER_KINDS))
def test_the_ode_solvers_converge_in_image_to_image_and_inpainting(tiny_repos, kind):
    role, pipeline_class, inputs = DECODER_KINDS[kind]
    decoder = pipeline_class.from_pretrained(getattr(tiny_repos, role))
    config = {**decoder.scheduler.config, "clip_sample": False}
    # The converged result: DPM++ 2M at 1000 steps, which Euler at 1000 steps agrees with to 0.1%. At strength
    # 0.5, 30 and 1000 steps start at the same noise level (timestep 499), from the same noise.
    converged = run_decoder_loop(decoder_models(decoder, "DPM++ 2M", config=config), 1000, **inputs)
    area = (..., slice(0, 4)) if kind == "inpaint" else (...,)
    scale = float(converged[area].abs().max())
    for name in ODE_SOLVERS:
        if name == "DPM++ 2M Karras":
            # Karras' noise levels cut at half the steps start elsewhere than half the trailing schedule.
            continue
        latents = run_decoder_loop(decoder_models(decoder, name, config=config), 30, **inputs)
        assert float((latents - converged)[area].abs().max()) < 0.04 * scale, name


def first_unet_timesteps(decoder: KandinskyV22Pipeline, name: str, strength: float) -> list[float]:
    """The timesteps the UNet sees in an img2img run of sampler ``name`` at ``strength``, 10 steps."""
    seen: list[dict] = []
    models = decoder_models(decoder, name, recording(decoder.unet, seen))
    run_decoder_loop(models, 10, image=random_image(1, (64, 64, 3)), strength=strength)
    return [float(keywords["timestep"]) for keywords in seen]


@pytest.mark.parametrize("name", ["Heun", "DPM2"])
@pytest.mark.parametrize("strength", [0.1, 0.3, 0.5])
def test_a_second_order_sampler_starts_image_to_image_where_the_strength_says(tiny_repos, name, strength):
    decoder = KandinskyV22Pipeline.from_pretrained(tiny_repos.decoder)
    decoder.set_progress_bar_config(disable=True)
    first_order = first_unet_timesteps(decoder, "Euler", strength)
    second_order = first_unet_timesteps(decoder, name, strength)
    # The same first noise level as a first-order sampler on the same schedule, and two passes a step but the last.
    assert second_order[0] == first_order[0]
    assert len(second_order) == 2 * len(first_order) - 1 == model_calls(name, 10, strength)


@pytest.mark.slow
def test_in_inpainting_the_samplers_that_need_scaling_agree_with_one_that_does_not(tiny_strings, tiny_repos):
    """The inpainting decoder's repo does not clip: its ODE solvers agree, Euler, Heun and LMS included, once
    the noise the pipeline adds to the kept area at every step is of unit variance for them too."""
    parameters = {**tiny_strings, "mode": "inpaint", "model_name": str(tiny_repos.inpaint_decoder), "width": "64"}
    inputs = Inputs(image=random_image(1, (64, 64, 3)), mask=left_half_mask(shape=(64, 64)))
    cache = ModelCache()
    pictures = {
        name: generate(
            Settings.from_strings({**parameters, "scheduler": name, "num_inference_steps": "150"}), inputs, cache=cache
        ).images[0]
        for name in ("DPM++ 2M", "Euler", "Heun", "LMS")
    }
    for name in ("Euler", "Heun", "LMS"):
        mean = np.abs(pictures[name].astype(int) - pictures["DPM++ 2M"].astype(int)).mean()
        assert mean < 6, name


def test_each_run_gets_its_own_copy_of_a_sampler_built_once(tiny_repos):
    config = DDPMScheduler.from_pretrained(tiny_repos.decoder / "scheduler").config
    first, second = make_scheduler("DPM2", config), make_scheduler("DPM2", config)
    assert first is not second and first.sigmas is not second.sigmas
    first.set_timesteps(5)
    assert len(second.timesteps) != len(first.timesteps), "a run's schedule must not reach another's"


@pytest.mark.parametrize("name", ["DPM++ 2M", "DPM++ 2S", "DDIM"])
def test_a_drop_in_sampler_inpaints_as_diffusers_does_with_its_scheduler_swapped_in(tiny_strings, tiny_repos, name):
    # The engine tells the scheduler that inpainting starts at the first step, so that its per-step add_noise
    # takes the step index it counts (stages.decode); diffusers searches the timesteps for it instead.
    parameters = {**tiny_strings, "mode": "inpaint", "model_name": str(tiny_repos.inpaint_decoder)}
    settings = Settings.from_strings({**parameters, "guidance_scale": "2.0", "scheduler": name})
    image, mask = random_image(2), left_half_mask()
    mine = generate(settings, Inputs(image=image, mask=mask), cache=ModelCache()).images[0]
    prior = KandinskyV22PriorPipeline.from_pretrained(settings.prior_model_name, dtype=torch.float32)
    decoder = KandinskyV22InpaintPipeline.from_pretrained(settings.model_name)
    decoder.scheduler = scheduler_as_named(name, decoder.scheduler.config)
    combined = combine(prior, decoder, KandinskyV22InpaintCombinedPipeline)
    labels = (mask > 0).astype(np.float32)
    reference = combined(**combined_arguments(settings), image=[image], mask_image=[labels]).images[0]
    assert max_difference(mine, np.asarray(reference)) <= 1


def zero_noise(sample: torch.Tensor, **conditions: object) -> tuple[torch.Tensor]:
    """A UNet forward that predicts no noise (and no variance): cheap, for schedules of many steps."""
    return (torch.zeros(sample.shape[0], 8, *sample.shape[2:]),)


@pytest.fixture(scope="module")
def tiny_decoder(tiny_repos) -> KandinskyV22Pipeline:
    """The tiny decoder as its repo gives it, loaded once for the tests that only read it (each makes its own
    scheduler from the repo's config)."""
    return KandinskyV22Pipeline.from_pretrained(tiny_repos.decoder)


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        *[(name, 1) for name in SCHEDULERS],
        # The quick loop runs the top of the range with the sampler that failed there; the rest take seconds each.
        ("default", MAX_STEPS),
        *[pytest.param(name, MAX_STEPS, marks=pytest.mark.slow) for name in SCHEDULERS if name != "default"],
    ],
)
@pytest.mark.parametrize("start", ["noise", "image"])
def test_every_sampler_runs_at_both_ends_of_the_step_range(tiny_decoder, name, steps, start):
    # The default DDPM's leading schedule with steps_offset 1 reached timestep 1000 at 1000 steps, past the last
    # trained one, and diffusers failed at its first step (schedulers.set_schedule).
    decoder = tiny_decoder
    calls = []
    models = replace(decoder_models(decoder, name, zero_noise), movq=LatentsOut(decoder.movq))
    inputs = {"image": random_image(1, (64, 64, 3)), "strength": 1.0} if start == "image" else {}
    latents = decode(models, **fixed_arguments(steps), callback=lambda index, total: calls.append(total), **inputs)
    assert torch.isfinite(latents).all()
    assert len(calls) == model_calls(name, steps) and int(models.scheduler.timesteps.max()) < 1000


def test_a_run_at_the_bottom_of_both_step_ranges_gives_its_pictures(tiny_strings, warm_cache):
    settings = Settings.from_strings({**tiny_strings, "prior_num_inference_steps": "2", "num_inference_steps": "1"})
    steps = []
    result = generate(settings, cache=warm_cache, on_step=lambda: steps.append(1))
    assert len(steps) == 3 and np.isfinite(result.images[0]).all()


@pytest.mark.slow
def test_a_run_at_the_top_of_both_step_ranges_gives_its_pictures(tiny_strings, warm_cache):
    settings = Settings.from_strings(
        {**tiny_strings, "prior_num_inference_steps": str(MAX_STEPS), "num_inference_steps": str(MAX_STEPS)}
    )
    steps = []
    result = generate(settings, cache=warm_cache, on_step=lambda: steps.append(1))
    assert len(steps) == 2 * MAX_STEPS and np.isfinite(result.images[0]).all()
