"""Loading Kandinsky 2.2 models once per process and sharing them.

Every task instance of a process that runs on a device uses that device's cache, ``cache_for(device)``. A cache
keeps one model per role (the prior, the prior repo's CLIP image encoder, the decoders of text2img, inpaint and
ControlNet, and the depth estimator of depth_model) keyed by model name, device and dtype: asking again for the
same key loads nothing, and changing one of them replaces only that role's model. A pipeline set aside waits in CPU
memory and comes back to the device when asked for. Studio runs tasks in worker threads, so each cache is guarded
by a lock, which generation also holds while it uses the models: runs on one device take turns, runs on two GPUs
do not wait for each other. The CPU and the GPUs do not both keep a model of one role (``ModelCaches``). Where the
files come from, and what is fetched, is ``hub.py``'s part.
"""

import functools
import gc
import inspect
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
import transformers
from accelerate import cpu_offload
from diffusers import DiffusionPipeline, KandinskyV22PriorPipeline, ModelMixin
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForDepthEstimation,
    CLIPVisionModelWithProjection,
    DepthEstimationPipeline,
    PreTrainedModel,
    pipeline,
)

from . import graphs
from .devices import is_cuda
from .errors import ModelLoadError, NotFinite
from .hub import DIFFUSERS_INDEX, ROOT, Check, Source, fetch, first_line, no_check, parse_model_name
from .memory import CPU, MODEL_OFFLOAD, PARKED, PLACED, PRIOR_ROLE, SEQUENTIAL_OFFLOAD, memory_mode

logger = logging.getLogger(__name__)
IMAGE_ENCODER = "image_encoder"
DEPTH_ESTIMATOR = "depth_estimator"


class Loader(Protocol):
    """How ``ModelCache.get`` loads a model for a key, and how a run checks the model before any is loaded."""

    def __call__(self, role: str, key: "ModelKey") -> tuple[object, "Kept"]:
        """Load the model of ``role`` that ``key`` names, placed as it says (``place``); return it and how it is
        kept."""

    def preflight(self, key: "ModelKey") -> None:
        """Find the model and read its configs, fetching only them; raise ``ModelLoadError`` to refuse it."""


@dataclass(frozen=True)
class ModelKey:
    """What identifies a loaded pipeline: where it comes from, where it runs, and how it uses the GPU.

    ``memory_mode`` is a name of ``memory.MEMORY_MODES`` on CUDA (a decoder's key has its ``decoder_mode``), and
    "none" on the CPU, where there is nothing to offload; the table says how each places the models.
    ``compile_unet`` is the torch.compile mode of the pipeline's UNet, or "off".
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
            name: _pack([*module.parameters(), *module.buffers()], pin=is_cuda(device))
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


class Kept(NamedTuple):
    """How a loaded model is kept (``place``): what it parks in CPU memory, and whether it is a decoder placed
    whole on the device of a memory mode, uncompiled, which ``ModelCache.set_aside`` may park."""

    parking: Parking
    settable_aside: bool = False


@dataclass
class Loaded:
    """A model in the cache (a pipeline, the ``ImageEncoder`` or the ``DepthEstimator``): the key it was loaded
    for, how it is kept, and, once set aside (``ModelCache.set_aside``), all its models, parked until it is asked
    for again."""

    key: ModelKey
    model: object
    kept: Kept
    aside: Parking | None = None


class ModelCache:
    """One loaded model per role, shared by every task instance of the process that runs on one device.

    ``rivals`` gives the caches whose model of a role this one's replaces when it loads one (``ModelCaches``); a
    cache made apart (the tests make their own) has none.
    """

    def __init__(self, rivals: Callable[[], Iterable["ModelCache"]] = tuple) -> None:
        self.lock = threading.RLock()
        self._loaded: dict[str, Loaded] = {}
        self._rivals = rivals
        self.load_counts: Counter[str] = Counter()

    def holds(self, role: str, key: ModelKey) -> bool:
        """Whether the model of ``role`` is loaded for ``key``: ``get`` would load nothing."""
        with self.lock:
            return role in self._loaded and self._loaded[role].key == key

    def get(self, role: str, key: ModelKey, load: Loader) -> object:
        """Return the model of ``role`` for ``key``, loading it with ``load`` only if the cached one differs.

        Args:
            role: the cache slot: "prior", a decoder's role ("decoder", "inpaint_decoder",
                "controlnet_decoder"), "image_encoder" or "depth_estimator".
            key: what the model must be: repo, device, dtype, memory mode, compile mode.
            load: a ``PipelineLoader``, ``IMAGE_ENCODER_LOADER`` or ``DepthEstimatorLoader``; called with
                ``role`` and ``key``, it returns the model placed as ``key`` says and how it is kept.

        Returns:
            The cached model (a diffusers pipeline, an ``ImageEncoder`` or a ``DepthEstimator``), brought back to
            the device first if it was set aside. ``load_counts[role]`` counts the loads. Before a load, the model
            of ``role`` this cache held is released, and so is the rivals' (``release_idle``).

        Raises:
            Whatever ``load`` raises (``ModelLoadError`` for the engine's loaders); the role then holds nothing,
            as the model it held before was released first to free its memory.
        """
        with self.lock:
            cached = self._loaded.get(role)
            if cached is not None and cached.key == key:
                if cached.aside is not None:
                    cached.aside.hold(*cached.aside.names)
                return cached.model
            self.release(role)
            for rival in self._rivals():
                rival.release_idle(role)
            model, kept = load(role, key)
            self.load_counts[role] += 1
            self._loaded[role] = Loaded(key, model, kept)
            return model

    def adopt(self, role: str, key: ModelKey, pipeline: DiffusionPipeline) -> None:
        """Cache a pipeline built elsewhere (the benchmarks build theirs in memory) as if loaded for ``key``.

        A prior that holds its image encoder gives it to the image encoder's role, as loading would.
        """
        with self.lock:
            self.release(role)
            encoder = getattr(pipeline, IMAGE_ENCODER, None)
            if isinstance(pipeline, KandinskyV22PriorPipeline) and encoder is not None:
                pipeline.register_modules(image_encoder=None)
                kept = place(IMAGE_ENCODER, encoder, key)
                self._loaded[IMAGE_ENCODER] = Loaded(key, ImageEncoder(encoder, key.device, kept.parking), kept)
            self._loaded[role] = Loaded(key, pipeline, place(role, pipeline, key))

    def set_aside(self, role: str) -> None:
        """Park every model of the pipeline of ``role`` in CPU memory until it is asked for again.

        For a decoder left on the GPU by a gpu run when another decoder runs in a mode that saves memory. Only a
        decoder placed whole (``Kept.settable_aside``) is set aside. The graphs of its models (``graphs``) are
        dropped: CUDA graphs record where the weights are.
        """
        with self.lock:
            loaded = self._loaded.get(role)
            if loaded is None or not loaded.kept.settable_aside:
                return
            graphs.drop(_modules(loaded.model))
            if loaded.aside is not None:
                loaded.aside.park(*loaded.aside.names)
                return
            components = loaded.model.components.items()
            modules = {name: module for name, module in components if isinstance(module, torch.nn.Module)}
            try:
                loaded.aside = Parking(modules, loaded.key.device)
            except BaseException:
                # Packing stopped midway would leave the pipeline split between CPU and GPU: drop it instead.
                self.release(role)
                raise
            if is_cuda(loaded.key.device):
                # The weights' own blocks are free now; give them back, as the packed copies need other sizes.
                torch.cuda.empty_cache()

    def parking(self, role: str) -> Parking:
        """What the model of ``role`` keeps parked in CPU memory: a prior's models, as its memory mode's
        ``parked_prior_models`` says; nothing for a decoder."""
        with self.lock:
            return self._loaded[role].kept.parking

    def release(self, role: str | None = None) -> None:
        """Drop the model of ``role`` (all of them when None), and its CUDA graphs, and give its memory back.

        With nothing to drop it does nothing: a full garbage collection in a process that has imported torch,
        diffusers and transformers takes a quarter of a second, most of a first load of small models.
        """
        with self.lock:
            names = [role] if role else list(self._loaded)
            dropped = [self._loaded.pop(name) for name in names if name in self._loaded]
            if not dropped:
                return
            graphs.drop([module for loaded in dropped for module in _modules(loaded.model)])
            # No name here may hold a dropped model while the collection runs.
            del dropped
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                # A parked model's pinned memory stays with PyTorch's host allocator until this gives it
                # back; torch 2.11 and earlier have no such call.
                if hasattr(torch.accelerator, "empty_host_cache"):
                    torch.accelerator.empty_host_cache()

    def release_idle(self, role: str) -> None:
        """Drop the model of ``role``, as ``release`` does, unless a run of another thread is using the cache (it
        holds the lock): that run keeps it, and waits for nothing."""
        if not self.lock.acquire(blocking=False):
            return
        try:
            if role in self._loaded:
                self.release(role)
        finally:
            self.lock.release()

    def loaded_keys(self) -> dict[str, ModelKey]:
        """The key of each loaded role: what a run with the same settings would reuse."""
        with self.lock:
            return {role: loaded.key for role, loaded in self._loaded.items()}


class ModelCaches:
    """The model caches of a process, one per device ("cpu", "cuda:0", "cuda:1"), each made when a run first asks
    for it (``for_device``) and kept for the process.

    Two tasks that run on two GPUs each hold their own models and do not wait for each other; within one device,
    a model of another key replaces that role's (``ModelCache.get``). The CPU and the GPUs, though, do not both keep
    a model of one role: loading a model on a GPU releases the CPU's model of that role, and loading one on the
    CPU releases every GPU's, as a single cache replaced them before models were cached per device. A user who
    turns cuda off and on again thus keeps one copy of each model, not the CPU's float32 copies (twice the size of
    the float16 ones) in RAM beside those on the GPU, and turning cuda off frees the GPU for other programs; each
    switch loads the models again. A cache that a run of another thread is using keeps its models
    (``ModelCache.release_idle``). Other devices ("meta", in the tests) have caches of their own that release
    nothing elsewhere.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: dict[str, ModelCache] = {}

    def for_device(self, device: str) -> ModelCache:
        """The cache of ``device``, as a runtime names it ("cuda:1"; "cuda" is another device than "cuda:0")."""
        with self._lock:
            if device not in self._caches:
                self._caches[device] = ModelCache(functools.partial(self._rivals, device))
            return self._caches[device]

    def _rivals(self, device: str) -> list[ModelCache]:
        """The caches whose model of a role a load on ``device`` releases: every GPU's for the CPU, the CPU's for a
        GPU, none for another device."""
        kinds = ("cpu", "cuda")
        kind = torch.device(device).type
        with self._lock:
            return [
                cache
                for other, cache in self._caches.items()
                if kind in kinds and torch.device(other).type in kinds and torch.device(other).type != kind
            ]


MODEL_CACHES = ModelCaches()


def cache_for(device: str) -> ModelCache:
    """The process's cache of the models that run on ``device`` (``ModelCaches.for_device``)."""
    return MODEL_CACHES.for_device(device)


def _modules(model: object) -> list[torch.nn.Module]:
    """The models of a cached pipeline (none for the image encoder and the depth estimator, never graphed)."""
    return [module for module in getattr(model, "components", {}).values() if isinstance(module, torch.nn.Module)]


def pipeline_components(pipeline_class: type[DiffusionPipeline]) -> list[str]:
    """The components a pipeline class is built from (its constructor's arguments), as folders of its repo."""
    return [name for name in inspect.signature(pipeline_class.__init__).parameters if name != "self"]


@dataclass(frozen=True)
class PipelineLoader:
    """A ``Loader`` of pipelines: ``load_pipeline`` with these arguments, then the pipeline placed as the key says."""

    pipeline_class: type[DiffusionPipeline]
    parameter_name: str
    skip: tuple[str, ...] = ()
    check: Check = no_check

    def preflight(self, key: ModelKey) -> None:
        """Find the model and read its configs (from the hub, fetching only them), and refuse a wrong or missing
        one: a run checks every model this way before it fetches or loads any weights."""
        source = parse_model_name(key.model_name, self.parameter_name)
        fetch(source, self.parameter_name, _components(self.pipeline_class, self.skip), self.check, weights=False)

    def __call__(self, role: str, key: ModelKey) -> tuple[DiffusionPipeline, Kept]:
        pipeline = load_pipeline(self.pipeline_class, self.parameter_name, key, skip=self.skip, check=self.check)
        return pipeline, place(role, pipeline, key)


def _components(pipeline_class: type[DiffusionPipeline], skip: tuple[str, ...]) -> list[str]:
    return [name for name in pipeline_components(pipeline_class) if name not in skip]


def load_pipeline(
    pipeline_class: type[DiffusionPipeline],
    parameter_name: str,
    key: ModelKey,
    *,
    skip: tuple[str, ...] = (),
    check: Check = no_check,
) -> DiffusionPipeline:
    """Load a pipeline on the CPU from a local folder or the Hugging Face cache or hub, safetensors only.

    Args:
        pipeline_class: the diffusers pipeline to build.
        parameter_name: the parameter that named the model, for messages.
        key: the model name, and the dtype to load the weights in.
        skip: components left out, neither fetched nor loaded (they are ``None`` in the pipeline), as
            diffusers' ``from_pretrained`` leaves out a component passed as ``None``.
        check: reads the repo's configs before any weight is fetched or loaded, and raises to refuse it.

    Raises ``ModelLoadError`` saying whether the model was not found, could not be fetched, or is broken; a
    model whose files lack some of its weights is broken (``refuse_missing_weights``).
    """
    source = parse_model_name(key.model_name, parameter_name)
    folder = fetch(source, parameter_name, _components(pipeline_class, skip), check)
    what = f"{pipeline_class.__name__} repo"
    try:
        # transformers initialises the weights its files lack at random, and says so only in its log: its models
        # are loaded here, with their loading information, and handed to the pipeline.
        preloaded = {}
        for name, model_class in _transformers_models(folder, skip).items():
            preloaded[name], loading = model_class.from_pretrained(
                folder / name, dtype=key.dtype, use_safetensors=True, local_files_only=True, output_loading_info=True
            )
            refuse_missing_weights(parameter_name, source, what, name, loading["missing_keys"])
        pipeline = pipeline_class.from_pretrained(
            folder, dtype=key.dtype, use_safetensors=True, local_files_only=True, **dict.fromkeys(skip), **preloaded
        )
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(
            f"{parameter_name}: {source.describe()} is not a usable {what} (broken or incomplete): {first_line(error)}"
        ) from error
    for name, component in pipeline.components.items():
        if isinstance(component, ModelMixin):
            # diffusers leaves the weights a model's files lack on the meta device, where a run fails.
            tensors = (*component.named_parameters(), *component.named_buffers())
            refuse_missing_weights(
                parameter_name, source, what, name, [label for label, tensor in tensors if tensor.is_meta]
            )
    return pipeline


def _transformers_models(folder: Path, skip: tuple[str, ...]) -> dict[str, type[PreTrainedModel]]:
    """The transformers models among a diffusers repo's components (``model_index.json``), by component."""
    try:
        index = json.loads((folder / DIFFUSERS_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found = {}
    for name, entry in index.items():
        if name in skip or not isinstance(entry, list) or len(entry) != 2 or entry[0] != "transformers":
            continue
        model_class = getattr(transformers, str(entry[1]), None)
        if isinstance(model_class, type) and issubclass(model_class, PreTrainedModel):
            found[name] = model_class
    return found


def refuse_missing_weights(
    parameter_name: str, source: Source, what: str, component: str, missing: Iterable[str]
) -> None:
    """Raise ``ModelLoadError`` naming ``parameter_name``, the model and the first tensors its ``component``'s
    files lack, when ``missing`` is not empty: a pruned or partly saved model would otherwise run on random or
    absent weights (diffusers fails at the first step with "Cannot copy out of meta tensor")."""
    missing = sorted(missing)
    if not missing:
        return
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    folder = f"{component}/" if component else "its root folder"
    raise ModelLoadError(
        f"{parameter_name}: {source.describe()} is not a usable {what} (broken or incomplete): the weights in "
        f"{folder} lack {len(missing)} tensor(s) of its model ({shown}); accepted: safetensors holding every weight."
    )


class ImageEncoderLoader:
    """A ``Loader`` of the CLIP image encoder (``image_encoder/``) of the prior repo a key names."""

    def preflight(self, key: ModelKey) -> None:
        """Find the image encoder and read its config, fetching only that; refuse a missing one."""
        fetch(parse_model_name(key.model_name, "prior_model_name"), "prior_model_name", (IMAGE_ENCODER,), weights=False)

    def __call__(self, role: str, key: ModelKey) -> tuple["ImageEncoder", Kept]:
        source = parse_model_name(key.model_name, "prior_model_name")
        folder = fetch(source, "prior_model_name", (IMAGE_ENCODER,))
        try:
            model, loading = CLIPVisionModelWithProjection.from_pretrained(
                folder / IMAGE_ENCODER,
                dtype=key.dtype,
                use_safetensors=True,
                local_files_only=True,
                output_loading_info=True,
            )
        except Exception as error:
            raise ModelLoadError(
                f"prior_model_name: {source.describe()} has no usable CLIP image encoder ({IMAGE_ENCODER}/), which "
                f"mix, controlnet_img2img and an empty negative prompt need: {first_line(error)}"
            ) from error
        refuse_missing_weights("prior_model_name", source, "CLIP image encoder", IMAGE_ENCODER, loading["missing_keys"])
        kept = place(role, model, key)
        return ImageEncoder(model, key.device, kept.parking), kept


IMAGE_ENCODER_LOADER = ImageEncoderLoader()


class ImageEncoder:
    """The prior repo's CLIP image encoder, loaded apart from the prior, only when a run needs it.

    It embeds the images of mix and controlnet_img2img, and an all-zero image: the negative embedding when the
    negative prompt is empty, which diffusers' ``KandinskyV22PriorPipeline.get_zero_embed`` recomputes for every
    generation with its 1.8B-parameter encoder; the answer never changes, so it is computed once here. Its model
    is placed as the memory mode says (``place``); ``parking`` holds it when it waits in CPU memory between uses.
    """

    def __init__(self, model: CLIPVisionModelWithProjection, device: str, parking: Parking) -> None:
        self.model = model
        self.device = device
        self.parking = parking
        self._zero_embedding: torch.Tensor | None = None

    @torch.no_grad()
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The CLIP image embeddings, (batch, projection_dim) on the device in the model's dtype, of ``pixels``:
        (batch, 3, image_size, image_size) as CLIP's image processor gives them (resized, cropped, normalised)."""
        with self.parking.visit(IMAGE_ENCODER):
            return self.model(pixels.to(device=self.device, dtype=self.model.dtype))["image_embeds"]

    def zero_embeds(self, batch_size: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """The embedding of an all-zero image, (batch_size, projection_dim) on ``device``: what diffusers'
        ``KandinskyV22PriorPipeline.get_zero_embed`` returns, computed once."""
        if self._zero_embedding is None:
            size = self.model.config.image_size
            self._zero_embedding = self.embed(torch.zeros(1, 3, size, size))
        return self._zero_embedding.repeat(batch_size, 1).to(device or self._zero_embedding.device)


@dataclass(frozen=True)
class DepthEstimatorLoader:
    """A ``Loader`` of the transformers depth-estimation model that depth_model names, as a ``DepthEstimator``.

    A transformers model repo has its files at its root (``hub.ROOT``): ``config.json``,
    ``preprocessor_config.json`` and safetensors weights; pickles are refused (``hub.fetch``).
    """

    check: Check = no_check

    def preflight(self, key: ModelKey) -> None:
        """Find the model and read its configs, fetching only them; refuse a missing one, or one that ``check``
        refuses."""
        fetch(parse_model_name(key.model_name, "depth_model"), "depth_model", (ROOT,), self.check, weights=False)

    def __call__(self, role: str, key: ModelKey) -> tuple["DepthEstimator", Kept]:
        source = parse_model_name(key.model_name, "depth_model")
        folder = fetch(source, "depth_model", (ROOT,), self.check)
        what = "depth-estimation model"
        try:
            # The pipeline diffusers' Kandinsky ControlNet guide uses, over the model and image processor classes
            # the folder's configs name; the model loaded first, with its loading information.
            model, loading = AutoModelForDepthEstimation.from_pretrained(
                folder, dtype=key.dtype, use_safetensors=True, local_files_only=True, output_loading_info=True
            )
            refuse_missing_weights("depth_model", source, what, ROOT, loading["missing_keys"])
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            estimator = pipeline("depth-estimation", model=model, image_processor=processor, device=key.device)
        except ModelLoadError:
            raise
        except Exception as error:
            raise ModelLoadError(
                f"depth_model: {source.describe()} is not a usable {what} (broken or incomplete): {first_line(error)}"
            ) from error
        kept = place(role, estimator.model, key)
        return DepthEstimator(estimator, kept.parking), kept


# The transformers depth-estimation models that predict distance (far is large) whatever their config says (TIPSv2
# DPT: in meters, transformers 5.2x); other models that do say so in their config (``depth_estimation_type``
# "metric": Depth Anything V2 Metric, Prompt Depth Anything), and the rest predict relative inverse depth (near is
# large), which the ControlNet hint wants.
DISTANCE_MODEL_TYPES = ("depth_pro", "glpn", "tipsv2_dpt", "zoedepth")


def predicts_distance(config: object) -> bool:
    """Whether a depth-estimation model of ``config`` (its ``config.json``) predicts distance, far large."""
    return getattr(config, "model_type", "") in DISTANCE_MODEL_TYPES or (
        getattr(config, "depth_estimation_type", None) == "metric"
    )


class DepthEstimator:
    """A transformers depth-estimation pipeline, loaded once per process, that estimates a photo's depth map.

    Its model is placed as the memory mode says (``place``); ``parking`` holds it when it waits in CPU memory and
    visits the device only while it estimates. ``distance``: the model predicts distance (``predicts_distance``),
    whose map is turned over.
    """

    def __init__(self, estimator: DepthEstimationPipeline, parking: Parking) -> None:
        self.estimator = estimator
        self.parking = parking
        self.distance = predicts_distance(estimator.model.config)

    def estimate(self, photo: np.ndarray) -> np.ndarray:
        """The depth map of ``photo`` (height x width x 3 RGB uint8): height x width uint8, near bright. Raises
        ``NotFinite`` when the model's prediction holds NaN or infinity.

        It is the pipeline's ``depth`` output: its ``predicted_depth`` scaled back to the photo's size and
        stretched from its minimum (0) to its maximum (255), per image, by transformers (identically in
        transformers 5.0.0 and 5.24); for a model that predicts distance, turned over (255 - depth), as the
        ControlNet annotators turn metric depth over (controlnet_aux's ZoeDetector). A uniform prediction gives
        a uniform map, which ``inputs.estimate_depth`` refuses.
        """
        # A uniform prediction makes that stretch divide 0 by 0: numpy's warnings would say less than the refusal.
        with self.parking.visit(DEPTH_ESTIMATOR), np.errstate(invalid="ignore"):
            estimate = self.estimator(Image.fromarray(photo))
        if not torch.isfinite(estimate["predicted_depth"]).all():
            # The stretch would turn NaN or infinity into a map of zeros, refused as uniform for the wrong reason.
            overflow = "a float16 overflow: set cuda to False" if self.estimator.model.dtype == torch.float16 else ""
            raise NotFinite(
                "depth_model: the model's estimate holds values that are not finite (NaN or infinity), so no depth map "
                f"is made; {overflow or 'in float32 this points at broken weights: check depth_model'}."
            )
        depth = np.asarray(estimate["depth"])
        return 255 - depth if self.distance else depth


def lora_device(key: ModelKey) -> str:
    """Where the LoRA weights of a pipeline loaded for ``key`` go (``lora.apply``): with its models, which under
    model_offload wait in CPU memory and move whole to the device for their forward; elsewhere the device they
    compute on, where they stay even for a prior parked or a model offloaded layer by layer (LoRA weights are
    small), since what parks or offloads a model moves only the weights it had."""
    return "cpu" if memory_mode(key.memory_mode).pipelines == MODEL_OFFLOAD else key.device


def place(role: str, model: DiffusionPipeline | torch.nn.Module, key: ModelKey) -> Kept:
    """Place a freshly loaded model of ``role`` as the key's memory mode says, and say how it is kept: the one
    reader of the memory table's placement rules (``memory.MemoryMode``).

    A pipeline (the prior, a decoder) is placed on the device, or offloaded by diffusers
    (``enable_model_cpu_offload``, ``enable_sequential_cpu_offload``), as the mode's ``pipelines`` says; the prior's
    ``parked_prior_models`` are parked instead of placed, and a decoder's UNet is compiled in place when the key
    asks. The prior repo's image encoder and depth_model's model are placed, parked, or offloaded layer by layer
    by accelerate's ``cpu_offload``, as the mode's ``image_encoder`` and ``depth_estimator`` say.

    Args:
        role: the cache role (``ModelCache.get``).
        model: a diffusers pipeline, or the torch module of the image encoder or of the depth estimator.
        key: the device, memory mode and compile mode.

    Returns:
        ``Kept``: the parking, and whether the model is a decoder placed whole on the device of a memory mode,
        which may be set aside (never on the CPU's, where there is nothing to set aside, nor with a compiled UNet,
        which stays as compiled).
    """
    mode = memory_mode(key.memory_mode)
    if isinstance(model, DiffusionPipeline):
        parked = mode.parked_prior_models if role == PRIOR_ROLE else ()
        if mode.pipelines == MODEL_OFFLOAD:
            model.enable_model_cpu_offload(device=key.device)
        elif mode.pipelines == SEQUENTIAL_OFFLOAD:
            model.enable_sequential_cpu_offload(device=key.device)
        else:
            for name, component in model.components.items():
                if isinstance(component, torch.nn.Module) and name not in parked:
                    component.to(key.device)
        if key.compile_unet != "off":
            model.unet.compile(mode=key.compile_unet)
        whole = mode.pipelines == PLACED and mode is not CPU and not parked and key.compile_unet == "off"
        parking = Parking({name: getattr(model, name) for name in parked}, key.device)
        return Kept(parking, whole and role != PRIOR_ROLE)
    kept = mode.image_encoder if role == IMAGE_ENCODER else mode.depth_estimator
    if kept == SEQUENTIAL_OFFLOAD:
        cpu_offload(model, execution_device=torch.device(key.device))
        return Kept(Parking())
    if kept == PARKED:
        return Kept(Parking({role: model}, key.device))
    model.to(key.device)
    return Kept(Parking())
