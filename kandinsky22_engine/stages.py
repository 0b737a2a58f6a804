"""The stages of a Kandinsky 2.2 run, each a plain loop over diffusers' models and schedulers.

The prior turns text (or an image's CLIP embedding) into the image embedding the decoder is conditioned on:
``text_prior``, ``image_prior`` (controlnet_img2img's, from the input image) and ``mix_prior`` (mix's weighted sum),
each over ``prior_loop``. The decoder turns the embeddings into pictures: ``decode`` serves every decoder kind
(plain, image-to-image, inpaint and outpaint, ControlNet, ControlNet image-to-image) with one loop, then the
MoVQ decodes the latents.

The loops follow diffusers' Kandinsky 2.2 pipelines (``KandinskyV22PriorPipeline`` and its emb2emb sibling,
``KandinskyV22Pipeline`` and its img2img, inpaint and ControlNet siblings, diffusers 0.40.0 to 0.42.1) operation
for operation, and draw from the generator in the same order, so that the same seed gives the same picture; the
tests compare them with those pipelines. Where a loop departs from them on purpose, a comment says why and names
the test that shows it. The models run without autograd (``torch.no_grad``), as in those pipelines.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, VQModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPImageProcessor, CLIPTextModelWithProjection, CLIPTokenizer

from .models import ImageEncoder
from .schedulers import first_step, set_schedule, step_options, steps_at

# Called after every step of a loop with the step's index (0 for the first) and the loop's count of steps.
StepCallback = Callable[[int, int], None]
# The image embedding of each picture and the negative embedding, (num_images, embedding size) each.
Embeddings = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PriorModels:
    """What the prior stages call: the prior repo's models, the image encoder (loaded only when a run needs it),
    the device, and ``forward``, what is called for the prior transformer (itself, or its CUDA graph replay)."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModelWithProjection
    transformer: PriorTransformer
    scheduler: UnCLIPScheduler
    image_processor: CLIPImageProcessor
    image_encoder: ImageEncoder | None
    device: str
    forward: Callable[..., object]


@dataclass(frozen=True)
class PriorRequest:
    """What the prior stage of a run is asked for.

    Attributes:
        prompt: the text to embed (mix: the last item, when not empty).
        negative_prompt: the decoder's negative text; empty for the zero-image embedding.
        negative_prior_prompt: what the prompt's embedding is guided away from; empty: the negative prompt in
            text_prior, the empty text in the other stages.
        num_images: pictures in the batch, 1 or more.
        num_inference_steps: the prior's schedule, 2 or more steps.
        guidance_scale: classifier-free guidance, on above 1.
        strength: image_prior: the part of the schedule run from the image's embedding, in (0, 1].
        image: image_prior: the picture whose CLIP embedding the prior starts from.
        mix_images: mix_prior: the pictures mixed, before the prompt.
        mix_weights: mix_prior: one weight per picture, then one for the prompt when it is not empty.
    """

    prompt: str
    negative_prompt: str
    negative_prior_prompt: str
    num_images: int
    num_inference_steps: int
    guidance_scale: float
    strength: float = 1.0
    image: Image.Image | None = None
    mix_images: tuple[Image.Image, ...] = ()
    mix_weights: tuple[float, ...] = ()


class PriorRun(NamedTuple):
    """The embeddings one prior loop made: the prompt's image embeddings, and the negative text's when it was in
    the batch (None otherwise), (num_images, embedding size) each."""

    image_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None


@torch.no_grad()
def encode_text(
    models: PriorModels, texts: list[str], num_images: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CLIP text encoding of ``texts``, each repeated ``num_images`` times, as the prior reads it
    (``KandinskyV22PriorPipeline._encode_prompt``): the projected embeddings (batch, projection size), the last
    hidden states (batch, 77, hidden size) and the attention mask (batch, 77, bool), on the device. CLIP reads
    77 tokens; the rest is cut off."""
    tokens = models.tokenizer(
        texts, padding="max_length", max_length=models.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    encoded = models.text_encoder(tokens.input_ids.to(models.device))
    mask = tokens.attention_mask.bool().to(models.device)
    return (
        encoded.text_embeds.repeat_interleave(num_images, dim=0),
        encoded.last_hidden_state.repeat_interleave(num_images, dim=0),
        mask.repeat_interleave(num_images, dim=0),
    )


@torch.no_grad()
def prior_loop(
    models: PriorModels,
    request: PriorRequest,
    prompt: str,
    negative: str | None,
    generator: torch.Generator,
    callback: StepCallback,
    start: torch.Tensor | None = None,
    strength: float = 1.0,
) -> PriorRun:
    """One run of the prior: the image embedding of ``prompt``, guided away from ``negative``.

    As ``KandinskyV22PriorPipeline.__call__`` (``KandinskyV22PriorEmb2EmbPipeline.__call__`` when ``start`` is
    given): with a negative text, the batch holds the prompt and the negative both, each guided away from the
    negative, and the negative's embedding is returned too; without one, the prompt is guided away from the empty
    text. With ``start``, the loop runs the last ``strength`` of the schedule (its first 1 - strength skipped),
    from ``start`` noised to the level it begins at, as diffusers noises it (the embedding as it comes, not
    normalised).

    Args:
        models: the prior's models.
        request: the batch (``num_images``), steps and guidance.
        prompt: the text to embed.
        negative: the text to guide away from, or None.
        generator: the CPU generator all random draws come from.
        callback: called after every step.
        start: (1, embedding size), a CLIP image embedding on the device, or None to start from noise.
        strength: with ``start``, the part of the schedule to run, in (0, 1].

    Returns:
        ``PriorRun``: (num_images, embedding size) on the device, in the text encoder's dtype.
    """
    texts = [prompt] if negative is None else [prompt, negative]
    guided = request.guidance_scale > 1
    embeds, hidden_states, mask = encode_text(models, texts, request.num_images)
    if guided:
        unguided = encode_text(models, [negative or ""] * len(texts), request.num_images)
        embeds, hidden_states, mask = (
            torch.cat(pair) for pair in zip(unguided, (embeds, hidden_states, mask), strict=True)
        )
    batch = len(texts) * request.num_images
    scheduler = models.scheduler
    # The schedule stays in CPU memory: no step reads a value on the device (schedulers.timesteps_on_host).
    scheduler.set_timesteps(request.num_inference_steps, device="cpu")
    timesteps = scheduler.timesteps
    if start is None:
        shape = (batch, models.transformer.config.embedding_dim)
        latents = randn_tensor(shape, generator=generator, device=models.device, dtype=embeds.dtype)
        latents = latents * scheduler.init_noise_sigma
    else:
        timesteps = timesteps[request.num_inference_steps - steps_at(request.num_inference_steps, strength) :]
        latents = start.to(device=models.device, dtype=embeds.dtype).repeat(batch, 1)
        noise = randn_tensor(latents.shape, generator=generator, device=models.device, dtype=embeds.dtype)
        latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch))
    for index, timestep in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if guided else latents
        predicted = models.forward(
            model_input,
            timestep=timestep,
            proj_embedding=embeds,
            encoder_hidden_states=hidden_states,
            attention_mask=mask,
        ).predicted_image_embedding
        if guided:
            unconditioned, conditioned = predicted.chunk(2)
            predicted = unconditioned + request.guidance_scale * (conditioned - unconditioned)
        following = timesteps[index + 1] if index + 1 < len(timesteps) else None
        latents = scheduler.step(
            predicted, timestep=timestep, sample=latents, generator=generator, prev_timestep=following
        ).prev_sample
        callback(index, len(timesteps))
    latents = models.transformer.post_process_latents(latents)
    if negative is None:
        return PriorRun(latents, None)
    return PriorRun(*latents.chunk(2))


def zero_embeds(models: PriorModels, num_images: int) -> torch.Tensor:
    """The embedding of an all-zero image, the negative embedding of an empty negative prompt, as diffusers'
    ``get_zero_embed`` makes it, computed once by the image encoder (``models.ImageEncoder.zero_embeds``)."""
    return models.image_encoder.zero_embeds(num_images, models.device)


@torch.no_grad()
def image_embedding(models: PriorModels, image: Image.Image) -> torch.Tensor:
    """The CLIP image embedding, (1, embedding size) on the device, of ``image``, brought to CLIP's input size by
    the prior's image processor, as diffusers' prior pipelines embed images (``_encode_image``, ``interpolate``)."""
    pixels = models.image_processor(image, return_tensors="pt").pixel_values[0].unsqueeze(0)
    return models.image_encoder.embed(pixels)


def negative_of(models: PriorModels, run: PriorRun, negative_prompt: str, num_images: int) -> torch.Tensor:
    """The decoder's negative embedding from a prior run on the negative prompt: the run's image embedding, or,
    when the negative prompt is empty, the run's own negative (the zero-image embedding when it had none); the
    rule of the authors' package and of diffusers' ``interpolate``."""
    if negative_prompt:
        return run.image_embeds
    return run.negative_embeds if run.negative_embeds is not None else zero_embeds(models, num_images)


def text_prior(
    models: PriorModels, request: PriorRequest, generator: torch.Generator, callback: StepCallback
) -> Embeddings:
    """The prior stage from the prompt: the image embedding of every picture and the negative embedding.

    With ``negative_prior_prompt`` empty, as ``KandinskyV22CombinedPipeline`` does it: one prior run on the
    prompt, guided away from the negative prompt, gives both embeddings (the negative one is the negative
    prompt's, or the zero-image embedding when it is empty). With ``negative_prior_prompt`` set, as the authors'
    package defines it (``generate_text2img`` in ai-forever/Kandinsky-2's ``kandinsky2_2_model.py``): the prompt's
    run is guided away from ``negative_prior_prompt``, and a second run, on the negative prompt alone, gives
    the negative embedding (the zero-image embedding when the negative prompt is empty).
    """
    if not request.negative_prior_prompt:
        run = prior_loop(models, request, request.prompt, request.negative_prompt or None, generator, callback)
        negative = run.negative_embeds
        return run.image_embeds, negative if negative is not None else zero_embeds(models, request.num_images)
    image_embeds = prior_loop(
        models, request, request.prompt, request.negative_prior_prompt, generator, callback
    ).image_embeds
    negative_run = prior_loop(models, request, request.negative_prompt, None, generator, callback)
    return image_embeds, negative_of(models, negative_run, request.negative_prompt, request.num_images)


def text_prior_runs(request: PriorRequest) -> tuple[int, ...]:
    """The steps of each loop ``text_prior`` runs."""
    return (request.num_inference_steps,) * (2 if request.negative_prior_prompt else 1)


def image_prior(
    models: PriorModels, request: PriorRequest, generator: torch.Generator, callback: StepCallback
) -> Embeddings:
    """The prior stage from the input image and the prompt, as diffusers' Kandinsky 2.2 guide does it for
    ControlNet image-to-image with ``KandinskyV22PriorEmb2EmbPipeline``: the image's CLIP embedding moved towards
    the prompt (``strength`` of the prior's schedule, guided away from ``negative_prior_prompt`` when it is set),
    then a second run, on the negative prompt from the same image at strength 1, for the negative embedding (the
    zero-image embedding when the negative prompt is empty, as elsewhere). The image is embedded once for both."""
    embedding = image_embedding(models, request.image)
    image_embeds = prior_loop(
        models,
        request,
        request.prompt,
        request.negative_prior_prompt or None,
        generator,
        callback,
        start=embedding,
        strength=request.strength,
    ).image_embeds
    negative_run = prior_loop(models, request, request.negative_prompt, None, generator, callback, start=embedding)
    return image_embeds, negative_of(models, negative_run, request.negative_prompt, request.num_images)


def image_prior_runs(request: PriorRequest) -> tuple[int, ...]:
    """The steps of each loop ``image_prior`` runs: the first is cut by its strength."""
    return (steps_at(request.num_inference_steps, request.strength), request.num_inference_steps)


def mix_prior(
    models: PriorModels, request: PriorRequest, generator: torch.Generator, callback: StepCallback
) -> Embeddings:
    """The weighted sum of the items' image embeddings, and the negative embedding.

    This is ``KandinskyV22PriorPipeline.interpolate`` step for step (the images, then the prompt when it is not
    empty), with progress and stop at every step of its prior runs. ``negative_prior_prompt`` (``interpolate``'s
    argument of that name) guides every run on text, the negative prompt's included; the negative embedding is
    that run's image embedding, or its own negative when the negative prompt is empty (the zero-image embedding,
    unless ``negative_prior_prompt`` is set).
    """
    items: list[Image.Image | str] = [*request.mix_images, *([request.prompt] if request.prompt else [])]
    guide = request.negative_prior_prompt or None
    weighted = []
    for item, weight in zip(items, request.mix_weights, strict=True):
        if isinstance(item, str):
            embedding = prior_loop(models, request, item, guide, generator, callback).image_embeds
        else:
            embedding = image_embedding(models, item).repeat(request.num_images, 1)
        weighted.append(embedding.unsqueeze(0) * weight)
    negative_run = prior_loop(models, request, request.negative_prompt, guide, generator, callback)
    negative = negative_of(models, negative_run, request.negative_prompt, request.num_images)
    return torch.cat(weighted).sum(dim=0), negative


def mix_prior_runs(request: PriorRequest) -> tuple[int, ...]:
    """The steps of each loop ``mix_prior`` runs: the prompt's, when it is not empty, and the negative prompt's."""
    return (request.num_inference_steps,) * (2 if request.prompt else 1)


class PriorStage(NamedTuple):
    """A prior stage, as the mode table names it: the function, and the steps of each loop it runs."""

    run: Callable[[PriorModels, PriorRequest, torch.Generator, StepCallback], Embeddings]
    runs: Callable[[PriorRequest], tuple[int, ...]]


TEXT_PRIOR = PriorStage(text_prior, text_prior_runs)
IMAGE_PRIOR = PriorStage(image_prior, image_prior_runs)
MIX_PRIOR = PriorStage(mix_prior, mix_prior_runs)


@dataclass(frozen=True)
class DecoderModels:
    """What the decoder's loop calls: the UNet, the MoVQ, the run's scheduler (``schedulers.scheduler_for``), the
    device, where the scheduler keeps its schedule (``schedulers.timesteps_on_host``), and ``forward``, what is
    called for the UNet (itself, or its CUDA graph replay)."""

    unet: UNet2DConditionModel
    movq: VQModel
    scheduler: SchedulerMixin
    device: str
    timesteps_device: str
    forward: Callable[..., object]


def image_to_latents(models: DecoderModels, pixels: torch.Tensor) -> torch.Tensor:
    """The MoVQ's latents of ``pixels`` (batch, 3, height, width, in -1..1) in the UNet's dtype: its encoder's
    output, unquantised, as the Kandinsky 2.2 pipelines encode their input image (``movq.encode(...)["latents"]``)."""
    return models.movq.encode(pixels.to(device=models.device, dtype=models.unet.dtype))["latents"]


def img2img_pixels(image: np.ndarray, count: int) -> torch.Tensor:
    """``count`` copies of ``image`` (height x width x 3 uint8) as the image-to-image pipelines read one per
    picture (diffusers' ``VaeImageProcessor.preprocess``): (count, 3, height, width) float32, x / 255 x 2 - 1, in
    channels-last memory as there (the MoVQ's convolutions round their last bits by memory layout).

    Departure from diffusers (0.40.0 to 0.42.1, tests/test_upstream.py): those pipelines call the processor with
    height and width swapped, so they resize a non-square input to the transposed size; the input here has the
    output size already (``images.fit``) and is not resized."""
    scaled = torch.from_numpy(np.stack([image.astype(np.float32) / 255.0] * count).transpose(0, 3, 1, 2))
    return 2.0 * scaled - 1.0


def inpaint_pixels(image: np.ndarray, count: int) -> torch.Tensor:
    """``count`` copies of ``image`` (height x width x 3 uint8) as the inpainting pipeline reads one per picture
    (``prepare_mask_and_masked_image``): (count, 3, height, width) float32, x / 127.5 - 1, channels-last."""
    return torch.from_numpy(np.stack([image] * count).transpose(0, 3, 1, 2)).to(dtype=torch.float32) / 127.5 - 1.0


def kept_latents(mask: np.ndarray, size: tuple[int, int], device: str, dtype: torch.dtype) -> torch.Tensor:
    """The inpainting mask at the latents' size, 1 where kept and 0 where repainted, (1, 1, rows, columns), as the
    inpainting pipeline makes it: the mask (height x width float32, 1 where to repaint) thresholded at 0.5 and
    inverted, scaled down to ``size`` (nearest), then each repainted latent's neighbours above, below, left,
    right, above left and below right repainted too (``prepare_mask``, whose per-latent host loop this computes
    at once)."""
    repaint = (mask >= 0.5).astype(np.float32)
    kept = (1 - torch.from_numpy(repaint)[None, None]).to(device=device, dtype=dtype)
    kept = F.interpolate(kept, size, mode="nearest")
    repainted = F.pad(kept[:, 0] != 1, (1, 1, 1, 1))
    rows, columns = size
    spread = torch.zeros_like(repainted[:, 1:-1, 1:-1])
    for row, column in ((1, 0), (0, 1), (1, 1), (-1, 0), (0, -1), (-1, -1)):
        spread |= repainted[:, 1 + row : 1 + row + rows, 1 + column : 1 + column + columns]
    return kept.masked_fill(spread[:, None], 0)


def latent_size(movq: VQModel, height: int, width: int) -> tuple[int, int]:
    """The latents' (rows, columns) for a picture of height x width pixels: the MoVQ scales by 8 (diffusers'
    ``downscale_height_and_width``, which rounds up to whole latents)."""
    factor = 2 ** (len(movq.config.block_out_channels) - 1)
    return -(-height // factor**2) * factor, -(-width // factor**2) * factor


@torch.no_grad()
def decode(
    models: DecoderModels,
    *,
    image_embeds: torch.Tensor,
    negative_image_embeds: torch.Tensor,
    height: int,
    width: int,
    num_inference_steps: int,
    guidance_scale: float,
    generator: torch.Generator,
    callback: StepCallback,
    image: np.ndarray | None = None,
    strength: float = 1.0,
    mask: np.ndarray | None = None,
    hint: torch.Tensor | None = None,
) -> torch.Tensor:
    """The decoder's pictures from the prior's embeddings, in every decoder kind, as diffusers' decoder pipelines
    make them (``KandinskyV22Pipeline``, and its Img2Img, Inpaint, Controlnet and ControlnetImg2Img siblings).

    Args:
        models: the decoder's models and the run's scheduler.
        image_embeds: (num_images, embedding size), one per picture, on the device.
        negative_image_embeds: the same shape: the negative embedding, read above guidance 1.
        height: the pictures' height in pixels, a multiple of 64.
        width: the pictures' width in pixels, a multiple of 64.
        num_inference_steps: the schedule's steps, 1 or more.
        guidance_scale: classifier-free guidance, on above 1 (the UNet then runs on a doubled batch).
        generator: the CPU generator all random draws come from.
        callback: called after every UNet call (two a step but the last for second-order samplers).
        image: height x width x 3 uint8: image-to-image, the input to start from (with ``mask``: inpaint's image).
        strength: image-to-image: the part of the schedule run from the noised input, in (0, 1].
        mask: inpaint: height x width float32, 1 where to repaint; the rest is kept from ``image``.
        hint: ControlNet: (num_images, 3, height, width) in 0..1 on the device, the depth map.

    Returns:
        (num_images, 3, height, width) on the device in the UNet's dtype: the MoVQ's output, about -1 to 1.
    """
    unet, movq, scheduler = models.unet, models.movq, models.scheduler
    # The embeddings in the UNet's dtype: diffusers casts them only when guidance is on (diffusers 0.40.0 to
    # 0.42.1, tests/test_upstream.py), so float32 embeddings would meet a float16 UNet. The hint comes in the
    # run's dtype (inputs.prepare_inputs).
    image_embeds = image_embeds.to(unet.dtype)
    guided = guidance_scale > 1
    condition = {"image_embeds": image_embeds}
    if guided:
        negative = negative_image_embeds.to(unet.dtype)
        condition["image_embeds"] = torch.cat([negative, image_embeds]).to(device=models.device)
    if hint is not None:
        condition["hint"] = torch.cat([hint, hint]).to(dtype=unet.dtype, device=models.device) if guided else hint
    batch, dtype = image_embeds.shape[0], unet.dtype
    channels = movq.config.latent_channels
    set_schedule(scheduler, num_inference_steps, models.timesteps_device)
    inpaint, from_image = mask is not None, image is not None and mask is None
    first = first_step(scheduler, num_inference_steps, strength) if from_image else 0
    timesteps = scheduler.timesteps[first:]
    if hasattr(scheduler, "set_begin_index"):
        # Told where the run starts, a sigma-based scheduler counts its step index on the host rather than
        # searching the timesteps (on the device for DPM2) at the first step, and inpaint's per-step add_noise
        # reads the index it counts.
        scheduler.set_begin_index(first)
    size = latent_size(movq, height, width)
    if from_image:
        # One copy of the input per picture, encoded together as diffusers encodes them: the same bits.
        # Contiguous, as diffusers' repeat_interleave leaves them: the UNet's convolutions round their last bits
        # by memory layout.
        latents = image_to_latents(models, img2img_pixels(image, batch)).contiguous()
        noise = randn_tensor(latents.shape, generator=generator, device=models.device, dtype=dtype)
        latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch))
    else:
        latents = randn_tensor((batch, channels, *size), generator=generator, device=models.device, dtype=dtype)
        latents = latents * scheduler.init_noise_sigma
    if inpaint:
        image_latents = image_to_latents(models, inpaint_pixels(image, batch))
        kept = kept_latents(mask, size, models.device, dtype)
        masked = (image_latents * kept).repeat(2 if guided else 1, 1, 1, 1)
        kept_input = kept.repeat(batch * (2 if guided else 1), 1, 1, 1)
        image_latents = image_latents[:1]
        # Departure from diffusers (0.40.0 to 0.42.1, tests/test_upstream.py): its inpainting loop noises the kept
        # area at every step with its starting latents, noise times init_noise_sigma, which for a scheduler whose
        # init_noise_sigma is not 1 (Euler, Heun, LMS, DPM2: about 25) is that many times too much noise; the noise
        # is brought back to unit variance (the same values for DDPM and the others, whose init_noise_sigma is 1).
        unit_noise = latents / scheduler.init_noise_sigma
    learned_variance = scheduler.config.get("variance_type") in ("learned", "learned_range")
    for index, timestep in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if guided else latents
        # Departure from diffusers' Kandinsky pipelines, which never call scale_model_input (diffusers 0.40.0 to
        # 0.42.1, tests/test_upstream.py): the samplers that work on unscaled noisy samples (Euler, Heun, LMS,
        # DPM2) need the UNet's latent input divided by sqrt(sigma^2 + 1), as diffusers' other pipelines do; the
        # others return it as it is.
        model_input = scheduler.scale_model_input(model_input, timestep)
        if inpaint:
            model_input = torch.cat([model_input, masked, kept_input], dim=1)
        prediction = models.forward(
            sample=model_input,
            timestep=timestep,
            encoder_hidden_states=None,
            added_cond_kwargs=condition,
            return_dict=False,
        )[0]
        if guided:
            noise_prediction, variance = prediction.split(channels, dim=1)
            unconditioned, conditioned = noise_prediction.chunk(2)
            _, conditioned_variance = variance.chunk(2)
            noise_prediction = unconditioned + guidance_scale * (conditioned - unconditioned)
            prediction = torch.cat([noise_prediction, conditioned_variance], dim=1)
        if not learned_variance:
            prediction = prediction.split(channels, dim=1)[0]
        latents = scheduler.step(prediction, timestep, latents, **step_options(scheduler, generator, index))[0]
        if inpaint:
            target = image_latents
            if index + 1 < len(timesteps):
                target = scheduler.add_noise(image_latents, unit_noise, timesteps[index + 1 : index + 2])
            latents = kept * target + (1 - kept) * latents
        callback(index, len(timesteps))
    if inpaint:
        latents = kept * image_latents + (1 - kept) * latents
    return movq.decode(latents, force_not_quantize=True)["sample"]


def to_pictures(decoded: torch.Tensor) -> np.ndarray:
    """The MoVQ's output (batch, 3, height, width, about -1 to 1) as RGB pictures in CPU memory, (batch, height,
    width, 3) float32 in 0..1, as the decoder pipelines return them for ``output_type`` "np"."""
    return (decoded * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
