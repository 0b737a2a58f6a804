"""Kandinsky 2.2 generation in every mode: the prior, then the decoder of the mode.

Each mode runs as diffusers' own pipelines run it (``KandinskyV22CombinedPipeline`` and its
img2img and inpaint siblings, the prior then the ControlNet pipeline, the prior's ``interpolate``
then the decoder), with one CPU generator made anew for every run, so a plugin image equals what
diffusers returns for the same arguments and seed. A depth map estimated from a photo (depth_model)
is made as diffusers' Kandinsky ControlNet guide makes it, with transformers' depth-estimation
pipeline. Where the task departs from diffusers, it is to fix a diffusers bug, and the docstring of
that step says which.
"""

import gc
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline, KandinskyV22PriorPipeline
from transformers import CLIPTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES

from . import graphs
from .graphs import graphed
from .hub import TRANSFORMERS_INDEX, ModelLoadError, Source, first_line
from .images import InputError, depth_hint
from .memory import DECODER_ROLE, PRIOR_ROLE, memory_mode
from .models import (
    DEPTH_ESTIMATOR,
    IMAGE_ENCODER,
    IMAGE_ENCODER_LOADER,
    MODEL_CACHE,
    DepthEstimator,
    DepthEstimatorLoader,
    ImageEncoder,
    ModelCache,
    ModelKey,
    Parking,
    PipelineLoader,
)
from .modes import (
    DECODER_ROLES,
    DEFAULT_DECODER,
    DEFAULT_PRIOR,
    DEPTH_INPUT,
    IMAGE_INPUT,
    MODES,
    NO_INPUTS,
    Callbacks,
    Inputs,
    Prepared,
    embedded_input_names,
    estimates_depth,
)
from .parameters import MAX_RANDOM_SEED, RANDOM_SEED, Settings
from .schedulers import model_calls, sampling

logger = logging.getLogger(__name__)
StepCallback = Callable[[], None]


class GenerationStopped(RuntimeError):
    """The user asked to stop; the run ended after the current denoising step."""


class GenerationOutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message says what was asked and what to try."""


class CompileFailed(RuntimeError):
    """torch.compile could not compile the UNet on this machine; the message says how to run without it."""


class NotFinite(RuntimeError):
    """A stage produced values that are not finite (NaN or infinity); the message says which and what to try."""


@dataclass(frozen=True)
class Runtime:
    """Where the models run, how they use the GPU, and why there when it is not where the user asked."""

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


@dataclass(frozen=True)
class Generation:
    """The generated pictures (each height x width x 3, RGB uint8) and what produced them."""

    images: tuple[np.ndarray, ...]
    metadata: dict


@dataclass(frozen=True)
class Pipelines:
    """The loaded stages of one run, the prior's models that visit the device only for the prior stage, the
    prior repo's image encoder when the run needs it, and the depth estimator when it estimates its depth map."""

    prior: KandinskyV22PriorPipeline
    decoder: DiffusionPipeline
    prior_parking: Parking
    image_encoder: ImageEncoder | None = None
    depth_estimator: DepthEstimator | None = None


# CUDA graphs (compile_unet reduce-overhead) captured outside the main thread trip an assertion in torch
# releases before this one (pytorch/pytorch#123177); Ikomia Studio runs tasks in worker threads.
CUDA_GRAPHS_IN_THREADS = (2, 13)


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


def choose_runtime(settings: Settings) -> Runtime:
    """Where and how a run computes: CUDA in float16 with the chosen memory mode and compile mode when
    ``settings.cuda`` asks for it and torch sees a CUDA device; otherwise the CPU in float32, with a note
    when CUDA was asked for but is absent.

    On the CPU, memory_mode and compile_unet are read as "none" and "off": diffusers' offloading needs an
    accelerator and fails without one, and torch.compile there needs a C++ compiler and minutes of
    compiling, for a speed-up this project has not measured.

    Raises ``CompileFailed`` when CUDA graphs are asked for where this torch cannot capture them (see
    ``check_cuda_graphs``).
    """
    if settings.cuda and torch.cuda.is_available():
        check_cuda_graphs(
            settings.compile_unet, torch.__version__, threading.current_thread() is threading.main_thread()
        )
        return Runtime(
            device="cuda",
            dtype=torch.float16,
            memory_mode=settings.memory_mode,
            compile_unet=settings.compile_unet,
        )
    if settings.cuda:
        return Runtime(device="cpu", dtype=torch.float32, note="cuda was requested but CUDA is not available")
    return Runtime(device="cpu", dtype=torch.float32)


def graphed_stages(settings: Settings, runtime: Runtime) -> tuple[str, ...]:
    """The stages whose forward passes a run replays from CUDA graphs: none unless ``settings.cuda_graphs`` is on
    and the run is on CUDA; then those of its memory mode's ``graphed``, less the decoder when its UNet is
    compiled (torch.compile's reduce-overhead replays graphs of its own)."""
    if not settings.cuda_graphs or runtime.memory_mode == "none":
        return ()
    stages = memory_mode(runtime.memory_mode).graphed
    return tuple(stage for stage in stages if stage != DECODER_ROLE or runtime.compile_unet == "off")


def _say_what_runs_eagerly(settings: Settings, runtime: Runtime, stages: tuple[str, ...]) -> None:
    """Log, when cuda_graphs is on for a CUDA run, each stage that is not replayed from graphs and why."""
    if not settings.cuda_graphs or runtime.memory_mode == "none":
        return
    for stage in (PRIOR_ROLE, DECODER_ROLE):
        if stage in stages:
            continue
        compiled = stage == DECODER_ROLE and runtime.compile_unet != "off"
        why = (
            f"compile_unet {runtime.compile_unet} replays graphs of its own"
            if compiled and stage in memory_mode(runtime.memory_mode).graphed
            else f"memory_mode {runtime.memory_mode} moves its weights"
        )
        logger.warning("infer_kandinsky_2_2: cuda_graphs: the %s stage runs without CUDA graphs: %s.", stage, why)


def resolve_seed(seed: int) -> int:
    """The seed a run uses: the given one, or a fresh random one for -1."""
    return secrets.randbelow(MAX_RANDOM_SEED + 1) if seed == RANDOM_SEED else seed


def decoder_model_name(settings: Settings) -> str:
    """The decoder repo of the run: the mode's own default when model_name is left at its default."""
    if settings.model_name == DEFAULT_DECODER:
        return MODES[settings.mode].decoder.default_model
    return settings.model_name


def needs_image_encoder(settings: Settings) -> bool:
    """Whether a run uses the prior repo's CLIP image encoder: a mode that embeds input images (mix,
    controlnet_img2img) does, and an empty negative prompt takes the embedding of an all-zero image as the
    negative."""
    return bool(MODES[settings.mode].embedded_inputs) or not settings.negative_prompt


def load_pipelines(settings: Settings, cache: ModelCache = MODEL_CACHE) -> Pipelines:
    """Load (or reuse) the decoder of the mode that ``settings`` ask for, the prior, the image encoder if the
    run needs it (``needs_image_encoder``), and depth_model's depth estimator if the run estimates its depth map
    (``modes.estimates_depth``).

    Every model that is not loaded yet is found and its configs read first, the decoder first: a wrong or
    missing model (a repo that cannot serve the mode, a misspelt prior, an image encoder not in an offline
    cache) is refused before any weights are fetched or loaded. A model already in ``cache`` for the same key
    is reused as it is; one with another key replaces it (``ModelCache.get``).

    Args:
        settings: checked settings; the mode, model names, ``cuda``, ``memory_mode`` and ``compile_unet`` are
            read (through ``choose_runtime``).
        cache: where the models live; its lock is held while loading.

    Returns:
        ``Pipelines``: the prior and the mode's decoder, placed and in the runtime's dtype (float16 on CUDA,
        float32 on the CPU); the prior's models that visit the device for its stage only; the image encoder or
        None; the depth estimator or None. The prior's ``get_zero_embed`` is this run's encoder's (see the
        patch note below).

    Raises:
        ModelLoadError: a model that cannot be found, fetched or loaded, or that cannot serve the mode (or, for
            depth_model, is no depth-estimation model); the message names the parameter (``model_name``,
            ``prior_model_name`` or ``depth_model``) and the value. The roles
            loaded before the failure stay usable, the failing one holds nothing.
        CompileFailed: the torch at hand cannot run the compile_unet asked for (see ``choose_runtime``).
    """
    runtime = choose_runtime(settings)
    decoder = MODES[settings.mode].decoder
    with cache.lock:
        if memory_mode(runtime.memory_mode).sets_aside_other_decoders:
            # The other decoders leave the GPU before this one is placed or brought back.
            for role in DECODER_ROLES:
                if role != decoder.role:
                    cache.set_aside(role)
        prior_key = runtime.key(settings.prior_model_name)
        wanted = [
            (
                decoder.role,
                runtime.decoder_key(decoder_model_name(settings)),
                PipelineLoader(decoder.pipeline_class, "model_name", check=check_decoder(settings.mode)),
            ),
            (
                "prior",
                prior_key,
                PipelineLoader(KandinskyV22PriorPipeline, "prior_model_name", (IMAGE_ENCODER,), check_prior),
            ),
        ]
        if needs_image_encoder(settings):
            wanted.append((IMAGE_ENCODER, prior_key, IMAGE_ENCODER_LOADER))
        if estimates_depth(settings.mode, settings.depth_model):
            wanted.append((DEPTH_ESTIMATOR, runtime.key(settings.depth_model), DepthEstimatorLoader(check_depth_model)))
        for role, key, loader in wanted:
            if not cache.holds(role, key):
                loader.preflight(key)
        loaded = {role: cache.get(role, key, loader) for role, key, loader in wanted}
        decoder_pipeline, prior, encoder = loaded[decoder.role], loaded["prior"], loaded.get(IMAGE_ENCODER)
        # Patch of a diffusers internal (diffusers 0.40.0 to 0.42.1, tests/test_upstream.py): the prior's
        # __call__ asks self.get_zero_embed for the negative when there is no negative prompt, which would
        # need the image encoder inside the prior; this run's encoder answers it, or nothing does (a
        # reference to an earlier encoder would keep it in memory).
        prior.get_zero_embed = encoder.zero_embeds if encoder is not None else _no_zero_embedding
        return Pipelines(prior, decoder_pipeline, cache.parking("prior"), encoder, loaded.get(DEPTH_ESTIMATOR))


def _no_zero_embedding(batch_size: int = 1, device: object = None) -> torch.Tensor:
    raise RuntimeError("the zero-image embedding was asked for, but this run did not load the image encoder")


def _read_config(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe_repo(folder: Path) -> str:
    """What a diffusers repo is, from its configs: its pipeline class, and its UNet's input channels and added
    embedding (and so which modes it serves), or what it has instead of a UNet."""
    index = _read_config(folder / "model_index.json") or {}
    pipeline = f"a {index.get('_class_name', 'diffusers')} repo"
    unet = _read_config(folder / "unet" / "config.json")
    if unet is None:
        has_prior = "prior" in index and "text_encoder" in index
        return f"{pipeline} without a UNet ({'a prior, for prior_model_name' if has_prior else 'no unet/config.json'})"
    found = (unet.get("in_channels"), unet.get("addition_embed_type"))
    modes = [
        name for name, mode in MODES.items() if (mode.decoder.in_channels, mode.decoder.addition_embed_type) == found
    ]
    serves = f" ({MODES[modes[0]].decoder.kind}, for {', '.join(modes)})" if modes else ""
    return f"{pipeline} whose UNet takes {found[0]} input channels with added embedding {found[1]!r}{serves}"


def check_decoder(mode: str) -> Callable[[Path, Source], None]:
    """A check for ``load_pipeline``: refuse a decoder repo whose UNet cannot serve ``mode``, from its configs.

    diffusers would build any decoder pipeline over any UNet: an inpainting run on a text-to-image UNet
    fails inside its first step ("expected input to have 4 channels, but got 9"), after the prior ran, and a
    ControlNet run on it ignores the depth map without error. A folder without configs is left to the load.
    """
    decoder = MODES[mode].decoder

    def check(folder: Path, source: Source) -> None:
        unet = _read_config(folder / "unet" / "config.json")
        if unet is None and not (folder / "model_index.json").exists():
            return
        if unet is not None and (unet.get("in_channels"), unet.get("addition_embed_type")) == (
            decoder.in_channels,
            decoder.addition_embed_type,
        ):
            return
        raise ModelLoadError(
            f"model_name: {source.describe()} cannot serve {mode}: it is {describe_repo(folder)}; {mode} needs "
            f"{decoder.kind} (a UNet with {decoder.in_channels} input channels and added embedding "
            f"{decoder.addition_embed_type!r}), such as {decoder.default_model}."
        )

    return check


# The model types of transformers' depth-estimation models (those ``AutoModelForDepthEstimation`` loads).
DEPTH_MODEL_TYPES = tuple(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES)


def check_depth_model(folder: Path, source: Source) -> None:
    """A check for ``DepthEstimatorLoader``: refuse, from its configs, a repo that is not a transformers
    depth-estimation model (``config.json`` of a type in ``DEPTH_MODEL_TYPES``) with its image processor
    (``preprocessor_config.json``), which transformers' depth-estimation pipeline needs."""
    config = _read_config(folder / TRANSFORMERS_INDEX)
    model_type = (config or {}).get("model_type")
    if model_type in DEPTH_MODEL_TYPES and (folder / "preprocessor_config.json").is_file():
        return
    index = _read_config(folder / "model_index.json")
    if index is not None:
        found = f"a diffusers {index.get('_class_name', 'pipeline')} repo"
    elif config is None:
        found = "a model without config.json at its root"
    elif model_type not in DEPTH_MODEL_TYPES:
        found = f"a transformers model of type {model_type!r}, which does not estimate depth"
    else:
        found = f"a {model_type} model without preprocessor_config.json (its image processor)"
    raise ModelLoadError(
        f"depth_model: {source.describe()} is not a transformers depth-estimation model: it is {found}; accepted: a "
        f"depth-estimation model ({', '.join(DEPTH_MODEL_TYPES)}) with config.json, preprocessor_config.json and "
        "safetensors weights at its root, such as depth-anything/Depth-Anything-V2-Small-hf, or depth_model empty "
        f"to give a depth map (input '{DEPTH_INPUT}')."
    )


def check_prior(folder: Path, source: Source) -> None:
    """A check for ``load_pipeline``: refuse as prior a repo that has no prior transformer and text encoder."""
    index = _read_config(folder / "model_index.json")
    if index is None or ("prior" in index and "text_encoder" in index):
        return
    raise ModelLoadError(
        f"prior_model_name: {source.describe()} is not a Kandinsky 2.2 prior: it is {describe_repo(folder)}; "
        f"accepted: a prior repo (CLIP text encoder and prior transformer), such as {DEFAULT_PRIOR}."
    )


def progress_steps(settings: Settings) -> int:
    """How many step callbacks a run makes: one per denoising step of every prior run and of the decoder."""
    mode = MODES[settings.mode]
    return sum(mode.prior_steps(settings)) + decoder_calls(settings)


def decoder_calls(settings: Settings) -> int:
    """The decoder's step callbacks in a run: one per UNet call of its sampler over the steps the mode runs
    (``schedulers.model_calls``)."""
    steps = settings.num_inference_steps
    return model_calls(settings.scheduler, steps, skipped=steps - MODES[settings.mode].decoder_steps(settings))


def prepare_inputs(settings: Settings, inputs: Inputs) -> Prepared:
    """Check and convert the inputs that ``settings.mode`` reads (its table entry's ``prepare``), before any model
    is loaded.

    Args:
        settings: checked settings (mode, height, width, mix_images, cuda).
        inputs: the arrays given to the task: images as height x width x 3 (or 1, or 4 with alpha) uint8,
            uint16 or floats in 0..1; masks and depth maps as height x width or height x width x channels
            (``images.mask_from`` and ``images.depth_hint`` say how each dtype is read).

    Returns:
        ``Prepared``: for img2img and inpaint, ``image`` as height x width x 3 uint8 at the output size
        (scaled to cover it and centre-cropped, never stretched); for outpaint, ``image`` as the canvas of
        ``images.outpaint_canvas``; for inpaint and outpaint, ``mask`` as height x width float32, 1 where to
        repaint; for the ControlNet modes, ``hint`` as a (1, 3, height, width) tensor in 0..1 on the run's device
        and dtype, or with depth_model set, ``image`` (the photo, fitted) and no hint yet (``estimate_depth``
        makes it once the models are loaded); for mix, the images as PIL RGB images at their own size (CLIP's
        image processor resizes them). ``notes`` say, for every input read, its size and what was done to it
        (the run's metadata ``inputs``).

    Raises:
        InputError: an input the mode needs is missing, empty or unusable (wrong shape or dtype, a mask that
            repaints nothing, a uniform depth map); the message names the mode and the input.
    """
    prepared = Prepared()
    MODES[settings.mode].prepare(settings, inputs, prepared, choose_runtime(settings))
    return prepared


def generate(
    settings: Settings,
    inputs: Inputs | Prepared = NO_INPUTS,
    *,
    cache: ModelCache = MODEL_CACHE,
    on_step: StepCallback = lambda: None,
    should_stop: Callable[[], bool] = lambda: False,
    seconds_loading_before: float = 0.0,
) -> Generation:
    """Generate ``settings.num_images`` pictures from ``settings`` and the ``inputs`` its mode reads.

    Args:
        settings: checked settings of the run.
        inputs: the input images (text2img reads none), or what ``prepare_inputs`` made of them.
        cache: where the models are loaded once and shared.
        on_step: called after every denoising step of the prior and of the decoder.
        should_stop: polled after every step; when it returns True the run raises ``GenerationStopped``.
        seconds_loading_before: seconds this run already spent loading the models before this call (Ikomia
            calls the task's ``init_long_process`` from the first run's ``begin_task_run``); the metadata's
            ``seconds.load`` and ``seconds.total`` count them.

    Returns:
        ``Generation``: ``images``, ``settings.num_images`` arrays of height x width x 3 RGB uint8, and
        ``metadata``: the mode, the seed used (drawn when ``settings.seed`` is -1), the device, dtype,
        memory and compile modes, the model names, notes on the inputs and truncated prompts, the seconds
        spent loading and in each stage, and the diffusers and torch versions.

    Raises:
        InputError: a missing or unusable input (before any model is loaded), or a depth map that depth_model
            estimates uniform (``estimate_depth``).
        ModelLoadError: a model that cannot be found, fetched or loaded (see ``load_pipelines``).
        GenerationStopped: ``should_stop`` returned True; the message says after which step of which stage.
        GenerationOutOfMemory: the device ran out of memory; the message suggests a memory_mode, size or
            batch that fits.
        CompileFailed: torch.compile failed; the message says to set compile_unet to off.
        GraphCaptureFailed: with cuda_graphs on, a forward pass could not be captured; the message says to set
            cuda_graphs to False.
        NotFinite: the prior or the decoder produced NaN or infinite values (float16 overflow, broken weights).

    The cache stays usable after each error: the next run reuses what was loaded.
    """
    runtime = choose_runtime(settings)
    if runtime.note:
        logger.warning("infer_kandinsky_2_2: %s; running on the CPU in float32.", runtime.note)
    prepared = inputs if isinstance(inputs, Prepared) else prepare_inputs(settings, inputs)
    seed = resolve_seed(settings.seed)
    with cache.lock, torch.no_grad(), _explain_out_of_memory(settings, runtime), _explain_compile_failure(runtime):
        started = time.perf_counter()
        pipelines = load_pipelines(settings, cache)
        _synchronize(runtime)
        loaded = time.perf_counter()
        if pipelines.depth_estimator is not None:
            prepared = estimate_depth(pipelines.depth_estimator, settings, prepared, runtime)
        truncated = _truncated_prompts(pipelines.prior.tokenizer, settings)
        generator = torch.Generator("cpu").manual_seed(seed)
        mode = MODES[settings.mode]
        stages = graphed_stages(settings, runtime)
        _say_what_runs_eagerly(settings, runtime, stages)
        with (
            pipelines.prior_parking.visit(*pipelines.prior_parking.names),
            graphed(pipelines.prior.prior, PRIOR_ROLE in stages),
        ):
            embeds = mode.prior(
                pipelines, settings, prepared, generator, _step_callbacks("prior", on_step, should_stop)
            )
            _synchronize(runtime)
        _refuse_not_finite(embeds, "prior", settings, runtime)
        prior_done = time.perf_counter()
        decoder_callback = _step_callbacks("decoder", on_step, should_stop)(decoder_calls(settings))
        with graphed(pipelines.decoder.unet, DECODER_ROLE in stages):
            images = _decode(pipelines.decoder, settings, prepared, embeds, generator, decoder_callback)
        _refuse_not_finite(images, "decoder", settings, runtime)
        decoded = time.perf_counter()
    metadata = {
        "mode": settings.mode,
        "num_images": settings.num_images,
        "seed": seed,
        "random_seed": settings.seed == RANDOM_SEED,
        "device": runtime.device,
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "memory_mode": runtime.memory_mode,
        "compile_unet": runtime.compile_unet,
        "cuda_graphs": list(stages),
        "scheduler": settings.scheduler,
        "device_note": runtime.note,
        "model_name": decoder_model_name(settings),
        "prior_model_name": settings.prior_model_name,
        "inputs": _input_notes(settings, prepared, pipelines.prior),
        "truncated": truncated,
        "seconds": {
            "load": round(seconds_loading_before + loaded - started, 4),
            "prior": round(prior_done - loaded, 4),
            "decoder": round(decoded - prior_done, 4),
            "total": round(seconds_loading_before + decoded - started, 4),
        },
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }
    return Generation(images=tuple(to_uint8(image) for image in images), metadata=metadata)


def estimate_depth(estimator: DepthEstimator, settings: Settings, prepared: Prepared, runtime: Runtime) -> Prepared:
    """``prepared`` with the ControlNet hint estimated from its photo by depth_model, as diffusers' Kandinsky
    ControlNet guide makes it (``make_hint``): the depth-estimation pipeline's ``depth`` (uint8, near bright,
    stretched to 0..255 per image) over three channels, divided by 255 (``images.depth_hint``).

    Args:
        estimator: depth_model, loaded (``DepthEstimator``).
        settings: checked settings (mode, depth_model, height, width).
        prepared: what the mode's ``prepare`` made: ``image``, the photo at the output size (height x width x 3
            uint8), and its note.
        runtime: the device and dtype of the hint.

    Returns:
        A copy of ``prepared`` whose ``hint`` is (1, 3, height, width) in 0..1 on the run's device and dtype, and
        whose image note says which model estimated the depth.

    Raises:
        InputError: naming depth_model, when the estimate is the same everywhere (no layout to follow).
    """
    name = f"{settings.mode} input '{IMAGE_INPUT}'"
    try:
        hint, _ = depth_hint(
            estimator.estimate(prepared.image), name, settings.height, settings.width, runtime.device, runtime.dtype
        )
    except InputError as error:
        # The estimate has the photo's size and uint8 values: being uniform is all that depth_hint can refuse.
        raise InputError(
            f"depth_model: {settings.depth_model!r} estimated the same depth everywhere in {name}: there is no layout "
            f"for ControlNet to follow; accepted: a photo whose depth the model can tell apart, or a depth map "
            f"(input '{DEPTH_INPUT}') with depth_model empty."
        ) from error
    note = f"{prepared.notes[IMAGE_INPUT]}; depth estimated by {settings.depth_model}"
    return replace(prepared, hint=hint, notes={**prepared.notes, IMAGE_INPUT: note})


def _input_notes(settings: Settings, prepared: Prepared, prior: KandinskyV22PriorPipeline) -> dict[str, str]:
    """For every input the run read, its size and what was done to it; the images the prior embeds say how
    CLIP's image processor brought them to its input size."""
    notes = dict(prepared.notes)
    embedded = embedded_input_names(settings.mode, settings.mix_images)
    if embedded:
        processor = prior.image_processor
        size, crop = processor.size, processor.crop_size if processor.do_center_crop else None
        scaled = (
            f"shorter side scaled to {size['shortest_edge']}"
            if "shortest_edge" in size
            else f"scaled to {size.get('width')}x{size.get('height')}"
        )
        how = f"at {crop['width']}x{crop['height']} ({scaled}, centre cut)" if crop else scaled
        for name in embedded:
            notes[name] += f", embedded by CLIP {how}"
    return notes


def _refuse_not_finite(
    values: tuple[torch.Tensor, ...] | np.ndarray, stage: str, settings: Settings, runtime: Runtime
) -> None:
    """Raise ``NotFinite`` when a stage's output holds NaN or infinity, which would make a black picture.

    ``values``: the prior's (image, negative) embeddings, or the decoder's pictures (batch, height, width, 3).
    """
    if stage == "prior":
        bad = [
            index
            for index in range(settings.num_images)
            if not all(torch.isfinite(each[index]).all() for each in values)
        ]
    else:
        bad = [index for index, picture in enumerate(values) if not np.isfinite(picture).all()]
    if not bad:
        return
    pictures = ", ".join(str(index + 1) for index in bad)
    parameter = "prior_model_name" if stage == "prior" else "model_name"
    model = settings.prior_model_name if stage == "prior" else decoder_model_name(settings)
    if runtime.dtype == torch.float16:
        advice = (
            "In float16 this is an overflow (a value past 65504). Try another seed or a lower guidance scale, or set "
            "cuda to False to run in float32 on the CPU."
        )
    else:
        advice = f"In float32 this points at broken weights: check {parameter} {model!r}."
    raise NotFinite(
        f"The {stage} gave values that are not finite (NaN or infinity) for picture(s) {pictures} of "
        f"{settings.num_images}, so no picture is returned (it would be black). {advice}"
    )


@contextmanager
def _explain_out_of_memory(settings: Settings, runtime: Runtime) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one that says what was asked and what to try, and empty the
    CUDA cache, so that the next run starts from a clean GPU. With CUDA graphs, whose memory pools the cache
    cannot empty, every graph is dropped first (the next run captures again)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        graphed = bool(graphed_stages(settings, runtime))
        if graphed:
            graphs.drop_all()
        gc.collect()
        torch.cuda.empty_cache()
        less = memory_mode(runtime.memory_mode).less_memory
        advice = "cuda_graphs False (its graphs keep memory of their own), " if graphed else ""
        advice += f"memory_mode {less} (less memory, slower), " if less else ""
        raise GenerationOutOfMemory(
            f"Out of GPU memory while generating {settings.num_images} picture(s) of {settings.width}x"
            f"{settings.height} in {settings.mode} with memory_mode {runtime.memory_mode}. Try {advice}fewer "
            "images or a smaller size. The GPU cache was emptied: the task can run again."
        ) from error


@contextmanager
def _explain_compile_failure(runtime: Runtime) -> Iterator[None]:
    """Turn a failure of torch.compile (no Triton, no C compiler, an unsupported operation) into an error
    that names compile_unet and says how to run without it."""
    try:
        yield
    except Exception as error:
        if runtime.compile_unet == "off":
            raise
        from torch._dynamo.exc import TorchDynamoException

        if not isinstance(error, TorchDynamoException):
            raise
        # A backend failure says only "backend='inductor' raised:"; the reason is its inner exception.
        reason = getattr(error, "inner_exception", None) or error
        raise CompileFailed(
            f"compile_unet: torch.compile in mode {runtime.compile_unet!r} failed on this machine: "
            f"{type(reason).__name__}: {first_line(reason).rstrip('.')}. Set compile_unet to off to run without "
            "compiling (the decoder is then loaded again)."
        ) from error


def _truncated_prompts(tokenizer: CLIPTokenizer, settings: Settings) -> dict[str, str]:
    """The part of each prompt that CLIP does not read (it reads 77 tokens), as diffusers truncates it."""
    truncated = {}
    for name in ("prompt", "negative_prompt", "negative_prior_prompt"):
        ids = tokenizer(getattr(settings, name), padding="longest").input_ids
        if len(ids) > tokenizer.model_max_length:
            # The first model_max_length - 1 tokens and the end token are kept.
            truncated[name] = tokenizer.decode(ids[tokenizer.model_max_length - 1 : -1])
            logger.warning(
                "infer_kandinsky_2_2: %s is longer than the %d tokens CLIP reads; left out: %r",
                name,
                tokenizer.model_max_length,
                truncated[name],
            )
    return truncated


def _decode(
    decoder: DiffusionPipeline,
    settings: Settings,
    prepared: Prepared,
    embeds: tuple[torch.Tensor, torch.Tensor],
    generator: torch.Generator,
    callback: Callable[..., dict],
    output_type: str = "np",
) -> np.ndarray | torch.Tensor:
    """Run the mode's decoder (its table entry's ``decode``) on the (image, negative) embeddings; return its float
    RGB images in [0, 1] (numpy, batch x height x width x 3); for ``output_type`` "pt", what every Kandinsky
    decoder pipeline returns then: the MoVQ's output as it is, a tensor on the device (batch x 3 x height x width,
    about -1 to 1), with paste_back off (it works on the numpy pictures).

    The prior made one embedding per picture; the input image, mask or hint is repeated to match, as
    diffusers' combined pipelines repeat theirs.
    """
    image_embeds, negative_image_embeds = embeds
    # Workaround (diffusers 0.40.0 to 0.42.1, tests/test_upstream.py): with guidance at 1, diffusers' decoders
    # do not cast the embeddings (nor the hint) to the UNet's dtype.
    unet_dtype = decoder.unet.dtype
    arguments = {
        "image_embeds": image_embeds.to(unet_dtype),
        "negative_image_embeds": negative_image_embeds.to(unet_dtype),
        "height": settings.height,
        "width": settings.width,
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        "generator": generator,
        "output_type": output_type,
    }
    with sampling(decoder, settings.scheduler) as pipeline:
        return MODES[settings.mode].decode(pipeline, settings, prepared, arguments, callback)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] to uint8, rounded as diffusers rounds its PIL output."""
    return (image * 255).round().astype(np.uint8)


def _step_callbacks(stage: str, on_step: StepCallback, should_stop: Callable[[], bool]) -> Callbacks:
    """Step callbacks of the runs of ``stage``: each reports its step, then stops the run when asked to."""

    def for_run(total: int) -> Callable[..., dict]:
        def callback(pipeline: object, step: int, timestep: object, tensors: dict) -> dict:
            on_step()
            if should_stop():
                raise GenerationStopped(
                    f"Generation stopped by the user after step {step + 1} of {total} of the {stage}."
                )
            return tensors

        return callback

    return for_run


def _synchronize(runtime: Runtime) -> None:
    if runtime.device == "cuda":
        torch.cuda.synchronize()
