"""CUDA graphs of the prior transformer's and the decoder UNet's forward: captured on first use for each input
signature, then replayed at every denoising step.

An eager UNet forward launches about a thousand kernels, and at 768 x 768 on an H200 a run waits on the host
that launches them rather than on the GPU (BENCHMARKS.md); a replayed graph is one launch. torch.compile's
reduce-overhead mode replays graphs too, but compiles for about a minute first, and again for every new batch
size or guidance (``compile_unet``); a capture here costs a few eager forward passes. PyTorch's own recipe is
followed (the CUDA graphs section of the CUDA semantics notes): warm-up passes on a side stream, then one capture
into a memory pool shared by all the graphs of one model, with static input and output tensors; a replay copies
the new inputs into the static ones (without waiting for the GPU) and the outputs out of the static ones.

A graph records the device addresses of the weights, so it is only valid while the weights stay where they were:
``memory.MemoryMode.graphed`` names the stages whose weights do, and ``drop`` forgets a module's graphs when its
weights move (a decoder set aside) or go (a model released).
"""

import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils import _pytree as pytree

from .errors import GraphCaptureFailed

# Eager passes before a capture: the first initialises cuBLAS and cuDNN handles and workspaces, which must not
# happen during a capture; PyTorch's example uses three.
WARMUP_PASSES = 3


class Graph(Protocol):
    """A captured graph: ``torch.cuda.CUDAGraph``."""

    def replay(self) -> None:
        """Run the captured work again, reading the static inputs and writing the static outputs."""


class Capture(Protocol):
    """How graphs are captured: ``CudaCapture`` on CUDA (tests on the CPU give one that replays eagerly)."""

    def pool(self) -> object:
        """A new memory pool, for all the graphs of one model."""

    def __call__(self, run: Callable[[], object], pool: object, device: torch.device) -> tuple[Graph, object]:
        """Capture ``run`` (a forward pass over static inputs on ``device``) into ``pool``; return the graph and
        ``run``'s outputs, the static output tensors a replay writes."""


class CudaCapture:
    """Graphs captured with ``torch.cuda.CUDAGraph``, after ``WARMUP_PASSES`` eager passes on a side stream.

    The capture is thread-local (``capture_error_mode="thread_local"``): Ikomia Studio runs tasks in worker
    threads, and a CUDA call of another thread during the capture is then not taken for part of it. Its streams
    are the module's GPU's: the warm-up's and the capture's are made with that GPU current, as ``torch.cuda.graph``'s
    own default capture stream is made once per process, on the GPU current at the first capture.
    """

    def pool(self) -> object:
        return torch.cuda.graph_pool_handle()

    def __call__(self, run: Callable[[], object], pool: object, device: torch.device) -> tuple[Graph, object]:
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_PASSES):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
                outputs = run()
        return graph, outputs


@dataclass
class _Captured:
    graph: Graph
    inputs: list[torch.Tensor | None]  # the static copy of each input tensor, None for other values
    outputs: object  # the static outputs, as the forward returned them


class GraphedForward:
    """The forward of one module, replayed from a CUDA graph per input signature.

    The signature is the structure of the arguments, the shape, dtype and device of each tensor, and the value
    of every other argument: for the decoder's UNet, the batch (pictures, doubled by guidance), the size, and
    the inputs of the decoder's kind (the inpainting UNet's extra channels, ControlNet's hint). ``captures``
    counts the captures.
    """

    def __init__(self, capture: Capture, device: torch.device, name: str = "module") -> None:
        self.capture = capture
        self.device = device
        self.name = name
        self.captures = 0
        self._pool: object = None
        self._graphs: dict[tuple, _Captured] = {}

    def __call__(self, forward: Callable[..., object], *arguments: object, **keywords: object) -> object:
        """``forward(*arguments, **keywords)``, replayed from the graph of their signature (captured first if
        there is none yet); the outputs are copies, which the next replay does not overwrite.

        Raises ``GraphCaptureFailed`` when the capture fails (an operation CUDA graphs cannot hold), naming
        cuda_graphs and the module; out of memory stays ``torch.OutOfMemoryError``.
        """
        leaves, spec = pytree.tree_flatten((arguments, keywords))
        key = (spec, tuple(_signature(leaf) for leaf in leaves))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(forward, leaves, spec)
        for static, leaf in zip(captured.inputs, leaves, strict=True):
            if static is not None:
                static.copy_(leaf, non_blocking=True)
        captured.graph.replay()
        return pytree.tree_map_only(torch.Tensor, torch.clone, captured.outputs)

    def _capture(self, forward: Callable[..., object], leaves: Sequence[object], spec: pytree.TreeSpec) -> _Captured:
        # Static inputs on the module's device: a tensor the pipeline keeps on the host (the timestep) is copied
        # in before each replay, as a graph cannot read host memory that changes.
        statics = [
            torch.empty_like(leaf, device=self.device).copy_(leaf) if isinstance(leaf, torch.Tensor) else None
            for leaf in leaves
        ]
        arguments, keywords = pytree.tree_unflatten(
            [leaf if static is None else static for static, leaf in zip(statics, leaves, strict=True)], spec
        )
        if self._pool is None:
            self._pool = self.capture.pool()
        try:
            graph, outputs = self.capture(lambda: forward(*arguments, **keywords), self._pool, self.device)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            shapes = ", ".join(
                "x".join(map(str, leaf.shape)) or "scalar" for leaf in leaves if isinstance(leaf, torch.Tensor)
            )
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise GraphCaptureFailed(
                f"cuda_graphs: the {self.name}'s forward pass could not be captured into a CUDA graph (inputs "
                f"{shapes}): {type(error).__name__}: {reason}. Set cuda_graphs to False to run without them."
            ) from error
        self.captures += 1
        return _Captured(graph, statics, outputs)


def _signature(leaf: object) -> object:
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), leaf.dtype, leaf.device)
    return ("value", type(leaf), leaf)


# The graphs of each module, for as long as the module lives (``drop`` forgets them before). Runs on two GPUs
# use them at once, each under its own cache's lock only: the lock guards the dictionary.
_GRAPHS: "weakref.WeakKeyDictionary[torch.nn.Module, GraphedForward]" = weakref.WeakKeyDictionary()
_GRAPHS_LOCK = threading.Lock()
CAPTURE: Capture = CudaCapture()


def graphs_of(module: torch.nn.Module) -> GraphedForward | None:
    """The graphs captured for ``module`` so far, or None."""
    with _GRAPHS_LOCK:
        return _GRAPHS.get(module)


def forward(module: torch.nn.Module, graphed: bool) -> Callable[..., object]:
    """What a denoising loop calls in place of ``module``: ``module`` itself, or, when ``graphed``, its forward
    replayed from CUDA graphs (``GraphedForward``, made on first use and kept for the next runs until ``drop``).

    The replay calls ``module.forward`` directly: a graphed module runs with no hooks (its weights stay placed,
    ``memory.MemoryMode.graphed``, so nothing moves them).
    """
    if not graphed:
        return module
    with _GRAPHS_LOCK:
        graphs = _GRAPHS.get(module)
        if graphs is None:
            device = next(module.parameters()).device
            graphs = _GRAPHS[module] = GraphedForward(CAPTURE, device, type(module).__name__)
    return functools.partial(graphs, module.forward)


def drop_on(device: str | torch.device) -> None:
    """Forget the graphs of every module on ``device`` ("cuda:1"), and so give their memory pools back (out of
    memory there); the graphs of the other GPUs' modules stay."""
    device = torch.device(device)
    with _GRAPHS_LOCK:
        for module in [module for module, graphs in _GRAPHS.items() if graphs.device == device]:
            del _GRAPHS[module]


def drop(modules: Sequence[torch.nn.Module]) -> None:
    """Forget the graphs of ``modules``, whose weights are about to move or go; their memory pools go with them."""
    with _GRAPHS_LOCK:
        for module in modules:
            _GRAPHS.pop(module, None)
