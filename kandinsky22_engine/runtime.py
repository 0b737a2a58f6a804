"""A run's state above the models: where it computes (``Runtime``), chosen once per run and passed down, and the
models it loaded (``Models``)."""

import re
import threading
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline, KandinskyV22PriorPipeline

from .errors import CompileFailed, SettingsError
from .memory import DECODER_ROLE, PRIOR_ROLE, memory_mode
from .models import DepthEstimator, ImageEncoder, ModelKey, Parking

# CUDA graphs (compile_unet reduce-overhead) captured outside the main thread trip an assertion in torch
# releases before this one (pytorch/pytorch#123177); Ikomia Studio runs tasks in worker threads.
CUDA_GRAPHS_IN_THREADS = (2, 13)


@dataclass(frozen=True)
class Runtime:
    """Where the models run, how they use the GPU, and why there when it is not where the user asked.

    ``device``: "cuda:N" (the GPU of index N, as torch numbers those it sees), "cpu" (or "meta" in the tests): the
    models of each device are kept in a cache of its own (``models.cache_for``); ``dtype``: float16 on CUDA, float32
    elsewhere; ``memory_mode``: a name of ``memory.MEMORY_MODES`` on CUDA, "none" on the CPU; ``compile_unet``: the
    torch.compile mode of the decoder's UNet, or "off"; ``note``: why the run is not where it was asked to be (CUDA
    absent, or a ``cuda_device`` left unused), logged as a warning and kept in the metadata's ``device_note``.
    """

    device: str
    dtype: torch.dtype
    memory_mode: str = "none"
    compile_unet: str = "off"
    note: str = ""

    def key(self, model_name: str) -> ModelKey:
        """The cache key of ``model_name`` loaded for this runtime, as a prior."""
        return ModelKey(model_name, self.device, self.dtype, self.memory_mode)

    def decoder_key(self, model_name: str) -> ModelKey:
        """The cache key of ``model_name`` loaded for this runtime, as a decoder (whose UNet may be compiled).

        Its memory mode is the table's ``decoder_mode``: prior_offload places a decoder as gpu does, so
        switching between the two keeps the loaded (and maybe compiled) decoder.
        """
        placement = memory_mode(self.memory_mode).decoder_mode
        return ModelKey(model_name, self.device, self.dtype, placement, self.compile_unet)


def check_cuda_graphs(compile_unet: str, torch_version: str, main_thread: bool) -> None:
    """Refuse ``compile_unet`` reduce-overhead outside the main thread when ``torch_version`` cannot capture CUDA
    graphs there; any other mode, thread or torch passes.

    ``torch_version`` is compared by its major and minor numbers only, so a pre-release or local build of 2.13
    ("2.13.0a0+git...") counts as 2.13, and a version that does not start with them is let through. Raises
    ``CompileFailed`` naming the parameter, the torch found and what to do.
    """
    if compile_unet != "reduce-overhead" or main_thread:
        return
    numbers = re.match(r"(\d+)\.(\d+)", torch_version)
    if numbers is None or tuple(map(int, numbers.groups())) >= CUDA_GRAPHS_IN_THREADS:
        return
    needed = ".".join(map(str, CUDA_GRAPHS_IN_THREADS))
    raise CompileFailed(
        f"compile_unet: 'reduce-overhead' (CUDA graphs) needs torch {needed} or later when the task runs outside "
        f"the main thread, as Ikomia Studio runs it; this torch is {torch_version}, whose CUDA graphs fail there "
        f"(pytorch/pytorch#123177). Set compile_unet to default or off, or install torch {needed} or later."
    )


def check_cuda_device(index: int, count: int) -> None:
    """Refuse a ``cuda_device`` ``index`` past the ``count`` GPUs torch sees (``torch.cuda.device_count``), which
    it numbers from 0; CUDA_VISIBLE_DEVICES, where set, says which GPUs it sees and in what order. Raises
    ``SettingsError`` naming the parameter, the index and how many GPUs there are."""
    if index < count:
        return
    accepted = "0" if count == 1 else f"a whole number from 0 to {count - 1}"
    raise SettingsError(
        f"cuda_device: received '{index}'; accepted: {accepted}, as torch sees {count} GPU{'' if count == 1 else 's'}, "
        "numbered from 0 (where CUDA_VISIBLE_DEVICES is set, torch sees the GPUs it lists, numbered from 0 in its "
        "order). Set cuda_device to one of them, or cuda to False to run on the CPU."
    )


def choose_runtime(cuda: bool, memory_mode_name: str, compile_unet: str, cuda_device: int = 0) -> Runtime:
    """Where and how a run computes: the GPU ``cuda_device`` ("cuda:N") in float16 with the chosen memory mode and
    compile mode when ``cuda`` asks for it and torch sees a CUDA device; otherwise the CPU in float32, with a note
    when CUDA was asked for but is absent, and one when a ``cuda_device`` other than 0 is not used (cuda off, or
    no CUDA). Such an index is said, not refused: the widget greys cuda_device out while cuda is off, so a user
    could not correct it there, and a workflow saved on a machine with several GPUs still runs on one with none.

    On the CPU, memory_mode and compile_unet are read as "none" and "off": diffusers' offloading needs an
    accelerator and fails without one, and torch.compile there needs a C++ compiler and minutes of
    compiling, for a speed-up this project has not measured.

    Raises ``SettingsError`` for a ``cuda_device`` past the GPUs torch sees (``check_cuda_device``), and
    ``CompileFailed`` when CUDA graphs are asked for where this torch cannot capture them (``check_cuda_graphs``):
    both before any model work.
    """
    if cuda and torch.cuda.is_available():
        check_cuda_device(cuda_device, torch.cuda.device_count())
        check_cuda_graphs(compile_unet, torch.__version__, threading.current_thread() is threading.main_thread())
        return Runtime(f"cuda:{cuda_device}", torch.float16, memory_mode_name, compile_unet)
    why = "cuda was requested but CUDA is not available" if cuda else "cuda is False"
    if cuda_device != 0:
        note = f"{why}, so cuda_device {cuda_device} is not used"
    elif cuda:
        note = why
    else:
        note = ""
    return Runtime("cpu", torch.float32, note=note)


def graph_plan(cuda_graphs: bool, runtime: Runtime) -> dict[str, str]:
    """For each stage ("prior", "decoder"), why its forward passes run without CUDA graphs, or "" where they are
    replayed from them: those of the memory mode's ``graphed`` stages, less the decoder when its UNet is compiled
    (torch.compile's reduce-overhead replays graphs of its own). Empty when ``cuda_graphs`` is off or the run is on
    the CPU (memory mode "none"), where nothing is graphed and nothing needs saying."""
    if not cuda_graphs or runtime.memory_mode == "none":
        return {}
    mode = memory_mode(runtime.memory_mode)
    plan = {}
    for stage in (PRIOR_ROLE, DECODER_ROLE):
        if stage not in mode.graphed:
            plan[stage] = f"memory_mode {runtime.memory_mode} moves its weights"
        elif stage == DECODER_ROLE and runtime.compile_unet != "off":
            plan[stage] = f"compile_unet {runtime.compile_unet} replays graphs of its own"
        else:
            plan[stage] = ""
    return plan


@dataclass(frozen=True)
class Models:
    """The loaded models of one run: the prior repo's pipeline (a container of its tokenizer, text encoder, prior
    transformer, scheduler and image processor; the image encoder is loaded apart), the decoder repo's pipeline (of
    its UNet, scheduler and MoVQ), the prior's models that visit the device for the prior stage only, the image
    encoder when the run needs it, and the depth estimator when it estimates its depth map. The pipelines are
    containers: the engine's stages call their models, never the pipelines themselves."""

    prior: KandinskyV22PriorPipeline
    decoder: DiffusionPipeline
    prior_parking: Parking
    image_encoder: ImageEncoder | None = None
    depth_estimator: DepthEstimator | None = None
