"""Loading Kandinsky 2.2 pipelines once per process and sharing them.

Every task instance of a process uses ``MODEL_CACHE``. It keeps one pipeline per role (the prior, and
the decoders of text2img, inpaint and ControlNet) keyed by model name, device and dtype: asking again
for the same key loads nothing, and changing one of them replaces only that role's pipeline. A
pipeline set aside waits in CPU memory and comes back to the device when asked for. Studio runs tasks
in worker threads, so the cache is guarded by a lock, which generation also holds while it uses the
pipelines.
"""

import gc
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline, KandinskyV22PriorPipeline
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import RepositoryNotFoundError

logger = logging.getLogger(__name__)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# The models of a prior pipeline that each memory mode parks (see ``Parking``); mix alone uses the image
# encoder, whose one use in text2img, the zero-image embedding, is computed once when the prior is placed.
PARKED_PRIOR_MODELS = {"gpu": ("image_encoder",), "prior_offload": ("text_encoder", "prior", "image_encoder")}
_CONNECTION_ERRORS = ("ConnectError", "ConnectionError", "ConnectTimeout", "Timeout", "LocalEntryNotFoundError")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the parameter, the model and the reason."""


@dataclass(frozen=True)
class ModelKey:
    """What identifies a loaded pipeline: where it comes from, where it runs, and how it uses the GPU.

    ``memory_mode`` is "gpu" (every model on the GPU but the image encoder, parked in CPU memory, see
    ``Parking``), "prior_offload" (a prior's key only: the prior's models parked), "model_offload" or
    "sequential_offload" on CUDA, and "none" on the CPU, where there is nothing to offload. ``compile_unet`` is the
    torch.compile mode of the pipeline's UNet, or "off".
    """

    model_name: str
    device: str
    dtype: torch.dtype
    memory_mode: str = "none"
    compile_unet: str = "off"


class Parking:
    """Modules whose weights wait in CPU memory, and are on the device only while held (or inside ``visit``).

    Holding copies the weights to the device and nothing back: the CPU copy, pinned on CUDA so that the
    copy is fast, stays the reference (the weights never change), so parking again only drops the device
    copy. diffusers' model offload instead moves every model both ways through pageable memory. The
    weights travel packed in a few large buffers, one copy each. An empty parking holds nothing.
    """

    def __init__(self, modules: dict[str, torch.nn.Module] | None = None, device: str = "cpu") -> None:
        self.device = device
        self._chunks = {
            name: _pack([*module.parameters(), *module.buffers()], pin=device == "cuda")
            for name, module in (modules or {}).items()
        }
        self._held: set[str] = set()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._chunks)

    def hold(self, *names: str) -> None:
        """Copy the parked modules among ``names`` to the device, to stay there until ``park``.

        A copy that fails midway (out of memory) parks them all again before the error goes on.
        """
        arriving = [name for name in names if name in self._chunks and name not in self._held]
        try:
            for name in arriving:
                self._held.add(name)
                for chunk in self._chunks[name]:
                    chunk.point_at(chunk.host.to(self.device, non_blocking=True, copy=True))
        except BaseException:
            self.park(*arriving)
            raise

    def park(self, *names: str) -> None:
        """Point the modules among ``names`` at their CPU copy again; their device copy is freed."""
        for name in names:
            if name in self._held:
                self._held.discard(name)
                for chunk in self._chunks[name]:
                    chunk.point_at(chunk.host)

    @contextmanager
    def visit(self, *names: str) -> Iterator[None]:
        """Have the parked modules among ``names`` on the device for the block, and parked again after it."""
        try:
            self.hold(*names)
            yield
        finally:
            self.park(*names)


# CUDA's pinned-memory allocator rounds every block up to a power of two: blocks this size waste little.
_CHUNK_BYTES = 2**28
_ALIGNMENT = 256


@dataclass(frozen=True)
class _Chunk:
    """Tensors whose bytes lie one after another in ``host``, each at its offset."""

    tensors: list[torch.Tensor]
    offsets: list[int]
    host: torch.Tensor

    def point_at(self, buffer: torch.Tensor) -> None:
        """Make every tensor a view of its bytes in ``buffer``, a copy of ``host`` (or ``host`` itself)."""
        for tensor, offset in zip(self.tensors, self.offsets, strict=True):
            tensor.data = buffer[offset : offset + tensor.nbytes].view(tensor.dtype).view(tensor.shape)


def _pack(tensors: list[torch.Tensor], pin: bool) -> list[_Chunk]:
    """Copy ``tensors``, wherever they are, into CPU buffers of up to ``_CHUNK_BYTES`` (pinned if ``pin``), and
    point them there: a model on the GPU goes straight to pinned memory, with no pageable copy on the way."""
    layouts: list[tuple[list[torch.Tensor], list[int]]] = []
    end = 0
    for tensor in tensors:
        start = -(-end // _ALIGNMENT) * _ALIGNMENT
        if not layouts or (end > 0 and start + tensor.nbytes > _CHUNK_BYTES):
            layouts.append(([], []))
            start = 0
        layouts[-1][0].append(tensor)
        layouts[-1][1].append(start)
        end = start + tensor.nbytes
    chunks = []
    for group, offsets in layouts:
        size = offsets[-1] + group[-1].nbytes
        try:
            host = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
        except RuntimeError as error:
            # Some systems limit pinned memory (WSL does); pageable memory only makes the copies slower.
            logger.warning(
                "infer_kandinsky_2_2: pinned CPU memory refused (%s); parked models are copied to the GPU from "
                "pageable memory, which is slower.",
                first_line(error),
            )
            pin = False
            host = torch.empty(size, dtype=torch.uint8)
        for tensor, offset in zip(group, offsets, strict=True):
            host[offset : offset + tensor.nbytes].view(tensor.dtype).view(tensor.shape).copy_(tensor.data)
        chunk = _Chunk(group, offsets, host)
        chunk.point_at(host)
        chunks.append(chunk)
    return chunks


@dataclass
class Loaded:
    """A pipeline in the cache: the key it was loaded for, the models it keeps parked, and, once set aside
    (``ModelCache.set_aside``), all its models, parked until it is asked for again."""

    key: ModelKey
    pipeline: DiffusionPipeline
    parking: Parking
    aside: Parking | None = None


class ModelCache:
    """One loaded pipeline per role, shared by every task instance of the process."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._loaded: dict[str, Loaded] = {}
        self.load_counts: Counter[str] = Counter()

    def get(
        self,
        role: str,
        pipeline_class: type[DiffusionPipeline],
        parameter_name: str,
        key: ModelKey,
    ) -> DiffusionPipeline:
        """Return the pipeline of ``role`` for ``key``, loading it only if the cached one differs."""
        with self.lock:
            cached = self._loaded.get(role)
            if cached is not None and cached.key == key:
                if cached.aside is not None:
                    cached.aside.hold(*cached.aside.names)
                return cached.pipeline
            self.release(role)
            pipeline = load_pipeline(pipeline_class, parameter_name, key)
            self.load_counts[role] += 1
            self._loaded[role] = Loaded(key, pipeline, _place(pipeline, key))
            return pipeline

    def adopt(self, role: str, key: ModelKey, pipeline: DiffusionPipeline) -> None:
        """Cache a pipeline built elsewhere (the benchmarks build theirs in memory) as if loaded for ``key``."""
        with self.lock:
            self.release(role)
            self._loaded[role] = Loaded(key, pipeline, _place(pipeline, key))

    def set_aside(self, role: str) -> None:
        """Park every model of the pipeline of ``role`` in CPU memory until it is asked for again.

        For a decoder left on the GPU by a gpu run when another decoder runs in a mode that saves memory.
        Only a pipeline kept whole on the device is set aside (a key of memory_mode gpu, which the decoders
        of prior_offload runs also have), and never one with a compiled UNet, which stays as compiled: CUDA
        graphs record where the weights are, and record again each time they move.
        """
        with self.lock:
            loaded = self._loaded.get(role)
            whole_on_device = loaded is not None and loaded.key.memory_mode == "gpu" and not loaded.parking.names
            if not whole_on_device or loaded.key.compile_unet != "off":
                return
            if loaded.aside is not None:
                loaded.aside.park(*loaded.aside.names)
                return
            components = loaded.pipeline.components.items()
            modules = {name: module for name, module in components if isinstance(module, torch.nn.Module)}
            try:
                loaded.aside = Parking(modules, loaded.key.device)
            except BaseException:
                # Packing stopped midway would leave the pipeline split between CPU and GPU: drop it instead.
                self.release(role)
                raise
            if loaded.key.device == "cuda":
                # The weights' own blocks are free now; give them back, as the packed copies need other sizes.
                torch.cuda.empty_cache()

    def parking(self, role: str) -> Parking:
        """What the pipeline of ``role`` keeps parked in CPU memory: a prior's models, as ``PARKED_PRIOR_MODELS``
        says for its memory mode; nothing for a decoder."""
        with self.lock:
            return self._loaded[role].parking

    def release(self, role: str | None = None) -> None:
        """Drop the pipeline of ``role`` (all of them when None) and give its memory back."""
        with self.lock:
            for name in [role] if role else list(self._loaded):
                self._loaded.pop(name, None)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                # A parked model's pinned memory stays with PyTorch's host allocator until this gives it
                # back; torch 2.11, which the GPU benchmark may run on, has no such call.
                if hasattr(torch.accelerator, "empty_host_cache"):
                    torch.accelerator.empty_host_cache()

    def loaded_keys(self) -> dict[str, ModelKey]:
        """The key of each loaded role: what a run with the same settings would reuse."""
        with self.lock:
            return {role: loaded.key for role, loaded in self._loaded.items()}


MODEL_CACHE = ModelCache()


def is_folder_name(model_name: str) -> bool:
    """Whether a model name points at a folder rather than a hub id."""
    expanded = os.path.expanduser(model_name)
    return (
        os.path.isdir(expanded)
        or os.path.isabs(expanded)
        or model_name.startswith(("./", "../", "~", "."))
        or "\\" in model_name
        or model_name.count("/") > 1
    )


def load_pipeline(pipeline_class: type[DiffusionPipeline], parameter_name: str, key: ModelKey) -> DiffusionPipeline:
    """Load a pipeline, on the CPU, from a local folder or the Hugging Face cache/hub, safetensors only.

    A hub id already in the local cache loads without touching the network. Failures become a
    ``ModelLoadError`` that says whether the model was not found, could not be fetched, or is broken.
    """
    name = key.model_name
    if "://" in name:
        raise ModelLoadError(
            f"{parameter_name}: {name!r} is a URL; accepted: a Hugging Face hub id (owner/name) or a local folder."
        )
    if is_folder_name(name):
        folder = os.path.expanduser(name)
        if not os.path.isdir(folder):
            raise ModelLoadError(f"{parameter_name}: folder {name!r} not found.")
        try:
            pipeline = _from_pretrained(pipeline_class, folder, key.dtype, local_files_only=True)
        except Exception as error:
            raise ModelLoadError(
                f"{parameter_name}: folder {name!r} is not a usable {pipeline_class.__name__} repo "
                f"(broken or incomplete): {first_line(error)}"
            ) from error
        return pipeline
    if not _HUB_ID.fullmatch(name):
        raise ModelLoadError(
            f"{parameter_name}: {name!r} is neither an existing folder nor a Hugging Face hub id (owner/name)."
        )
    try:
        pipeline = _from_pretrained(pipeline_class, name, key.dtype, local_files_only=True)
    except Exception as cache_error:
        if hub_constants.HF_HUB_OFFLINE:
            raise ModelLoadError(
                f"{parameter_name}: {name!r} is not (fully) in the local Hugging Face cache "
                f"({hub_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, so it cannot be downloaded. "
                "Download it once with network access, or give a local folder."
            ) from cache_error
        try:
            pipeline = _from_pretrained(pipeline_class, name, key.dtype, local_files_only=False)
        except Exception as error:
            raise ModelLoadError(_describe_hub_failure(parameter_name, name, pipeline_class, error)) from error
    return pipeline


def _from_pretrained(
    pipeline_class: type[DiffusionPipeline], source: str, dtype: torch.dtype, *, local_files_only: bool
) -> DiffusionPipeline:
    return pipeline_class.from_pretrained(source, dtype=dtype, use_safetensors=True, local_files_only=local_files_only)


def _place(pipeline: DiffusionPipeline, key: ModelKey) -> Parking:
    """Place a freshly loaded pipeline as ``key`` says, and return what it keeps parked.

    A prior also gets its zero-image embedding cached; then, in gpu and prior_offload, the models that
    ``PARKED_PRIOR_MODELS`` names are parked instead of placed (a decoder's key then says gpu).
    """
    pipeline.set_progress_bar_config(disable=True)
    is_prior = isinstance(pipeline, KandinskyV22PriorPipeline)
    if is_prior:
        _cache_zero_image_embedding(pipeline, key.device)
    parked = PARKED_PRIOR_MODELS.get(key.memory_mode, ()) if is_prior else ()
    if key.memory_mode == "model_offload":
        pipeline.enable_model_cpu_offload(device=key.device)
    elif key.memory_mode == "sequential_offload":
        pipeline.enable_sequential_cpu_offload(device=key.device)
    else:
        for name, component in pipeline.components.items():
            if isinstance(component, torch.nn.Module) and name not in parked:
                component.to(key.device)
    parking = Parking({name: getattr(pipeline, name) for name in parked}, key.device)
    if key.compile_unet != "off":
        # In place, so pipelines that share the UNet (img2img over the text2img decoder) share the compiled one.
        pipeline.unet.compile(mode=key.compile_unet)
    return parking


def _cache_zero_image_embedding(prior: KandinskyV22PriorPipeline, device: str) -> None:
    """Compute once the embedding of an all-zero image (the negative when there is no negative prompt).

    diffusers' prior runs its 1.8B-parameter CLIP image encoder on an all-zero image for every
    generation without a negative prompt; the answer never changes, so it is computed here, with the
    encoder on ``device``, and ``get_zero_embed`` returns it from then on.
    """
    encoder = prior.image_encoder.to(device)
    size = encoder.config.image_size
    zeros = torch.zeros(1, 3, size, size, device=device, dtype=encoder.dtype)
    with torch.no_grad():
        zero_embedding = encoder(zeros)["image_embeds"]

    def get_zero_embed(batch_size: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        return zero_embedding.repeat(batch_size, 1).to(device or zero_embedding.device)

    prior.get_zero_embed = get_zero_embed


def _describe_hub_failure(
    parameter_name: str, name: str, pipeline_class: type[DiffusionPipeline], error: Exception
) -> str:
    chain = _exception_chain(error)
    if any(isinstance(item, RepositoryNotFoundError) for item in chain):
        return f"{parameter_name}: {name!r} was not found on the Hugging Face hub (or is private)."
    if any(type(item).__name__ in _CONNECTION_ERRORS for item in chain):
        return (
            f"{parameter_name}: {name!r} is not in the local Hugging Face cache ({hub_constants.HF_HUB_CACHE}) "
            "and could not be fetched: the hub is unreachable from this machine."
        )
    return f"{parameter_name}: {name!r} is not a usable {pipeline_class.__name__} repo: {first_line(error)}"


def _exception_chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
