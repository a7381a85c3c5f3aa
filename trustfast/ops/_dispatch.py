"""Backend choice for every fused op: validate -> resolve backend -> backend.

Each op registers its backends with what each one accepts, as a tuple of tiny named constraint
checks over the facts of a call (device, dtype, has_mask, head_dim, ...), the way diffusers'
attention dispatch registers its backends. One resolver, `resolve_backend(op, backend, **facts)`,
decides for every op:

  - forced (the op's `backend=` argument, else TRUSTFAST_BACKEND=torch|triton|cpp|sdpa): that
    backend when every one of its constraints passes, else `BackendUnavailableError` naming the
    op, the backend and the failed constraint's reason. A forced backend never falls back.
  - auto: the device's preference (CUDA -> triton; CPU -> cpp, the C++ extension `trustfast._C`,
    then sdpa, PyTorch's own fused kernel where an op has one; anything else -> torch), used when
    the op implements it and its constraints pass, else the torch reference.

Every backend carries its platform's constraints (triton: the package is installed and the tensors
are on CUDA, or on the CPU under TRITON_INTERPRET=1, as in the test suite; cpp: CPU tensors and
the extension built) before the op's own. A constraint whose facts a caller does not state is not
checked: `select_backend(op, device)` answers from the device alone (as `trustfast info` does).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from trustfast._ext import cpp_extension, cpp_extension_error

BACKENDS = ("torch", "triton", "cpp", "sdpa")
ENV_VAR = "TRUSTFAST_BACKEND"
# Auto mode's preference per device type; the torch reference closes every list.
AUTO_ORDER = {"cuda": ("triton", "torch"), "cpu": ("cpp", "sdpa", "torch")}


class BackendUnavailableError(RuntimeError):
    """A forced backend (argument or TRUSTFAST_BACKEND) cannot take this call.

    Attributes: `op`, `backend`, `constraint` (the failed check's name) and `reason`.
    """

    def __init__(self, op: str, backend: str, constraint: str, reason: str):
        self.op, self.backend, self.constraint, self.reason = op, backend, constraint, reason
        super().__init__(f"{op}: backend {backend!r} unavailable: {reason} "
                         f"[constraint {constraint!r}]")


@dataclass(frozen=True)
class Constraint:
    """One named check a backend runs before it: `check(facts)` is None when the call passes,
    else the reason it cannot be taken. Skipped when the call does not state every fact in
    `facts` (so a device-only question is answered from the device)."""

    name: str
    check: Callable[[Mapping[str, Any]], str | None]
    facts: tuple[str, ...] = ()
    description: str = ""

    def reason(self, facts: Mapping[str, Any]) -> str | None:
        if any(facts.get(f) is None for f in self.facts):
            return None
        return self.check(facts)


@dataclass(frozen=True)
class OpSpec:
    """A registered op: the backends it implements and each one's op-specific constraints."""

    name: str
    backends: tuple[str, ...]
    constraints: Mapping[str, tuple[Constraint, ...]] = field(default_factory=dict)

    def checks(self, backend: str) -> tuple[Constraint, ...]:
        """The platform's constraints of `backend`, then the op's own, in the order they run."""
        return PLATFORM[backend] + self.constraints.get(backend, ())

    def failure(self, backend: str, facts: Mapping[str, Any]) -> tuple[str, str] | None:
        """(constraint name, reason) of the first check `backend` fails on `facts`, or None."""
        for c in self.checks(backend):
            reason = c.reason(facts)
            if reason is not None:
                return c.name, reason
        return None


# op name -> its spec; filled by each op module at import time (read by `trustfast info`).
OPS: dict[str, OpSpec] = {}


# ----------------------------------------------------------------------------- constraints


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtypes(*allowed: torch.dtype, what: str = "kernel") -> Constraint:
    """The call's `dtype` is one of `allowed`."""
    names = ", ".join(_dtype_name(d) for d in allowed)

    def check(facts):
        if facts["dtype"] in allowed:
            return None
        return f"the {what} does not support {facts['dtype']} (it takes {names})"

    return Constraint("dtype", check, ("dtype",), f"dtype in {{{names}}}")


def without(fact: str, what: str, *, hint: str = "use backend='torch'") -> Constraint:
    """The call's boolean `fact` (e.g. has_mask) is False: the backend takes no `what`."""

    def check(facts):
        return f"the kernel takes no {what}; {hint}" if facts[fact] else None

    return Constraint(f"no {what}", check, (fact,), f"no {what}")


def in_range(fact: str, low: int, high: int, what: str) -> Constraint:
    """low <= facts[fact] <= high."""

    def check(facts):
        value = facts[fact]
        return None if low <= value <= high else (f"the kernel takes {what} {low}..{high}, "
                                                  f"got {value}")

    return Constraint(what, check, (fact,), f"{what} in {low}..{high}")


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


def _triton_installed(facts):
    return None if triton_available() else "the triton package is not installed"


def _triton_device(facts):
    device = facts["device"]
    if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
        return None
    return (f"Triton kernels run on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1), "
            f"got a {device.type} tensor")


def _cpp_device(facts):
    device = facts["device"]
    if device.type == "cpu":
        return None
    return f"the C++ kernels run on CPU tensors, got a {device.type} tensor"


def _cpu_device(facts):
    device = facts["device"]
    if device.type == "cpu":
        return None
    return f"PyTorch's fused CPU kernel runs on CPU tensors, got a {device.type} tensor"


def _cpp_built(facts):
    return None if cpp_available() else f"trustfast._C is not built ({cpp_extension_error()})"


PLATFORM: dict[str, tuple[Constraint, ...]] = {
    "torch": (),
    "triton": (Constraint("triton installed", _triton_installed, (), "triton installed"),
               Constraint("device", _triton_device, ("device",),
                          "device CUDA (or CPU under TRITON_INTERPRET=1)")),
    "cpp": (Constraint("device", _cpp_device, ("device",), "device CPU"),
            Constraint("built", _cpp_built, (), "trustfast._C built")),
    "sdpa": (Constraint("device", _cpu_device, ("device",), "device CPU"),),
}


# ----------------------------------------------------------------------------- registry


def register_op(name: str, backends: Sequence[str],
                constraints: Mapping[str, Iterable[Constraint]] | None = None) -> OpSpec:
    """Record an op, the backends it implements ("torch", the reference, among them) and, per
    backend, the constraints it checks before it runs (on top of its platform's)."""
    backends = tuple(backends)
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"register_op: unknown backends {sorted(unknown)} for op {name!r}")
    if "torch" not in backends:
        raise ValueError(f"register_op: op {name!r} must implement the torch reference")
    constraints = {b: tuple(cs) for b, cs in (constraints or {}).items()}
    stray = set(constraints) - set(backends)
    if stray:
        raise ValueError(f"register_op: constraints for backends {sorted(stray)} that op "
                         f"{name!r} does not implement")
    spec = OpSpec(name, backends, constraints)
    OPS[name] = spec
    return spec


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


def _spec(op: str) -> OpSpec:
    try:
        return OPS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; registered: {sorted(OPS)}") from None


def _facts(facts: dict[str, Any]) -> dict[str, Any]:
    if facts.get("device") is not None:
        facts["device"] = torch.device(facts["device"])
    return facts


def unavailable_reason(op: str, backend: str, **facts: Any) -> str | None:
    """None when `backend` can take a call of `op` with these facts, else why not."""
    spec = _spec(op)
    if backend not in spec.backends:
        return f"backend {backend!r} is not implemented (implemented: {', '.join(spec.backends)})"
    failed = spec.failure(backend, _facts(facts))
    return None if failed is None else failed[1]


def resolve_backend(op: str, backend: str | None = None, **facts: Any) -> str:
    """The backend that runs this call of `op`; `facts` describe the call (device, dtype,
    has_mask, head_dim, ...).

    A forced backend (`backend`, else TRUSTFAST_BACKEND) that cannot take the call raises
    BackendUnavailableError with the op, the backend and the failed constraint's reason; auto
    mode takes the device's preferred backend when its constraints pass, else the torch reference.
    """
    spec = _spec(op)
    facts = _facts(facts)
    forced = requested_backend(backend)
    if forced is not None:
        if forced not in spec.backends:
            raise BackendUnavailableError(
                op, forced, "implemented",
                f"backend {forced!r} is not implemented (implemented: {', '.join(spec.backends)})")
        failed = spec.failure(forced, facts)
        if failed is not None:
            raise BackendUnavailableError(op, forced, *failed)
        return forced
    device = facts.get("device")
    order = AUTO_ORDER.get(device.type, ()) if device is not None else ()
    for name in order:
        if name in spec.backends and spec.failure(name, facts) is None:
            return name
    failed = spec.failure("torch", facts)
    if failed is not None:
        raise BackendUnavailableError(op, "torch", *failed)
    return "torch"


def select_backend(op: str, device: torch.device | str, backend: str | None = None) -> str:
    """The backend that runs `op` on `device` (facts other than the device not checked),
    honouring a forced choice; raises BackendUnavailableError when a forced one cannot."""
    return resolve_backend(op, backend, device=device)


def check_contiguous(backend: str, tensors: Mapping[str, torch.Tensor | Sequence]) -> None:
    """The kernel backends read flat memory: each named tensor (or list of tensors, None
    entries skipped) must be contiguous; a ValueError names the first that is not."""
    for name, value in tensors.items():
        items = [(name, value)] if isinstance(value, torch.Tensor) else [
            (f"{name}[{i}]", t) for i, t in enumerate(value)]
        for label, t in items:
            if t is not None and not t.is_contiguous():
                raise ValueError(
                    f"{label} is not contiguous (shape {tuple(t.shape)}, stride {t.stride()}); "
                    f"the {backend} backend needs contiguous tensors: pass .contiguous() copies "
                    "or backend='torch'")
