"""Small helpers shared by the domains: module modes, headless plotting, and the peak tensor
memory of a function on any device."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def progress_kwargs(show: bool = True) -> dict:
    """tqdm keyword arguments for a progress bar the caller can turn off: `{}` (tqdm decides,
    so TQDM_DISABLE=1 hides it) or `{"disable": True}`. Passing `disable=False` or `None`
    explicitly would override TQDM_DISABLE."""
    return {} if show else {"disable": True}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run with every module in eval mode; restore each module's own mode afterwards."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def pyplot():
    """matplotlib.pyplot on the Agg backend (PNG files, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class _PeakTracker(TorchDispatchMode):
    """Counts every tensor an operator creates by its storage until the storage's last Python
    reference dies (so autograd's saved tensors count too): torch has no CPU allocator
    statistics."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, references]
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # A view of (or an in-place op on) a tensor made before the call allocates nothing.
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr == 0:
                    continue
                entry = self.live.get(ptr)
                if entry is None and ptr in inputs:
                    continue
                if entry is None:
                    entry = self.live[ptr] = [storage.nbytes(), 0]
                    self.current += entry[0]
                    self.peak = max(self.peak, self.current)
                entry[1] += 1
                weakref.finalize(t, self._release, ptr)
        return out


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors created while `fn()` runs (inputs made before the call excluded),
    on any device, the CPU included, through a TorchDispatchMode."""
    tracker = _PeakTracker()
    with tracker:
        result = fn()
        del result
    return tracker.peak


def check_device(device: str) -> None:
    """Raise a ConfigError naming `device` unless it is auto, cpu, cuda or cuda:N."""
    from trustfast.config import ConfigError

    if not isinstance(device, str):
        raise ConfigError("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device in ("auto", "cpu", "cuda", "mps"):
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        return
    raise ConfigError("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def resolve_device(device: str) -> torch.device:
    """The torch.device of a config's `device`; CUDA asked for where there is none is an
    error naming `device` (no silent CPU fallback)."""
    from trustfast.config import ConfigError

    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"is {device!r} but CUDA is not available here "
                                        f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("device", f"is {device!r} but there are "
                                        f"{torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", "is 'mps' but MPS is not available here")
    return dev
