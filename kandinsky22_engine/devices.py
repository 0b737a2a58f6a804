"""The device a run computes on, named as torch names it: "cpu", "cuda:N" (the GPU of index N, as torch numbers
the GPUs it sees), or "meta" in the tests.

Some of torch's CUDA calls act on the thread's current GPU rather than on a tensor's (``torch.cuda.synchronize``
without an argument, a new ``torch.cuda.Stream``, the stream a CUDA graph is captured on): these helpers make them
act on the run's. ``torch.cuda.empty_cache`` needs none: it empties the cache of every GPU.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def is_cuda(device: str | torch.device) -> bool:
    """Whether ``device`` ("cuda", "cuda:1", a ``torch.device``) is a CUDA GPU."""
    return torch.device(device).type == "cuda"


@contextmanager
def current(device: str | torch.device) -> Iterator[None]:
    """Make ``device`` the thread's current CUDA GPU for the block when it is one (``torch.cuda.device``, which
    puts the thread's former GPU back after it); any other device changes nothing."""
    if not is_cuda(device):
        yield
        return
    with torch.cuda.device(torch.device(device)):
        yield


def synchronize(device: str | torch.device) -> None:
    """Wait until the GPU ``device`` has done the work queued on it; nothing for another device."""
    if is_cuda(device):
        torch.cuda.synchronize(device)
