"""The decoder's samplers: every diffusers scheduler that can be made right for the Kandinsky 2.2 decoder.

The decoder was trained as a DDPM on epsilon prediction, and its repos ship a ``DDPMScheduler`` config,
which the task runs by default (``DEFAULT_SCHEDULER``: today's pictures). ``SAMPLERS`` names the others as
other tools name them, each a diffusers scheduler made ``from_config`` of the repo's own config (so the
training noise schedule and the repo's clipping are kept) with the options that make it that sampler and
"trailing" timestep spacing. Trailing spacing starts every schedule at the last training timestep (t = 999),
where the model saw pure noise during training, which is what the Kandinsky pipelines start from; with each
scheduler's own default spacing they start at different noise levels (DDIM's "leading" at t = 981 for 50
steps), and their results do not approach each other as the steps grow (Lin et al., "Common Diffusion Noise
Schedules and Sample Steps are Flawed", 2024, section 3.3).

diffusers' Kandinsky 2.2 pipelines were written for DDPM-like schedulers: they pass ``generator=`` to every
``step`` and never call ``scale_model_input`` (diffusers 0.40.0 to 0.42.1, tests/test_upstream.py). Workaround:
``sampling`` adapts any scheduler to them in one place: it
drops the generator for the schedulers whose ``step`` takes none (they are deterministic), and scales the
UNet's latent input as ``scale_model_input`` says for the schedulers that work on unscaled noisy samples
(Euler, Heun, LMS, KDPM2: the input is divided by sqrt(sigma^2 + 1)), which is what diffusers' other pipelines do
before every UNet call. The prior keeps its own ``UnCLIPScheduler``.
"""

import copy
import functools
import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KandinskyV22InpaintPipeline,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

DEFAULT_SCHEDULER = "default"
TIMESTEP_SPACING = "trailing"


@dataclass(frozen=True)
class Sampler:
    """A sampler as other tools name it: the diffusers scheduler class, the options that make it this sampler,
    and what it is for (the help the widget and the README show; the step counts there are those other tools
    and diffusers' documentation use, not measured here)."""

    name: str
    scheduler_class: type[SchedulerMixin]
    help: str
    options: dict = field(default_factory=dict)
    # Draws fresh noise at every step: the same seed gives the same picture, other seeds other pictures, and
    # more steps do not converge to one result.
    stochastic: bool = False
    # Its timesteps may be kept on the host (``keep_timesteps_on_host``) without changing a value: its
    # ``set_timesteps`` computes nothing on the device it is given, only copies there.
    host_timesteps: bool = True


SAMPLERS: dict[str, Sampler] = {
    sampler.name: sampler
    for sampler in (
        Sampler("DDIM", DDIMScheduler, "deterministic first-order ODE solver (eta 0); usually run at 50 steps"),
        Sampler(
            "DPM++ 2M",
            DPMSolverMultistepScheduler,
            "deterministic second-order multistep ODE solver; usually run at 20 to 30 steps",
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        Sampler(
            "DPM++ 2M Karras",
            DPMSolverMultistepScheduler,
            "DPM++ 2M with Karras' noise levels, denser near the end; usually run at 20 to 30 steps",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ),
        Sampler(
            "DPM++ 2M SDE",
            DPMSolverMultistepScheduler,
            "stochastic DPM++ 2M: fresh noise at every step; usually run at 20 to 30 steps or more",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            stochastic=True,
        ),
        Sampler(
            "DPM++ 2S",
            DPMSolverSinglestepScheduler,
            "deterministic second-order single-step ODE solver; usually run at 20 to 30 steps",
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        Sampler(
            "UniPC",
            UniPCMultistepScheduler,
            "deterministic predictor-corrector ODE solver; usually run at 10 to 30 steps",
        ),
        Sampler(
            "DEIS",
            DEISMultistepScheduler,
            "deterministic exponential-integrator ODE solver; usually run at 10 to 30 steps",
        ),
        Sampler(
            "Euler",
            EulerDiscreteScheduler,
            "deterministic first-order ODE solver; usually run at 30 steps or more",
        ),
        Sampler(
            "Euler a",
            EulerAncestralDiscreteScheduler,
            "stochastic Euler: fresh noise at every step; usually run at 30 steps or more",
            stochastic=True,
        ),
        Sampler(
            "Heun",
            HeunDiscreteScheduler,
            "deterministic second-order ODE solver: two UNet passes a step, so a step costs twice as much",
        ),
        Sampler(
            "LMS",
            LMSDiscreteScheduler,
            "deterministic linear multistep ODE solver; usually run at 30 steps or more",
        ),
        # KDPM2's set_timesteps computes its interpolated noise levels (log, lerp, exp) on the device it is
        # given, whose last bits may differ from the CPU's: its timesteps stay where the pipeline puts them.
        Sampler(
            "DPM2",
            KDPM2DiscreteScheduler,
            "deterministic second-order ODE solver (KDPM2): two UNet passes a step",
            host_timesteps=False,
        ),
    )
}
SCHEDULERS = (DEFAULT_SCHEDULER, *SAMPLERS)
# Each sampler as first built for a config (``make_scheduler``), never run: runs get copies.
_BUILT: dict[tuple[str, str], SchedulerMixin] = {}


def make_scheduler(name: str, config: dict) -> SchedulerMixin | None:
    """A fresh scheduler of sampler ``name`` made from a decoder repo's scheduler ``config``, or None for
    ``DEFAULT_SCHEDULER`` (the decoder keeps its own).

    The repo's values are kept (training betas, clipping, prediction type); the sampler's options and trailing
    timestep spacing (for the schedulers that have the option) replace theirs. Each sampler is built once per
    config and copied for every run: some constructors take a noticeable time (KDPM2's about 0.4 s on a CPU
    core), a copy a millisecond.
    """
    if name == DEFAULT_SCHEDULER:
        return None
    key = (name, json.dumps(dict(config), sort_keys=True, default=str))
    if key not in _BUILT:
        sampler = SAMPLERS[name]
        options = dict(sampler.options)
        if "timestep_spacing" in inspect.signature(sampler.scheduler_class.__init__).parameters:
            options["timestep_spacing"] = TIMESTEP_SPACING
        _BUILT[key] = sampler.scheduler_class.from_config(config, **options)
    return copy.deepcopy(_BUILT[key])


@functools.cache
def model_calls(name: str, steps: int, skipped: int = 0) -> int:
    """How many times the decoder calls its UNet, and so its step callback, for ``steps`` steps of sampler
    ``name``, the first ``skipped`` of them left out (image-to-image strength): second-order samplers (Heun,
    DPM2) evaluate the UNet twice a step but the last, and their schedule is cut at ``skipped`` whole steps
    (``cut_by_order``). The count depends on the scheduler's kind only, so its default config serves."""
    if name == DEFAULT_SCHEDULER:
        return steps - skipped
    scheduler = make_scheduler(name, SAMPLERS[name].scheduler_class().config)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps[skipped * scheduler.order :])


def keep_timesteps_on_host(scheduler: SchedulerMixin) -> None:
    """Make ``scheduler`` keep its timesteps in CPU memory, whatever device a pipeline gives ``set_timesteps``.

    diffusers' Kandinsky 2.2 pipelines put the timesteps on the device (``set_timesteps(steps, device=device)``),
    and every step then reads the current one on the host: ``DDPMScheduler.previous_timestep`` (``nonzero``),
    ``alphas_cumprod[t]`` and ``t > 0`` in ``DDPMScheduler`` and ``UnCLIPScheduler``, the inpainting pipeline's
    ``torch.tensor([timestep])``, the other samplers' search for their step index (diffusers 0.40.0 to 0.42.1,
    tests/test_host_syncs.py). On CUDA each of these waits for the GPU to finish all queued work, several times a
    step. With the timesteps in CPU memory they read CPU memory; the UNet and the prior transformer copy the
    timestep to their device themselves, and ``add_noise`` moves its timesteps to the samples'. The schedule's
    values are the same: the schedulers this is used on compute their schedules on the host and only copy them
    to the device (``Sampler.host_timesteps``), so no picture changes.

    Raises ``TypeError`` at the first ``set_timesteps`` call that passes the device by position.
    """
    scheduler.set_timesteps = functools.partial(_on_host, scheduler.set_timesteps)


def _on_host(set_timesteps: Callable[..., None], *arguments: object, **keywords: object) -> None:
    keywords["device"] = "cpu"
    set_timesteps(*arguments, **keywords)


def cut_by_order(pipeline: DiffusionPipeline) -> None:
    """Make an image-to-image ``pipeline`` cut its schedule at whole steps of a second-order scheduler.

    Workaround (diffusers 0.40.0 to 0.42.1, tests/test_upstream.py): the Kandinsky 2.2 image-to-image pipelines'
    ``get_timesteps`` cuts the schedule at ``num_inference_steps - int(num_inference_steps x strength)``
    timesteps, whatever the scheduler's order; a second-order scheduler (Heun, DPM2) has two timesteps a step,
    so it then runs from a noise level the strength does not ask for, or starts inside a step and fails. Here,
    as in diffusers' other image-to-image pipelines, the cut is at that many whole steps and the scheduler
    starts there (``set_begin_index``). First-order schedulers keep diffusers' own method.
    """
    scheduler = pipeline.scheduler
    if scheduler.order == 1:
        return

    def get_timesteps(steps: int, strength: float, device: object) -> tuple[torch.Tensor, int]:
        start = steps - min(int(steps * strength), steps)
        scheduler.set_begin_index(start * scheduler.order)
        return scheduler.timesteps[start * scheduler.order :], steps - start

    pipeline.get_timesteps = get_timesteps


@contextmanager
def sampling(decoder: DiffusionPipeline, name: str) -> Iterator[DiffusionPipeline]:
    """A pipeline of ``decoder``'s class over its components with sampler ``name`` in place of its scheduler,
    adapted to diffusers' Kandinsky pipelines for the block; ``decoder`` itself as it is for the default.

    The adaptation, removed after the block: the UNet's latent channels are scaled by ``scale_model_input``
    before every call (the inpainting UNet's extra channels, the masked image's latents and the mask, are
    not), a ``step`` that takes no generator is called without it, and the timesteps stay on the host
    (``keep_timesteps_on_host``) where that changes no value.
    """
    scheduler = make_scheduler(name, decoder.scheduler.config)
    if scheduler is None:
        yield decoder
        return
    if SAMPLERS[name].host_timesteps:
        keep_timesteps_on_host(scheduler)
    if "generator" not in inspect.signature(scheduler.step).parameters:
        scheduler.step = functools.partial(_without_generator, scheduler.step)
    if isinstance(decoder, KandinskyV22InpaintPipeline):
        # Workaround (diffusers 0.40.0 to 0.42.1, tests/test_upstream.py): the inpainting pipeline noises the
        # kept area at every step with its starting latents, which it made as noise times init_noise_sigma: a
        # scheduler whose init_noise_sigma is not 1 (Euler, Heun, LMS, DPM2: about 25) would add that many times
        # too much noise there. The noise is brought back to unit variance first.
        scheduler.add_noise = functools.partial(_unit_noise, scheduler, scheduler.add_noise)
        if hasattr(scheduler, "set_begin_index"):
            # The inpainting pipeline always starts at the schedule's first step, and after each step noises the
            # kept area to the next step's level with ``add_noise``. Told where it starts, as diffusers' other
            # pipelines tell it, a sigma-based scheduler takes that level from the step index it counts on the
            # host, the same index its search of the timesteps finds, rather than searching them on the device
            # at every step (``keep_timesteps_on_host``).
            scheduler.set_timesteps = functools.partial(_from_first_step, scheduler, scheduler.set_timesteps)
    pipeline = type(decoder)(**{**decoder.components, "scheduler": scheduler})
    pipeline.set_progress_bar_config(disable=True)
    latent_channels = decoder.movq.config.latent_channels

    def scale_latents(unet: torch.nn.Module, arguments: tuple, keywords: dict) -> tuple[tuple, dict]:
        sample, timestep = keywords["sample"], keywords["timestep"]
        latents = scheduler.scale_model_input(sample[:, :latent_channels], timestep)
        keywords["sample"] = torch.cat([latents, sample[:, latent_channels:]], dim=1)
        return arguments, keywords

    handle = decoder.unet.register_forward_pre_hook(scale_latents, with_kwargs=True)
    try:
        yield pipeline
    finally:
        handle.remove()


def _from_first_step(
    scheduler: SchedulerMixin, set_timesteps: Callable[..., None], *arguments: object, **keywords: object
) -> None:
    set_timesteps(*arguments, **keywords)
    scheduler.set_begin_index(0)


def _unit_noise(
    scheduler: SchedulerMixin, add_noise: object, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    return add_noise(original, noise / scheduler.init_noise_sigma, timesteps)


def _without_generator(step: object, *arguments: object, generator: object = None, **keywords: object) -> object:
    # Schedulers whose step takes no generator draw no noise: dropping it changes nothing.
    return step(*arguments, **keywords)
