"""No denoising step of the prior or the decoder reads a value of a tensor on the device.

On CUDA such a read (``if t > 0`` on a timestep there, ``nonzero``, ``item``, a copy back to the CPU) makes the
host wait for the GPU to finish all queued work, which stalls CUDA graph replays. The tests run every mode's
stages with every model on PyTorch's meta device, whose tensors have shapes and no values, and note each read of
a meta tensor's value (``HostReads``) with the steps reported before it: reads are allowed before a stage's
first step only (a run's set-up), never between two steps.
"""

import itertools

import pytest
import torch
from diffusers import DDPMScheduler, UnCLIPScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import left_half_mask, random_image
from infer_kandinsky_2_2.kandinsky22_engine import generation
from infer_kandinsky_2_2.kandinsky22_engine.generation import (
    Runtime,
    _decode,
    _step_callbacks,
    load_pipelines,
    prepare_inputs,
)
from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache
from infer_kandinsky_2_2.kandinsky22_engine.modes import MODES, Inputs
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
from infer_kandinsky_2_2.kandinsky22_engine.schedulers import SAMPLERS, SCHEDULERS

INPUTS = {
    "text2img": Inputs(),
    "img2img": Inputs(image=random_image(1)),
    "inpaint": Inputs(image=random_image(2), mask=left_half_mask()),
    "outpaint": Inputs(image=random_image(2)),
    "controlnet_depth": Inputs(depth=random_image(4)[:, :, 0]),
    "controlnet_img2img": Inputs(image=random_image(1), depth=random_image(4)[:, :, 0]),
    "mix": Inputs(mix_images=(random_image(5), random_image(6))),
}


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


def meta_run(
    settings: Settings, inputs: Inputs, cache: ModelCache, monkeypatch: pytest.MonkeyPatch
) -> tuple[list, list[int], list]:
    """The prior stage and the decoder of ``settings``' mode with every model on the meta device.

    Returns the reads of device values (steps reported before each, what read it), the step counts at which a
    stage starts (before its first step, a run may read), and the tensors the stages made."""
    monkeypatch.setattr(generation, "choose_runtime", lambda settings: Runtime("meta", torch.float32, "none"))
    pipelines = load_pipelines(settings, cache)
    prepared = prepare_inputs(settings, inputs)
    generator = torch.Generator("cpu").manual_seed(0)
    steps = []
    callbacks = _step_callbacks("prior", lambda: steps.append("prior"), lambda: False)
    callback = _step_callbacks("decoder", lambda: steps.append("decoder"), lambda: False)(0)
    with HostReads(steps) as reads:
        embeds = MODES[settings.mode].prior(pipelines, settings, prepared, generator, callbacks)
        images = _decode(pipelines.decoder, settings, prepared, embeds, generator, callback, output_type="pt")
    assert len(steps) == generation.progress_steps(settings)
    starts = list(itertools.accumulate(MODES[settings.mode].prior_steps(settings), initial=0))
    return reads.reads, starts, [*embeds, images]


def settings_for(tiny_strings: dict, tiny_repos, mode: str, **changes: str) -> Settings:
    decoder = {"inpaint": "inpaint_decoder", "outpaint": "inpaint_decoder"}.get(mode, "decoder")
    if mode.startswith("controlnet"):
        decoder = "controlnet_decoder"
    return Settings.from_strings(
        {
            **tiny_strings,
            "mode": mode,
            "model_name": str(getattr(tiny_repos, decoder)),
            "guidance_scale": "2.0",
            "negative_prompt": "",
            "strength": "0.5",
            "outpaint_left": "64",
            "outpaint_right": "0",
            "outpaint_overlap": "8",
            **changes,
        }
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_no_step_of_any_mode_reads_a_value_on_the_device(tiny_strings, tiny_repos, meta_cache, monkeypatch, mode):
    settings = settings_for(tiny_strings, tiny_repos, mode)
    reads, starts, made = meta_run(settings, INPUTS[mode], meta_cache, monkeypatch)
    assert {tensor.device.type for tensor in made} == {"meta"}
    assert [read for read in reads if read[0] not in starts] == []


@pytest.mark.parametrize("name", [name for name in SCHEDULERS if name == "default" or SAMPLERS[name].host_timesteps])
@pytest.mark.parametrize("mode", ["text2img", "inpaint", "img2img"])
def test_no_step_of_a_sampler_reads_a_value_on_the_device(
    tiny_strings, tiny_repos, meta_cache, monkeypatch, mode, name
):
    settings = settings_for(tiny_strings, tiny_repos, mode, scheduler=name)
    reads, starts, _ = meta_run(settings, INPUTS[mode], meta_cache, monkeypatch)
    assert [read for read in reads if read[0] not in starts] == []


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, UnCLIPScheduler])
def test_diffusers_steps_read_a_timestep_on_the_device_which_is_why_it_is_kept_on_the_host(scheduler_class):
    # The premise of schedulers.keep_timesteps_on_host (diffusers 0.40.0 to 0.42.1): with its timesteps where
    # the pipelines put them, every step reads the current one on the host.
    scheduler = scheduler_class(num_train_timesteps=1000)
    scheduler.set_timesteps(4, device="meta")
    sample = torch.zeros(1, 4, 8, 8, device="meta")
    with HostReads([]) as reads:
        scheduler.step(sample, scheduler.timesteps[1], sample, generator=torch.Generator().manual_seed(0))
    assert reads.reads
