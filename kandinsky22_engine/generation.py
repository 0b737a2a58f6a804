"""Kandinsky 2.2 generation in every mode: the models loaded, the prior stage, then the decoder, in the engine's
own loops (``stages``).

A run is what ``generate`` does, in order: the runtime chosen (once, or given), the inputs prepared, the models
loaded or reused (``load_models``), depth_model's estimate where the mode reads a depth map, one CPU generator
seeded for the run, the mode's prior stage, the decoder's loop and the MoVQ decode, then the pictures as uint8
and the run's metadata. The same seed draws the same random numbers in the same order as diffusers' own
pipelines, so a picture equals what diffusers returns for the same arguments (tests/test_modes.py and the others
compare them).
"""

import gc
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import diffusers
import numpy as np
import torch
from diffusers import KandinskyV22PriorPipeline
from PIL import Image
from transformers import CLIPTokenizer

from . import devices, graphs
from .constants import DEFAULT_DECODER
from .errors import CompileFailed, GenerationOutOfMemory, GenerationStopped, NotFinite, SettingsError
from .hub import first_line
from .images import paste_back
from .inputs import NO_INPUTS, Inputs, Prepared, estimate_depth, prepare_inputs
from .lora import DECODER, MODEL_NAMES, PRIOR, LoraFile, apply, assign_models, read_loras
from .memory import DECODER_ROLE, PRIOR_ROLE, memory_mode
from .models import (
    DEPTH_ESTIMATOR,
    IMAGE_ENCODER,
    IMAGE_ENCODER_LOADER,
    DepthEstimatorLoader,
    ModelCache,
    PipelineLoader,
    cache_for,
    lora_device,
)
from .modes import DECODER_ROLES, IMAGE_INPUT, MODES, embedded_input_names, estimates_depth
from .parameters import MAX_RANDOM_SEED, RANDOM_SEED, Settings
from .repos import check_decoder, check_depth_model, check_prior
from .runtime import Models, Runtime, choose_runtime, graph_plan
from .schedulers import model_calls, scheduler_for, timesteps_on_host
from .stages import DecoderModels, Embeddings, PriorModels, PriorRequest, StepCallback, decode, to_pictures

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """The generated pictures (each height x width x 3, RGB uint8) and what produced them."""

    images: tuple[np.ndarray, ...]
    metadata: dict


def runtime_for(settings: Settings) -> Runtime:
    """The runtime ``settings`` ask for (``runtime.choose_runtime``: the GPU ``cuda_device`` in float16 where CUDA
    is asked for and present, else the CPU in float32). Raises ``SettingsError`` for a ``cuda_device`` past the GPUs
    torch sees, and ``CompileFailed`` for CUDA graphs this torch cannot capture in this thread."""
    return choose_runtime(settings.cuda, settings.memory_mode, settings.compile_unet, settings.cuda_device)


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


def load_models(settings: Settings, runtime: Runtime, cache: ModelCache | None = None) -> Models:
    """Load (or reuse) the decoder of the mode that ``settings`` ask for, the prior, the image encoder if the run
    needs it (``needs_image_encoder``), and depth_model's depth estimator if the run estimates its depth map
    (``modes.estimates_depth``).

    Every model that is not loaded yet is found and its configs read first, the decoder first: a wrong or
    missing model (a repo that cannot serve the mode, a misspelt prior, an image encoder not in an offline
    cache) is refused before any weights are fetched or loaded (``repos``). A model already in ``cache`` for the
    same key is reused as it is; one with another key replaces it (``ModelCache.get``).

    Args:
        settings: checked settings; the mode and the model names are read.
        runtime: where the models run (device, dtype, memory and compile modes).
        cache: where the models live, by default the runtime's device's (``models.cache_for``); its lock is held
            while loading.

    Returns:
        ``Models``: the prior and the mode's decoder, placed and in the runtime's dtype (float16 on CUDA, float32
        on the CPU); the prior's models that visit the device for its stage only; the image encoder or None; the
        depth estimator or None.

    Raises:
        ModelLoadError: a model that cannot be found, fetched or loaded, or that cannot serve the mode (or, for
            depth_model, is no depth-estimation model); the message names the parameter (``model_name``,
            ``prior_model_name`` or ``depth_model``) and the value. The roles loaded before the failure stay
            usable, the failing one holds nothing.
    """
    decoder = MODES[settings.mode].decoder
    cache = cache_for(runtime.device) if cache is None else cache
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
                PRIOR_ROLE,
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
        return Models(
            loaded[PRIOR_ROLE],
            loaded[decoder.role],
            cache.parking(PRIOR_ROLE),
            loaded.get(IMAGE_ENCODER),
            loaded.get(DEPTH_ESTIMATOR),
        )


def use_loras(models: Models, loras: tuple[LoraFile, ...], settings: Settings, runtime: Runtime) -> list[dict]:
    """Give the run's decoder UNet and prior transformer exactly the LoRAs of ``loras`` (``lora.apply``): those
    that earlier runs left and this one does not ask for are removed, with nothing else reloaded.

    Returns the metadata's ``lora``: for each entry, the entry, its file, its scale and the models it changed.

    Raises ``ModelLoadError`` for a LoRA that does not fit its model (``lora.assign_models``), and
    ``SettingsError`` for a decoder LoRA with compile_unet on, before any change.
    """
    targets = {DECODER: models.decoder.unet, PRIOR: models.prior.prior}
    described = {
        DECODER: f"the UNet of the decoder of {settings.mode} ({decoder_model_name(settings)!r})",
        PRIOR: f"the prior transformer of {settings.prior_model_name!r}",
    }
    assigned = assign_models(loras, targets, described)
    if assigned[DECODER] and runtime.compile_unet != "off":
        raise SettingsError(
            f"lora: {assigned[DECODER][0][0].entry!r} changes the decoder's UNet, which compile_unet "
            f"{runtime.compile_unet!r} compiles as it is; accepted: compile_unet off with a decoder LoRA "
            "(cuda_graphs replays the UNet with its LoRAs)."
        )
    device = lora_device(runtime.key(settings.prior_model_name))
    for target, model in targets.items():
        apply(model, assigned[target], device, runtime.dtype)
    return [
        {
            "lora": lora.entry,
            "file": str(lora.path),
            "scale": lora.scale,
            "models": [
                MODEL_NAMES[target] for target in (DECODER, PRIOR) if any(each is lora for each, _ in assigned[target])
            ],
        }
        for lora in loras
    ]


def prior_request(settings: Settings, prepared: Prepared | None = None) -> PriorRequest:
    """What the prior stage of a run is asked for (``stages.PriorRequest``), from ``settings`` and the prepared
    images it embeds (controlnet_img2img's image, mix's pictures); without ``prepared``, enough to count the
    steps."""
    image = prepared.image if prepared is not None and IMAGE_INPUT in MODES[settings.mode].embedded_inputs else None
    return PriorRequest(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        negative_prior_prompt=settings.negative_prior_prompt,
        num_images=settings.num_images,
        num_inference_steps=settings.prior_num_inference_steps,
        guidance_scale=settings.prior_guidance_scale,
        strength=settings.prior_strength if settings.reads("prior_strength") else 1.0,
        image=None if image is None else Image.fromarray(image),
        mix_images=prepared.mix_images if prepared is not None else (),
        mix_weights=settings.mix_weight_values() if settings.reads("mix_weights") else (),
    )


def progress_steps(settings: Settings) -> int:
    """How many step callbacks a run makes: one per denoising step of every prior loop and per UNet call of the
    decoder."""
    return sum(MODES[settings.mode].prior.runs(prior_request(settings))) + decoder_calls(settings)


def decoder_calls(settings: Settings) -> int:
    """The decoder's step callbacks in a run: one per UNet call of its sampler over the steps the mode runs
    (``schedulers.model_calls``)."""
    strength = settings.strength if MODES[settings.mode].image_to_image else 1.0
    return model_calls(settings.scheduler, settings.num_inference_steps, strength)


def run_prior(
    models: Models,
    settings: Settings,
    prepared: Prepared,
    runtime: Runtime,
    generator: torch.Generator,
    callback: StepCallback,
    graphed: bool = False,
) -> Embeddings:
    """The mode's prior stage (``stages``): the image embedding of each picture and the negative embedding,
    (num_images, embedding size) each on the device; the prior transformer's forward replayed from CUDA graphs
    when ``graphed``."""
    prior = models.prior
    parts = PriorModels(
        prior.tokenizer,
        prior.text_encoder,
        prior.prior,
        prior.scheduler,
        prior.image_processor,
        models.image_encoder,
        runtime.device,
        graphs.forward(prior.prior, graphed),
    )
    embeds = MODES[settings.mode].prior.run(parts, prior_request(settings, prepared), generator, callback)
    # What diffusers' pipelines do at the end of a call: under model_offload, every model leaves the device.
    prior.maybe_free_model_hooks()
    return embeds


def run_decoder(
    models: Models,
    settings: Settings,
    prepared: Prepared,
    runtime: Runtime,
    embeds: Embeddings,
    generator: torch.Generator,
    callback: StepCallback,
    graphed: bool = False,
) -> torch.Tensor:
    """The decoder's loop and the MoVQ decode (``stages.decode``) with the run's sampler, from the prior's
    embeddings and the prepared inputs the mode reads: the pictures, (num_images, 3, height, width) on the device,
    about -1 to 1; the UNet's forward replayed from CUDA graphs when ``graphed``."""
    decoder, mode, count = models.decoder, MODES[settings.mode], settings.num_images
    parts = DecoderModels(
        decoder.unet,
        decoder.movq,
        scheduler_for(settings.scheduler, decoder.scheduler),
        runtime.device,
        "cpu" if timesteps_on_host(settings.scheduler) else runtime.device,
        graphs.forward(decoder.unet, graphed),
    )
    decoded = decode(
        parts,
        image_embeds=embeds[0],
        negative_image_embeds=embeds[1],
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        generator=generator,
        callback=callback,
        image=prepared.image if mode.image_to_image or prepared.mask is not None else None,
        strength=settings.strength if mode.image_to_image else 1.0,
        mask=prepared.mask,
        hint=None if prepared.hint is None else prepared.hint.repeat(count, 1, 1, 1),
    )
    decoder.maybe_free_model_hooks()
    return decoded


def generate(
    settings: Settings,
    inputs: Inputs | Prepared = NO_INPUTS,
    *,
    runtime: Runtime | None = None,
    cache: ModelCache | None = None,
    on_step: Callable[[], None] = lambda: None,
    should_stop: Callable[[], bool] = lambda: False,
    seconds_loading_before: float = 0.0,
) -> Generation:
    """Generate ``settings.num_images`` pictures from ``settings`` and the ``inputs`` its mode reads.

    Args:
        settings: checked settings of the run.
        inputs: the input images (text2img reads none), or what ``prepare_inputs`` made of them.
        runtime: where the run computes; chosen from ``settings`` (``runtime_for``) when None.
        cache: where the models are loaded once and shared; by default the runtime's device's
            (``models.cache_for``): runs on two GPUs hold their own models and do not wait for each other.
        on_step: called after every denoising step of the prior and of the decoder.
        should_stop: polled after every step; when it returns True the run raises ``GenerationStopped``.
        seconds_loading_before: seconds this run already spent loading the models before this call (Ikomia
            calls the task's ``init_long_process`` from the first run's ``begin_task_run``); the metadata's
            ``seconds.load`` and ``seconds.total`` count them.

    Returns:
        ``Generation``: ``images``, ``settings.num_images`` arrays of height x width x 3 RGB uint8, and
        ``metadata``: the mode, the seed used (drawn when ``settings.seed`` is -1), the device ("cpu", "cuda:1"),
        dtype, memory and compile modes, the stages replayed from CUDA graphs, the sampler, the model names, the
        LoRAs applied (``use_loras``), notes on the inputs and truncated prompts, the seconds spent loading and in
        each stage, and the diffusers and torch versions.

    Raises:
        SettingsError: a ``cuda_device`` past the GPUs torch sees, when the runtime is chosen here (before any
            model work); a decoder LoRA with compile_unet on (before any step).
        InputError: a missing or unusable input (before any model is loaded), or a depth map that depth_model
            estimates uniform (``inputs.estimate_depth``).
        ModelLoadError: a model that cannot be found, fetched or loaded (see ``load_models``); a LoRA that cannot
            be found or read (before any model is loaded) or that does not fit its model (before any step).
        GenerationStopped: ``should_stop`` returned True; the message says after which step of which stage.
        GenerationOutOfMemory: the device ran out of memory; the message suggests a memory_mode, size or
            batch that fits.
        CompileFailed: torch.compile failed, or cannot capture CUDA graphs in this thread; the message says
            to set compile_unet to off.
        GraphCaptureFailed: with cuda_graphs on, a forward pass could not be captured; the message says to set
            cuda_graphs to False.
        NotFinite: the prior or the decoder produced NaN or infinite values (float16 overflow, broken weights).

    The cache stays usable after each error: the next run reuses what was loaded.
    """
    runtime = runtime or runtime_for(settings)
    if runtime.note:
        logger.warning("infer_kandinsky_2_2: %s; running on the CPU in float32.", runtime.note)
    prepared = inputs if isinstance(inputs, Prepared) else prepare_inputs(settings, inputs, runtime)
    loras = read_loras(settings.lora_entries(), settings.lora_scale_values())
    seed = resolve_seed(settings.seed)
    plan = graph_plan(settings.cuda_graphs, runtime)
    graphed = tuple(stage for stage, why in plan.items() if not why)
    cache = cache_for(runtime.device) if cache is None else cache
    with (
        cache.lock,
        devices.current(runtime.device),
        torch.no_grad(),
        _explain_out_of_memory(settings, runtime),
        _explain_compile_failure(runtime),
    ):
        started = time.perf_counter()
        models = load_models(settings, runtime, cache)
        applied = use_loras(models, loras, settings, runtime)
        devices.synchronize(runtime.device)
        loaded = time.perf_counter()
        if models.depth_estimator is not None:
            prepared = estimate_depth(models.depth_estimator, settings, prepared, runtime)
        truncated = _truncated_prompts(models.prior.tokenizer, settings)
        generator = torch.Generator("cpu").manual_seed(seed)
        for stage, why in plan.items():
            if why:
                logger.warning(
                    "infer_kandinsky_2_2: cuda_graphs: the %s stage runs without CUDA graphs: %s.", stage, why
                )
        with models.prior_parking.visit(*models.prior_parking.names):
            prior_callback = _step_callback("prior", on_step, should_stop)
            embeds = run_prior(models, settings, prepared, runtime, generator, prior_callback, PRIOR_ROLE in graphed)
            devices.synchronize(runtime.device)
        _refuse_not_finite(embeds, "prior", settings, runtime)
        prior_done = time.perf_counter()
        decoder_callback = _step_callback("decoder", on_step, should_stop)
        decoded = run_decoder(
            models, settings, prepared, runtime, embeds, generator, decoder_callback, DECODER_ROLE in graphed
        )
        # Checked before the pictures are clamped to 0..1, which would turn infinity into white or black.
        _refuse_not_finite((decoded,), "decoder", settings, runtime)
        pictures = to_pictures(decoded)
        if settings.reads("paste_back") and settings.paste_back:
            pictures = paste_back(pictures, prepared.image, prepared.mask)
        decoded_at = time.perf_counter()
    metadata = {
        "mode": settings.mode,
        "num_images": settings.num_images,
        "seed": seed,
        "random_seed": settings.seed == RANDOM_SEED,
        "device": runtime.device,
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "memory_mode": runtime.memory_mode,
        "compile_unet": runtime.compile_unet,
        "cuda_graphs": list(graphed),
        "scheduler": settings.scheduler,
        "device_note": runtime.note,
        "model_name": decoder_model_name(settings),
        "prior_model_name": settings.prior_model_name,
        "lora": applied,
        "inputs": _input_notes(settings, prepared, models.prior),
        "truncated": truncated,
        "seconds": {
            "load": round(seconds_loading_before + loaded - started, 4),
            "prior": round(prior_done - loaded, 4),
            "decoder": round(decoded_at - prior_done, 4),
            "total": round(seconds_loading_before + decoded_at - started, 4),
        },
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }
    return Generation(images=tuple(to_uint8(picture) for picture in pictures), metadata=metadata)


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


def _refuse_not_finite(values: tuple[torch.Tensor, ...], stage: str, settings: Settings, runtime: Runtime) -> None:
    """Raise ``NotFinite`` when a stage's output holds NaN or infinity, which would make a black or white picture.

    ``values``: the prior's (image, negative) embeddings, or the decoder's output as the MoVQ gives it, before
    any clamp, (``decoded``,); the first axis of each is the picture.
    """
    bad = [
        index for index in range(settings.num_images) if not all(torch.isfinite(each[index]).all() for each in values)
    ]
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
        f"{settings.num_images}, so no picture is returned (it would be black or white). {advice}"
    )


@contextmanager
def _explain_out_of_memory(settings: Settings, runtime: Runtime) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one that says what was asked and what to try, and empty the
    CUDA cache, so that the next run starts from a clean GPU. With CUDA graphs, whose memory pools the cache
    cannot empty, every graph on the run's GPU is dropped first (the next run captures again); the other GPUs'
    stay."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        graphed = any(not why for why in graph_plan(settings.cuda_graphs, runtime).values())
        if graphed:
            graphs.drop_on(runtime.device)
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


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] to uint8, rounded as diffusers rounds its PIL output."""
    return (image * 255).round().astype(np.uint8)


def _step_callback(stage: str, on_step: Callable[[], None], should_stop: Callable[[], bool]) -> StepCallback:
    """The step callback of ``stage``'s loops: it reports the step, then stops the run when asked to."""

    def callback(index: int, total: int) -> None:
        on_step()
        if should_stop():
            raise GenerationStopped(f"Generation stopped by the user after step {index + 1} of {total} of the {stage}.")

    return callback
