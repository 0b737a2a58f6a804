"""No part of a run's stages reads a value of a tensor on the device.

On CUDA such a read (``if t > 0`` on a timestep there, ``nonzero``, ``item``, a copy back to the CPU) makes the
host wait for the GPU to finish all queued work, which stalls CUDA graph replays. The tests run every mode's
stages with every model on PyTorch's meta device, whose tensors have shapes and no values, and note each read of
a meta tensor's value (``HostReads``) with the steps reported before it: there is none, but DPM2's schedule,
which ``KDPM2DiscreteScheduler.set_timesteps`` computes on the device it is given, before the decoder's first
step.
"""

import pytest
import torch
from diffusers import DDPMScheduler, UnCLIPScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import MODE_INPUTS, settings_in_mode
from infer_kandinsky_2_2.kandinsky22_engine.generation import (
    load_models,
    prior_request,
    progress_steps,
    run_decoder,
    run_prior,
)
from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs, prepare_inputs
from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache
from infer_kandinsky_2_2.kandinsky22_engine.modes import MODES
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime
from infer_kandinsky_2_2.kandinsky22_engine.schedulers import SCHEDULERS

ATEN = torch.ops.aten


def _is_meta(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "meta"


class HostReads(TorchDispatchMode):
    """Notes every read of a meta tensor's value by the host, with how many steps were reported before it, and
    answers it with a made-up value (the computation on meta tensors has no values to follow anyway)."""

    def __init__(self, steps: list[str]) -> None:
        super().__init__()
        self.steps = steps
        self.reads: list[tuple[int, str]] = []

    def __torch_dispatch__(self, func, types, arguments=(), keywords=None):
        keywords = keywords or {}
        source = arguments[0] if arguments else None
        if func is ATEN._local_scalar_dense.default and _is_meta(source):
            self.reads.append((len(self.steps), "item"))
            return True if source.dtype == torch.bool else 0
        if func is ATEN.nonzero.default and _is_meta(source):
            self.reads.append((len(self.steps), "nonzero"))
            return torch.zeros((1, source.dim()), dtype=torch.long, device="meta")
        if func is ATEN._to_copy.default and _is_meta(source) and keywords.get("device") not in (None, source.device):
            self.reads.append((len(self.steps), "copy to the host"))
            return torch.zeros(source.shape, dtype=keywords.get("dtype") or source.dtype)
        return func(*arguments, **keywords)


@pytest.fixture(scope="module")
def meta_cache() -> ModelCache:
    """The models on the meta device, loaded once for the module's runs."""
    return ModelCache()


META = Runtime("meta", torch.float32)
# Each stage's first and last steps, and for the decoder one between: where multistep samplers (DPM++ 2M, UniPC,
# DEIS) change order. Every operation on the meta device runs PyTorch's Python reference, so steps cost.
FEWEST_STEPS = {"prior_num_inference_steps": "2", "num_inference_steps": "3"}


def meta_run(settings: Settings, inputs: Inputs, cache: ModelCache) -> tuple[list, int, list]:
    """The prior stage and the decoder of ``settings``' mode with every model on the meta device.

    Returns the reads of device values (steps reported before each, what read it), the steps reported before the
    decoder starts, and the tensors the stages made."""
    models = load_models(settings, META, cache)
    prepared = prepare_inputs(settings, inputs, META)
    generator = torch.Generator("cpu").manual_seed(0)
    steps = []
    with HostReads(steps) as reads:
        embeds = run_prior(models, settings, prepared, META, generator, lambda index, total: steps.append("prior"))
        decoded = run_decoder(
            models, settings, prepared, META, embeds, generator, lambda index, total: steps.append("decoder")
        )
    assert len(steps) == progress_steps(settings)
    return reads.reads, sum(MODES[settings.mode].prior.runs(prior_request(settings))), [*embeds, decoded]


@pytest.mark.parametrize("mode", list(MODES))
def test_no_part_of_a_run_in_any_mode_reads_a_value_on_the_device(tiny_strings, tiny_repos, meta_cache, mode):
    settings = settings_in_mode(tiny_strings, tiny_repos, mode, **FEWEST_STEPS)
    reads, _, made = meta_run(settings, MODE_INPUTS[mode], meta_cache)
    assert {tensor.device.type for tensor in made} == {"meta"}
    assert reads == []


# Inpainting uses the most of a sampler (its first noise, every step, adding noise to the kept latents at each
# step): the quick loop runs it with each sampler; text-to-image and image-to-image, the truncated start, are slow.
@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize(
    "mode",
    [pytest.param("text2img", marks=pytest.mark.slow), "inpaint", pytest.param("img2img", marks=pytest.mark.slow)],
)
def test_no_part_of_a_run_with_any_sampler_reads_a_value_on_the_device(
    tiny_strings, tiny_repos, meta_cache, mode, name
):
    settings = settings_in_mode(tiny_strings, tiny_repos, mode, scheduler=name, **FEWEST_STEPS)
    reads, decoder_start, _ = meta_run(settings, MODE_INPUTS[mode], meta_cache)
    assert [read for read in reads if name != "DPM2" or read[0] != decoder_start] == []


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, UnCLIPScheduler])
def test_diffusers_steps_read_a_timestep_on_the_device_which_is_why_it_is_kept_on_the_host(scheduler_class):
    # The premise of schedulers.timesteps_on_host (diffusers 0.40.0 to 0.42.1): with its timesteps where
    # the pipelines put them, every step reads the current one on the host.
    scheduler = scheduler_class(num_train_timesteps=1000)
    scheduler.set_timesteps(4, device="meta")
    sample = torch.zeros(1, 4, 8, 8, device="meta")
    with HostReads([]) as reads:
        scheduler.step(sample, scheduler.timesteps[1], sample, generator=torch.Generator().manual_seed(0))
    assert reads.reads
