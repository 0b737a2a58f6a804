"""Kandinsky 2.2 generation in every mode: the prior, then the decoder of the mode.

Each mode runs as diffusers' own pipelines run it (``KandinskyV22CombinedPipeline`` and its
img2img and inpaint siblings, the prior then the ControlNet pipeline, the prior's ``interpolate``
then the decoder), with one CPU generator made anew for every run, so a plugin image equals what
diffusers returns for the same arguments and seed. Where the task departs from diffusers, it is to
fix a diffusers bug, and the docstring of that step says which.
"""

import gc
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import diffusers
import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
)
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from transformers import CLIPTokenizer

from .images import InputError, as_rgb, depth_hint, fit, mask_from
from .models import MODEL_CACHE, ModelCache, ModelKey, Parking, first_line
from .parameters import (
    DEFAULT_CONTROLNET_DECODER,
    DEFAULT_DECODER,
    DEFAULT_INPAINT_DECODER,
    MAX_RANDOM_SEED,
    RANDOM_SEED,
    Settings,
)

logger = logging.getLogger(__name__)
StepCallback = Callable[[], None]


class GenerationStopped(RuntimeError):
    """The user asked to stop; the run ended after the current denoising step."""


class GenerationOutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message says what was asked and what to try."""


class CompileFailed(RuntimeError):
    """torch.compile could not compile the UNet on this machine; the message says how to run without it."""


# What an out-of-memory error suggests next. sequential_offload is not offered: at 768x768 on an H200 it
# peaked higher than model_offload (diffusers keeps the prior on the GPU in that mode), and 6x slower.
LESS_MEMORY = {"gpu": "model_offload", "prior_offload": "model_offload"}


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

        prior_offload places a decoder as gpu does, so switching between the two keeps the loaded (and
        maybe compiled) decoder.
        """
        placement = "gpu" if self.memory_mode == "prior_offload" else self.memory_mode
        return ModelKey(model_name, self.device, self.dtype, placement, self.compile_unet)


@dataclass(frozen=True)
class Inputs:
    """The images a run reads, as arrays (height x width, or height x width x channels); each mode reads its own.

    ``image``: img2img and inpaint. ``mask`` and ``drawn_mask``: inpaint, white where to repaint (the two are
    combined; one is enough). ``depth``: controlnet_depth. ``mix_images``: mix, in order.
    """

    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    drawn_mask: np.ndarray | None = None
    depth: np.ndarray | None = None
    mix_images: tuple[np.ndarray | None, ...] = ()


@dataclass(frozen=True)
class Decoder:
    """The decoder a mode uses: its cache role, its diffusers pipeline and its default repo."""

    role: str
    pipeline_class: type[DiffusionPipeline]
    default_model: str


DECODERS = {
    "text2img": Decoder("decoder", KandinskyV22Pipeline, DEFAULT_DECODER),
    "img2img": Decoder("decoder", KandinskyV22Pipeline, DEFAULT_DECODER),
    "mix": Decoder("decoder", KandinskyV22Pipeline, DEFAULT_DECODER),
    "inpaint": Decoder("inpaint_decoder", KandinskyV22InpaintPipeline, DEFAULT_INPAINT_DECODER),
    "controlnet_depth": Decoder("controlnet_decoder", KandinskyV22ControlnetPipeline, DEFAULT_CONTROLNET_DECODER),
}

DECODER_ROLES = tuple(dict.fromkeys(decoder.role for decoder in DECODERS.values()))

IMAGE_INPUT = "image"
DRAWING_INPUT = "mask drawing"
MASK_INPUT = "mask"
DEPTH_INPUT = "depth map"
# The inputs of each mode, in the order the Ikomia task offers them (mix's come from mix_images).
INPUT_NAMES = {
    "text2img": (),
    "img2img": (IMAGE_INPUT,),
    "inpaint": (IMAGE_INPUT, DRAWING_INPUT, MASK_INPUT),
    "controlnet_depth": (DEPTH_INPUT,),
}


def input_names(mode: str, mix_images: int) -> tuple[str, ...]:
    """The names of the inputs that ``mode`` reads (mix reads ``mix_images`` images)."""
    if mode == "mix":
        return tuple(f"image {index}" for index in range(1, mix_images + 1))
    return INPUT_NAMES[mode]


@dataclass(frozen=True)
class Generation:
    """The generated pictures (each height x width x 3, RGB uint8) and what produced them."""

    images: tuple[np.ndarray, ...]
    metadata: dict


@dataclass(frozen=True)
class Pipelines:
    """The loaded stages of one run, and the prior's models that visit the device only for the prior stage."""

    prior: KandinskyV22PriorPipeline
    decoder: DiffusionPipeline
    prior_parking: Parking


@dataclass
class Prepared:
    """A run's inputs at the output size, ready for the pipelines, and notes on what was done to them."""

    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    hint: torch.Tensor | None = None
    mix_images: tuple[Image.Image, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)


def choose_runtime(settings: Settings) -> Runtime:
    """CUDA in float16 with the chosen memory mode when asked for and present, else the CPU in float32.

    Offloading is never asked of diffusers without an accelerator, where it fails; compiling neither:
    on the CPU it needs a C++ compiler, and compiling even the tiny test UNet took 84 s on the
    development VM, for a speed-up not measured there.
    """
    if settings.cuda and torch.cuda.is_available():
        return Runtime(
            device="cuda",
            dtype=torch.float16,
            memory_mode=settings.memory_mode,
            compile_unet=settings.compile_unet,
        )
    if settings.cuda:
        return Runtime(device="cpu", dtype=torch.float32, note="cuda was requested but CUDA is not available")
    return Runtime(device="cpu", dtype=torch.float32)


def resolve_seed(seed: int) -> int:
    """The seed a run uses: the given one, or a fresh random one for -1."""
    return secrets.randbelow(MAX_RANDOM_SEED + 1) if seed == RANDOM_SEED else seed


def decoder_model_name(settings: Settings) -> str:
    """The decoder repo of the run: the mode's own default when model_name is left at its default."""
    if settings.model_name == DEFAULT_DECODER:
        return DECODERS[settings.mode].default_model
    return settings.model_name


def load_pipelines(settings: Settings, cache: ModelCache = MODEL_CACHE) -> Pipelines:
    """Load (or reuse) the prior and the decoder of the mode that ``settings`` ask for."""
    runtime = choose_runtime(settings)
    decoder = DECODERS[settings.mode]
    with cache.lock:
        if runtime.memory_mode not in ("gpu", "none"):
            # Modes that save memory keep no idle decoder on the GPU: the others leave it before this one is
            # placed or brought back (gpu keeps every decoder it has used there; a CPU run, "none", leaves
            # the GPU as it is).
            for role in DECODER_ROLES:
                if role != decoder.role:
                    cache.set_aside(role)
        prior = cache.get(
            "prior", KandinskyV22PriorPipeline, "prior_model_name", runtime.key(settings.prior_model_name)
        )
        decoder_pipeline = cache.get(
            decoder.role, decoder.pipeline_class, "model_name", runtime.decoder_key(decoder_model_name(settings))
        )
        return Pipelines(prior=prior, decoder=decoder_pipeline, prior_parking=cache.parking("prior"))


def prior_stage_models(mode: str) -> tuple[str, ...]:
    """The prior pipeline's models that a run of ``mode`` uses: only mix embeds images."""
    return ("text_encoder", "prior", "image_encoder") if mode == "mix" else ("text_encoder", "prior")


def decoder_steps(settings: Settings) -> int:
    """The denoising steps the decoder runs: img2img skips the start of the schedule."""
    return settings.img2img_steps() if settings.mode == "img2img" else settings.num_inference_steps


def progress_steps(settings: Settings) -> int:
    """How many step callbacks a run makes: one per denoising step of every prior run and of the decoder."""
    prior_runs = 1 + (1 if settings.prompt else 0) if settings.mode == "mix" else 1
    return settings.prior_num_inference_steps * prior_runs + decoder_steps(settings)


def prepare_inputs(settings: Settings, inputs: Inputs) -> Prepared:
    """Check and convert the inputs the mode reads; raise ``InputError`` naming a missing or unusable one."""
    mode, height, width = settings.mode, settings.height, settings.width
    runtime = choose_runtime(settings)
    prepared = Prepared()
    if mode in ("img2img", "inpaint"):
        image = as_rgb(inputs.image, f"{mode} input '{IMAGE_INPUT}'")
        fitted = fit(image, height, width)
        prepared.image, prepared.notes[IMAGE_INPUT] = fitted.array, fitted.note
    if mode == "inpaint":
        masks = [
            mask_from(array, f"inpaint input '{name}'", image.shape[:2], height, width)
            for name, array in ((DRAWING_INPUT, inputs.drawn_mask), (MASK_INPUT, inputs.mask))
            if array is not None and array.size
        ]
        if not masks:
            raise InputError(
                f"inpaint needs a mask, white where to repaint: draw it over the image (input '{DRAWING_INPUT}') "
                f"or give a mask image (input '{MASK_INPUT}')."
            )
        prepared.mask = np.maximum.reduce(masks)
    if mode == "controlnet_depth":
        prepared.hint, prepared.notes[DEPTH_INPUT] = depth_hint(
            inputs.depth, f"controlnet_depth input '{DEPTH_INPUT}'", height, width, runtime.device, runtime.dtype
        )
    if mode == "mix":
        names = input_names(mode, settings.mix_images)
        given = (*inputs.mix_images, *[None] * len(names))[: len(names)]
        prepared.mix_images = tuple(
            Image.fromarray(as_rgb(array, f"mix input '{name}'")) for name, array in zip(names, given, strict=True)
        )
    return prepared


def generate(
    settings: Settings,
    inputs: Inputs | Prepared = Inputs(),
    *,
    cache: ModelCache = MODEL_CACHE,
    on_step: StepCallback = lambda: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generation:
    """Generate ``settings.num_images`` pictures from ``settings`` and the ``inputs`` its mode reads.

    Args:
        settings: checked settings of the run.
        inputs: the input images (text2img reads none), or what ``prepare_inputs`` made of them.
        cache: where the pipelines are loaded once and shared.
        on_step: called after every denoising step of the prior and of the decoder.
        should_stop: polled after every step; when it returns True the run raises ``GenerationStopped``.
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
        truncated = _truncated_prompts(pipelines.prior.tokenizer, settings)
        generator = torch.Generator("cpu").manual_seed(seed)
        prior_callback = _step_callback("prior", settings.prior_num_inference_steps, on_step, should_stop)
        with pipelines.prior_parking.visit(*prior_stage_models(settings.mode)):
            embeds = _embeddings(pipelines.prior, settings, prepared, generator, prior_callback)
            _synchronize(runtime)
        prior_done = time.perf_counter()
        decoder_callback = _step_callback("decoder", decoder_steps(settings), on_step, should_stop)
        images = _decode(pipelines.decoder, settings, prepared, embeds, generator, decoder_callback)
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
        "device_note": runtime.note,
        "model_name": decoder_model_name(settings),
        "prior_model_name": settings.prior_model_name,
        "inputs": prepared.notes,
        "truncated": truncated,
        "seconds": {
            "load": round(loaded - started, 4),
            "prior": round(prior_done - loaded, 4),
            "decoder": round(decoded - prior_done, 4),
            "total": round(decoded - started, 4),
        },
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }
    return Generation(images=tuple(to_uint8(image) for image in images), metadata=metadata)


@contextmanager
def _explain_out_of_memory(settings: Settings, runtime: Runtime) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one that says what was asked and what to try, and empty the
    CUDA cache, so that the next run starts from a clean GPU."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        gc.collect()
        torch.cuda.empty_cache()
        less = LESS_MEMORY.get(runtime.memory_mode)
        advice = f"memory_mode {less} (less memory, slower), " if less else ""
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
    for name in ("prompt", "negative_prompt"):
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


def _embeddings(
    prior: KandinskyV22PriorPipeline,
    settings: Settings,
    prepared: Prepared,
    generator: torch.Generator,
    callback: Callable[..., dict],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior stage: the image embedding of every picture, and the negative embeddings."""
    if settings.mode == "mix":
        return _mix_embeddings(prior, settings, prepared.mix_images, generator, callback)
    return prior(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt or None,
        num_images_per_prompt=settings.num_images,
        num_inference_steps=settings.prior_num_inference_steps,
        guidance_scale=settings.prior_guidance_scale,
        generator=generator,
        output_type="pt",
        return_dict=False,
        callback_on_step_end=callback,
    )


def _mix_embeddings(
    prior: KandinskyV22PriorPipeline,
    settings: Settings,
    images: tuple[Image.Image, ...],
    generator: torch.Generator,
    callback: Callable[..., dict],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sum of the items' image embeddings, and the negative embedding.

    This is ``KandinskyV22PriorPipeline.interpolate`` step for step (the images, then the prompt), with the
    step callback passed to every prior run, which ``interpolate`` cannot do: progress and stop then work in
    mix as in every other mode. An empty negative prompt gives the zero-image embedding as the negative.
    """
    items: list[Image.Image | str] = [*images, *([settings.prompt] if settings.prompt else [])]
    prior_arguments = {
        "num_images_per_prompt": settings.num_images,
        "num_inference_steps": settings.prior_num_inference_steps,
        "guidance_scale": settings.prior_guidance_scale,
        "generator": generator,
        "callback_on_step_end": callback,
    }
    weighted = []
    for item, weight in zip(items, settings.mix_weight_values(), strict=True):
        if isinstance(item, str):
            embedding = prior(item, **prior_arguments).image_embeds.unsqueeze(0)
        else:
            pixels = prior.image_processor(item, return_tensors="pt").pixel_values[0].unsqueeze(0)
            # The prior transformer is on the device in every memory mode here (diffusers never offloads it),
            # where the image encoder's own device may say cpu, or meta under sequential offload.
            pixels = pixels.to(dtype=prior.image_encoder.dtype, device=prior.device)
            embedding = prior.image_encoder(pixels)["image_embeds"].repeat(settings.num_images, 1).unsqueeze(0)
        weighted.append(embedding * weight)
    negative = prior(settings.negative_prompt, **prior_arguments)
    negative_embeds = negative.negative_image_embeds if settings.negative_prompt == "" else negative.image_embeds
    return torch.cat(weighted).sum(dim=0), negative_embeds


def _decode(
    decoder: DiffusionPipeline,
    settings: Settings,
    prepared: Prepared,
    embeds: tuple[torch.Tensor, torch.Tensor],
    generator: torch.Generator,
    callback: Callable[..., dict],
) -> np.ndarray:
    """Run the mode's decoder on the (image, negative) embeddings; return its float RGB images in [0, 1].

    The prior made one embedding per picture; the input image, mask or hint is repeated to match, as
    diffusers' combined pipelines repeat theirs.
    """
    image_embeds, negative_image_embeds = embeds
    count = settings.num_images
    # With guidance at 1, diffusers' decoders do not cast the embeddings (nor the hint) to the UNet's dtype.
    unet_dtype = decoder.unet.dtype
    arguments = {
        "image_embeds": image_embeds.to(unet_dtype),
        "negative_image_embeds": negative_image_embeds.to(unet_dtype),
        "height": settings.height,
        "width": settings.width,
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        "generator": generator,
        "output_type": "np",
    }
    if settings.mode == "controlnet_depth":
        # diffusers' ControlNet pipelines take only the legacy per-step callback.
        return decoder(
            **arguments,
            hint=prepared.hint.repeat(count, 1, 1, 1),
            callback=lambda step, timestep, latents: callback(decoder, step, timestep, {}),
            callback_steps=1,
        ).images
    if settings.mode == "img2img":
        decoder = _img2img_pipeline(decoder)
        arguments.update(image=[Image.fromarray(prepared.image)] * count, strength=settings.strength)
    elif settings.mode == "inpaint":
        arguments.update(image=[prepared.image] * count, mask_image=[prepared.mask] * count)
    return decoder(**arguments, callback_on_step_end=callback).images


def _img2img_pipeline(decoder: KandinskyV22Pipeline) -> KandinskyV22Img2ImgPipeline:
    """An img2img pipeline over the text2img decoder's own components: nothing is loaded again.

    diffusers' img2img resizer is called with height and width swapped (asked for 64 tall x 128 wide, it
    returns 64 wide x 128 tall), so it is replaced by one that does not resize: the input already has
    the output size (see ``images.fit``).
    """
    pipeline = KandinskyV22Img2ImgPipeline(**decoder.components)
    pipeline.image_processor = VaeImageProcessor(
        vae_scale_factor=2 ** (len(decoder.movq.config.block_out_channels) - 1),
        vae_latent_channels=decoder.movq.config.latent_channels,
        do_resize=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] to uint8, rounded as diffusers rounds its PIL output."""
    return (image * 255).round().astype(np.uint8)


def _step_callback(
    stage: str, total: int, on_step: StepCallback, should_stop: Callable[[], bool]
) -> Callable[..., dict]:
    def callback(pipeline: object, step: int, timestep: object, tensors: dict) -> dict:
        on_step()
        if should_stop():
            raise GenerationStopped(f"Generation stopped by the user after step {step + 1} of {total} of the {stage}.")
        return tensors

    return callback


def _synchronize(runtime: Runtime) -> None:
    if runtime.device == "cuda":
        torch.cuda.synchronize()
