"""CPU-aware `torch.cuda` calls that OpenRLHF makes unconditionally.

OpenRLHF calls ``torch.cuda.set_device / synchronize / empty_cache / current_stream / current_device``
whatever the device (DeepspeedStrategy.setup_distributed, all_reduce/all_gather, barriers, PPO actors).
On the CPU backend these become what they mean on a single CPU device: selecting, synchronising or
freeing a device is a no-op, the current device is ``cpu`` (so ``tensor.to(torch.cuda.current_device())``
stays on the CPU) and there is no CUDA stream (``None``, the "default stream" argument of collectives).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from openrlhf_fair.host.patching import patch_attribute, undo_all

PATCH_ID = "openrlhf_fair.cpu_backend.torch_cuda"
INDEX_PATCH_ID = "openrlhf_fair.cpu_backend.torch_cuda.index_zero"


def _no_op(original):
    def cpu_backend_no_op(*args, **kwargs):
        return None

    return cpu_backend_no_op


def _current_device(original):
    import torch

    def cpu_backend_current_device():
        return torch.device("cpu")

    return cpu_backend_current_device


REPLACEMENTS = {
    "set_device": _no_op,
    "synchronize": _no_op,
    "empty_cache": _no_op,
    "current_stream": _no_op,
    "current_device": _current_device,
}


def apply() -> Callable[[], None]:
    """Patch the `torch.cuda` functions above; return the undo function."""
    import torch

    undos = [patch_attribute(torch.cuda, name, make, PATCH_ID) for name, make in REPLACEMENTS.items()]

    return undo_all(undos)


@contextlib.contextmanager
def cuda_index_zero() -> Iterator[None]:
    """While inside, ``torch.cuda.current_device()`` is ``0``: for host code that formats ``f"cuda:{index}"``.

    A patch stacked on this module's own (`patching.patch_attribute`), undone on leaving.
    """
    import torch

    undo = patch_attribute(torch.cuda, "current_device", lambda original: (lambda: 0), INDEX_PATCH_ID)
    try:
        yield
    finally:
        undo()
