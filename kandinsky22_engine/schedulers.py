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

The decoder's loop (``stages.decode``) calls every scheduler as diffusers' other pipelines call theirs:
``scale_model_input`` before each UNet call, ``step`` with the keywords it takes (``step_options``), and a
schedule cut at whole steps for image-to-image (``first_step``). The prior keeps its own ``UnCLIPScheduler``.
"""

import copy
import functools
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
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
    and what it is for (the help the widget and docs/samplers.md show; the step counts there are those other tools
    and diffusers' documentation use, not measured here)."""

    name: str
    scheduler_class: type[SchedulerMixin]
    help: str
    options: dict = field(default_factory=dict)
    # Draws fresh noise at every step: the same seed gives the same picture, other seeds other pictures, and
    # more steps do not converge to one result.
    stochastic: bool = False
    # Its timesteps may be kept on the host (``timesteps_on_host``) without changing a value: its
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


def scheduler_for(name: str, own: SchedulerMixin) -> SchedulerMixin:
    """The scheduler a run of sampler ``name`` steps with: a fresh one made from ``own``'s config
    (``make_scheduler``), or ``own`` itself, the decoder repo's DDPM, for ``DEFAULT_SCHEDULER`` (it keeps no state
    between runs: ``set_timesteps`` starts each anew)."""
    return make_scheduler(name, own.config) or own


def timesteps_on_host(name: str) -> bool:
    """Whether a run of sampler ``name`` keeps its schedule in CPU memory (``Sampler.host_timesteps``; the default
    DDPM computes its schedule on the host).

    diffusers' Kandinsky 2.2 pipelines put the timesteps on the device, and every step then reads the current one
    on the host: ``DDPMScheduler.previous_timestep`` (``nonzero``), ``alphas_cumprod[t]`` and ``t > 0`` in
    ``DDPMScheduler`` and ``UnCLIPScheduler``, the other samplers' search for their step index (diffusers 0.40.0 to
    0.42.1, tests/test_host_syncs.py). On CUDA each such read waits for the GPU to finish all queued work. Kept in
    CPU memory, the schedule is read there; the UNet and the prior transformer copy the timestep to their device
    themselves, and ``add_noise`` moves its timesteps to the samples'.
    """
    return name == DEFAULT_SCHEDULER or SAMPLERS[name].host_timesteps


def set_schedule(scheduler: SchedulerMixin, steps: int, device: str) -> None:
    """Set ``scheduler``'s schedule of ``steps`` steps on ``device``, shifted down where it would reach past the
    last trained timestep.

    The Kandinsky 2.2 decoders' DDPM config has "leading" spacing with ``steps_offset`` 1, so at 1000 steps its
    schedule is timesteps 1000 to 1, and its first step fails in diffusers (``IndexError: index 1000 is out of
    bounds``, 0.40.0 to 0.42.1, tests/test_schedulers.py): that schedule is every trained timestep, 999 to 0.
    """
    scheduler.set_timesteps(steps, device=device)
    last = scheduler.config.num_train_timesteps - 1
    overshoot = int(scheduler.timesteps.max()) - last
    if overshoot > 0:
        scheduler.set_timesteps(timesteps=(scheduler.timesteps - overshoot).tolist(), device=device)


def steps_at(steps: int, strength: float) -> int:
    """The denoising steps of a schedule of ``steps`` that an image-to-image run at ``strength`` makes: the last
    int(steps x strength), as diffusers' image-to-image pipelines count them (``get_timesteps``)."""
    return min(int(steps * strength), steps)


def first_step(scheduler: SchedulerMixin, steps: int, strength: float) -> int:
    """The index in ``scheduler.timesteps`` at which an image-to-image run of ``steps`` at ``strength`` starts:
    ``steps - steps_at(steps, strength)`` whole steps in.

    Departure from diffusers (0.40.0 to 0.42.1, tests/test_upstream.py): the Kandinsky 2.2 image-to-image
    pipelines cut the schedule at that many timesteps whatever the scheduler's order; a second-order scheduler
    (Heun, DPM2) has two timesteps a step, so it would start from a noise level the strength does not ask for, or
    inside a step. Here the cut is at whole steps, as diffusers' other image-to-image pipelines make it.
    """
    return (steps - steps_at(steps, strength)) * scheduler.order


def step_options(scheduler: SchedulerMixin, generator: torch.Generator, steps_taken: int) -> dict:
    """The keywords of ``scheduler.step`` at a run's ``steps_taken``-th step (0 for the first).

    - ``generator``, only for a ``step`` that takes one: diffusers' Kandinsky pipelines pass it to every ``step``,
      which the schedulers whose step draws no noise refuse (UniPC, DEIS, Heun, LMS, DPM2; diffusers 0.40.0 to
      0.42.1, tests/test_upstream.py).
    - ``order`` for LMS: ``LMSDiscreteScheduler.step`` takes its order from its step index (``step_index + 1``),
      which counts the steps an image-to-image run skipped, so its first step would weight its one derivative as
      a higher-order formula weights the newest of several. Its order counts the steps this run has taken.
    """
    parameters = _step_parameters(type(scheduler))
    options: dict = {"generator": generator} if "generator" in parameters else {}
    if isinstance(scheduler, LMSDiscreteScheduler):
        options["order"] = min(steps_taken + 1, parameters["order"].default)
    return options


@functools.cache
def _step_parameters(scheduler_class: type[SchedulerMixin]) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(scheduler_class.step).parameters


@functools.cache
def model_calls(name: str, steps: int, strength: float = 1.0) -> int:
    """How many times the decoder calls its UNet, and so its step callback, for ``steps`` steps of sampler
    ``name`` at image-to-image ``strength`` (1: every step): second-order samplers (Heun, DPM2) evaluate the UNet
    twice a step but the last (``first_step``). The count depends on the scheduler's kind only, so its default
    config serves."""
    if name == DEFAULT_SCHEDULER:
        return steps_at(steps, strength)
    scheduler = make_scheduler(name, SAMPLERS[name].scheduler_class().config)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps[first_step(scheduler, steps, strength) :])
