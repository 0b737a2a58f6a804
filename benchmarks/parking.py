"""Parking: a lever measured by ``gpu_benchmark.py``, not in the engine yet.

A parked model keeps its weights in pinned CPU memory and has them on the GPU only while its
pipeline runs: one host-to-device copy per run and none back (the CPU copy stays the reference),
where diffusers' model offload copies every model both ways through pageable memory. The pipelines'
calls are wrapped, so the engine runs unchanged:

- ``text_encoder``: the text encoder is on the GPU only during the prior's call;
- ``prior_stage``: the text encoder and the prior transformer likewise;
- ``all``: besides, the UNet and MoVQ are on the GPU only during the decoder's call (the UNet's
  weights then move between runs: not with CUDA graphs).
"""

from collections.abc import Callable

import torch
from diffusers import DiffusionPipeline, KandinskyV22PriorPipeline

PARKING = ("text_encoder", "prior_stage", "all")


class Parked:
    """One module whose weights live in CPU memory (pinned on CUDA) and visit ``device`` on demand."""

    def __init__(self, module: torch.nn.Module, device: str) -> None:
        self.tensors = [*module.parameters(), *module.buffers()]
        copies = [tensor.detach().to("cpu", copy=True) for tensor in self.tensors]
        self.host = [copy.pin_memory() for copy in copies] if device == "cuda" else copies
        self.device = device
        self.park()

    def load(self) -> None:
        for tensor, host in zip(self.tensors, self.host, strict=True):
            tensor.data = host.to(self.device, non_blocking=True, copy=True)

    def park(self) -> None:
        for tensor, host in zip(self.tensors, self.host, strict=True):
            tensor.data = host


def park(prior: KandinskyV22PriorPipeline, decoder: DiffusionPipeline, which: str, device: str) -> None:
    """Park the models ``which`` names (one of ``PARKING``), once the engine has placed the pipelines."""
    prior_stage = [prior.text_encoder] if which == "text_encoder" else [prior.text_encoder, prior.prior]
    _while_called(prior, [Parked(module, device) for module in prior_stage])
    if which == "all":
        _while_called(decoder, [Parked(module, device) for module in (decoder.unet, decoder.movq)])


def _while_called(pipeline: DiffusionPipeline, parked: list[Parked]) -> None:
    """Make ``pipeline`` load the parked models when called and park them again when it returns."""
    base: type = type(pipeline)
    call: Callable = base.__call__

    def __call__(self, *arguments, **keywords):
        for each in parked:
            each.load()
        try:
            return call(self, *arguments, **keywords)
        finally:
            for each in parked:
                each.park()

    pipeline.__class__ = type(f"Parked{base.__name__}", (base,), {"__call__": __call__})
