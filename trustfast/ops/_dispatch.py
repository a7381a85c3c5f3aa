"""Backend choice for every fused op: validate -> dispatch -> backend.

Rule: CUDA tensor -> Triton; CPU tensor -> the C++ extension `trustfast._C` when built, else the
torch reference. `TRUSTFAST_BACKEND=torch|triton|cpp` or an op's `backend=` argument forces one;
a forced backend that cannot run on the tensors' device raises `BackendUnavailableError`.
Under `TRITON_INTERPRET=1` the Triton backend also accepts CPU tensors (used by the test suite).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from trustfast._ext import cpp_extension, cpp_extension_error

BACKENDS = ("torch", "triton", "cpp")
ENV_VAR = "TRUSTFAST_BACKEND"

# op name -> backends it implements; filled by each op module at import time (for `trustfast info`).
OPS: dict[str, tuple[str, ...]] = {}


class BackendUnavailableError(RuntimeError):
    """A backend was forced (argument or TRUSTFAST_BACKEND) but cannot run here."""


def register_op(name: str, backends: tuple[str, ...]) -> None:
    """Record an op and the backends it implements."""
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"register_op: unknown backends {sorted(unknown)} for op {name!r}")
    OPS[name] = tuple(backends)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether the `triton` package is importable (no GPU needed to answer)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Whether Triton kernels run on the CPU through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cpp_available() -> bool:
    """Whether the C++ extension `trustfast._C` is built and importable."""
    return cpp_extension() is not None


def _why_unavailable(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on `device`, else the reason it cannot."""
    if backend == "torch":
        return None
    if backend == "triton":
        if not triton_available():
            return "the triton package is not installed"
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return None
        return (
            f"Triton kernels run on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1), "
            f"got a {device.type} tensor"
        )
    if backend == "cpp":
        if device.type != "cpu":
            return f"the C++ kernels run on CPU tensors, got a {device.type} tensor"
        if not cpp_available():
            return f"trustfast._C is not built ({cpp_extension_error()})"
        return None
    raise AssertionError(backend)


def requested_backend(backend: str | None) -> str | None:
    """The forced backend from the argument, else from TRUSTFAST_BACKEND, else None (auto)."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        source = ENV_VAR
    if backend is None or backend == "auto":
        return None
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or 'auto', got {backend!r}")
    return backend


def select_backend(op: str, device: torch.device, backend: str | None = None) -> str:
    """Pick the backend that runs `op` on `device`, honouring a forced choice.

    Raises BackendUnavailableError when the forced backend cannot run `op` on `device`.
    """
    device = torch.device(device)
    implemented = OPS.get(op, BACKENDS)
    forced = requested_backend(backend)
    if forced is not None:
        if forced not in implemented:
            raise BackendUnavailableError(f"{op}: backend {forced!r} is not implemented")
        reason = _why_unavailable(forced, device)
        if reason is not None:
            raise BackendUnavailableError(f"{op}: backend {forced!r} unavailable: {reason}")
        return forced
    preferred = "triton" if device.type == "cuda" else "cpp" if device.type == "cpu" else "torch"
    if preferred in implemented and _why_unavailable(preferred, device) is None:
        return preferred
    return "torch"
