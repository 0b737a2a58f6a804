"""Text-to-image generation with Kandinsky 2.2: the prior, then the decoder.

The two stages run as diffusers' ``KandinskyV22CombinedPipeline`` runs them, with one CPU
generator made anew for every run, so a plugin image equals what diffusers returns for the same
arguments and seed. Loading the stages separately keeps each one cached on its own.
"""

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import numpy as np
import torch
from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

from .models import MODEL_CACHE, ModelCache, ModelKey
from .parameters import MAX_RANDOM_SEED, RANDOM_SEED, Settings

logger = logging.getLogger(__name__)


class GenerationStopped(RuntimeError):
    """The user asked to stop; the run ended after the current denoising step."""


@dataclass(frozen=True)
class Runtime:
    """Where the models run, and why there when it is not where the user asked."""

    device: str
    dtype: torch.dtype
    note: str = ""


@dataclass(frozen=True)
class Generation:
    """One generated image (height x width x 3, RGB uint8) and what produced it."""

    image: np.ndarray
    metadata: dict


@dataclass(frozen=True)
class Pipelines:
    """The loaded stages of one run."""

    prior: KandinskyV22PriorPipeline
    decoder: KandinskyV22Pipeline


def choose_runtime(cuda: bool) -> Runtime:
    """CUDA in float16 when asked for and present, else the CPU in float32."""
    if cuda and torch.cuda.is_available():
        return Runtime(device="cuda", dtype=torch.float16)
    if cuda:
        return Runtime(device="cpu", dtype=torch.float32, note="cuda was requested but CUDA is not available")
    return Runtime(device="cpu", dtype=torch.float32)


def resolve_seed(seed: int) -> int:
    """The seed a run uses: the given one, or a fresh random one for -1."""
    return secrets.randbelow(MAX_RANDOM_SEED + 1) if seed == RANDOM_SEED else seed


def load_pipelines(settings: Settings, cache: ModelCache = MODEL_CACHE) -> Pipelines:
    """Load (or reuse) the prior and decoder that ``settings`` ask for."""
    runtime = choose_runtime(settings.cuda)
    with cache.lock:
        prior = cache.get(
            "prior",
            KandinskyV22PriorPipeline,
            "prior_model_name",
            ModelKey(settings.prior_model_name, runtime.device, runtime.dtype),
        )
        decoder = cache.get(
            "decoder",
            KandinskyV22Pipeline,
            "model_name",
            ModelKey(settings.model_name, runtime.device, runtime.dtype),
        )
    return Pipelines(prior=prior, decoder=decoder)


def progress_steps(settings: Settings) -> int:
    """How many step callbacks a run makes: one per prior step and one per decoder step."""
    return settings.prior_num_inference_steps + settings.num_inference_steps


def generate(
    settings: Settings,
    *,
    cache: ModelCache = MODEL_CACHE,
    on_step: Callable[[], None] = lambda: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generation:
    """Generate one image from ``settings``.

    Args:
        settings: checked settings of the run.
        cache: where the pipelines are loaded once and shared.
        on_step: called after every denoising step of the prior and of the decoder.
        should_stop: polled after every step; when it returns True the run raises ``GenerationStopped``.
    """
    runtime = choose_runtime(settings.cuda)
    if runtime.note:
        logger.warning("infer_kandinsky_2_2: %s; running on the CPU in float32.", runtime.note)
    seed = resolve_seed(settings.seed)
    with cache.lock:
        started = time.perf_counter()
        pipelines = load_pipelines(settings, cache)
        loaded = time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(seed)
        image_embeds, negative_image_embeds = pipelines.prior(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt or None,
            num_inference_steps=settings.prior_num_inference_steps,
            guidance_scale=settings.prior_guidance_scale,
            generator=generator,
            output_type="pt",
            return_dict=False,
            callback_on_step_end=_step_callback("prior", settings.prior_num_inference_steps, on_step, should_stop),
        )
        _synchronize(runtime)
        prior_done = time.perf_counter()
        # With guidance at 1 diffusers' decoder does not cast the embeddings to the UNet's dtype.
        unet_dtype = pipelines.decoder.unet.dtype
        images = pipelines.decoder(
            image_embeds=image_embeds.to(unet_dtype),
            negative_image_embeds=negative_image_embeds.to(unet_dtype),
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            generator=generator,
            output_type="np",
            callback_on_step_end=_step_callback("decoder", settings.num_inference_steps, on_step, should_stop),
        ).images
        decoded = time.perf_counter()
    metadata = {
        "seed": seed,
        "random_seed": settings.seed == RANDOM_SEED,
        "device": runtime.device,
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "device_note": runtime.note,
        "model_name": settings.model_name,
        "prior_model_name": settings.prior_model_name,
        "seconds": {
            "load": round(loaded - started, 4),
            "prior": round(prior_done - loaded, 4),
            "decoder": round(decoded - prior_done, 4),
            "total": round(decoded - started, 4),
        },
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }
    return Generation(image=to_uint8(images[0]), metadata=metadata)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] to uint8, rounded as diffusers rounds its PIL output."""
    return (image * 255).round().astype(np.uint8)


def _step_callback(
    stage: str, total: int, on_step: Callable[[], None], should_stop: Callable[[], bool]
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
