"""The argument checks of the public API: one family, used at every public boundary.

Each check raises a `TypeError` (wrong kind of value: a string for a number, an int tensor for a
float one, a Dataset for a DataLoader) or a `ValueError` (right kind, wrong value: a shape, a
range, NaN/Inf) whose message names the argument, says what was expected and shows what came:

    check_number("lr", lr, low=0.0)          # lr must be a number >= 0, got '0.1' (str)
    check_images("images", x)                # images must lie in [0, 1], got values in [-2, 2] ...
    check_tensor("mask", m, dtypes=BOOL_OR_FLOAT, shape=tuple(w.shape), binary=True)

Nothing is cast, broadcast or clamped on the caller's behalf. The checks on tensor values
(range, finiteness, 0/1 masks) read the whole tensor once; hot loops that call a public function
many times on values they made themselves pass `validate=False` where the function offers it.
This module imports only torch, so every layer (ops included) may use it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch

FLOATING = "floating"
BOOL_OR_FLOAT = "bool or floating"
IMAGE_HINT = ("images are float tensors in [0, 1] (divide uint8 images by 255; undo a "
              "mean/std normalization before passing them)")


def shown(value: Any) -> str:
    """A value as an error message shows it: its repr (shortened) and its type."""
    if isinstance(value, torch.Tensor):
        return f"a {describe(value)}"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def describe(x: torch.Tensor) -> str:
    """`tensor of shape (2, 3), float32, on cpu`."""
    shape = "(" + ", ".join(str(s) for s in x.shape) + ("," if x.dim() == 1 else "") + ")"
    return f"tensor of shape {shape}, {str(x.dtype).replace('torch.', '')}, on {x.device}"


def _with(hint: str) -> str:
    return f" ({hint})" if hint else ""


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 hint: str = "") -> float | int:
    """`value` as a Python number inside the given bounds, else an error naming `name`.

    A string, a bool or a tensor with more than one element is a TypeError (a one-element
    tensor is read with .item()); NaN and +-Inf are a ValueError unless a bound is infinite on
    purpose (`high=math.inf` still refuses inf itself). `integer=True` refuses 2.5 but takes 2.0.
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be {kind}, got {shown(value)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {kind}, got {shown(value)}{_with(hint)}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise TypeError(f"{name} must be an integer, got {shown(value)}")
        value = int(value)
    elif not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}{_with(hint)}")
    bounds = []
    if low is not None:
        bounds.append(f"> {low:g}" if low_open else f">= {low:g}")
    if high is not None:
        bounds.append(f"< {high:g}" if high_open else f"<= {high:g}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{name} must be {kind} {' and '.join(bounds)}, got {value!r}"
                         f"{_with(hint)}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """`value` if it is one of `choices`, else a ValueError (TypeError for an unhashable or
    differently typed value) naming `name` and the choices."""
    listed = ", ".join(repr(c) for c in choices)
    if not any(type(value) is type(c) and value == c for c in choices):
        kind = ValueError if any(isinstance(value, type(c)) for c in choices) else TypeError
        raise kind(f"{name} must be one of {listed}, got {shown(value)}")
    return value


def _dtype_ok(dtype: torch.dtype, dtypes: Any) -> bool:
    if dtypes == FLOATING:
        return dtype.is_floating_point
    if dtypes == BOOL_OR_FLOAT:
        return dtype == torch.bool or dtype.is_floating_point
    return dtype in tuple(dtypes)


def _dtypes_text(dtypes: Any) -> str:
    if isinstance(dtypes, str):
        return dtypes
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(name: str, x: Any, *, dtypes: Any = None,
                 ndim: int | Sequence[int] | None = None,
                 shape: Sequence[int | None] | None = None,
                 device: torch.device | str | None = None,
                 finite: bool = False, low: float | None = None, high: float | None = None,
                 binary: bool = False, nonempty: bool = False, hint: str = "") -> torch.Tensor:
    """`x` if it is a tensor meeting every given condition, else an error naming `name`.

    dtypes: FLOATING, BOOL_OR_FLOAT or a tuple of torch dtypes (TypeError otherwise).
    ndim: an int or the allowed ints; shape: the exact shape, None for any size in a position.
    device: the device `x` must be on (compared by type and index where given).
    finite: no NaN/Inf; low/high: every value inside [low, high] (NaN fails too);
    binary: every value is 0 or 1 (masks); nonempty: at least one element.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {shown(x)}{_with(hint)}")
    if dtypes is not None and not _dtype_ok(x.dtype, dtypes):
        raise TypeError(f"{name} must be a {_dtypes_text(dtypes)} tensor, got {describe(x)}"
                        f"{_with(hint)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            dims = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name} must have {dims} dimensions, got {describe(x)}"
                             f"{_with(hint)}")
    if shape is not None:
        shape = tuple(shape)
        if x.dim() != len(shape) or any(s is not None and s != t for s, t in zip(shape, x.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {describe(x)}{_with(hint)}")
    if device is not None:
        want = torch.device(device)
        if x.device.type != want.type or (want.index is not None and x.device != want):
            raise ValueError(f"{name} must be on {want}, got {describe(x)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got {describe(x)}")
    if x.numel() == 0:
        return x
    if finite and (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/Inf values among its "
                         f"{x.numel()}{_with(hint)}")
    if binary:
        ok = (x == 0) | (x == 1)
        if not bool(ok.all()):
            other = x[~ok].flatten()[0].item()
            raise ValueError(f"{name} must hold only 0 and 1 (a binary mask), got {other!r} "
                             f"among its values{_with(hint)}")
    if low is not None or high is not None:
        values = x.detach()
        lo, hi = values.min().item(), values.max().item()
        if math.isnan(lo) or math.isnan(hi) or (low is not None and lo < low) or \
                (high is not None and hi > high):
            span = (f"[{'-inf' if low is None else f'{low:g}'}, "
                    f"{'inf' if high is None else f'{high:g}'}]")
            got = ("NaN values" if math.isnan(lo) or math.isnan(hi)
                   else f"values in [{lo:.4g}, {hi:.4g}]")
            raise ValueError(f"{name} must lie in {span}, got {got}{_with(hint)}")
    return x


def check_images(name: str, x: Any, *, ndim: int | Sequence[int] = 4,
                 channels: int | None = None) -> torch.Tensor:
    """A float NCHW batch (ndim 4; 3 for one CHW image where allowed) with values in [0, 1]."""
    x = check_tensor(name, x, dtypes=FLOATING, ndim=ndim, hint=IMAGE_HINT)
    if channels is not None and x.shape[-3] != channels:
        raise ValueError(f"{name} must have {channels} channels (NCHW), got {describe(x)}")
    return check_tensor(name, x, low=0.0, high=1.0, hint=IMAGE_HINT)


def check_same_shape(name: str, x: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    """A ValueError unless `x` has exactly `other`'s shape (no broadcasting)."""
    if tuple(x.shape) != tuple(other.shape):
        raise ValueError(f"{name} must have the shape of {other_name} {tuple(other.shape)}, got "
                         f"{describe(x)} (nothing is broadcast)")


def check_loader(name: str, loader: Any) -> Iterable:
    """An iterable of batches (a DataLoader or a list of (inputs, labels) tuples). A Dataset is
    a TypeError that says how to wrap it."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(loader, DataLoader):
        return loader
    if isinstance(loader, Dataset) or (hasattr(loader, "__getitem__") and hasattr(loader, "__len__")
                                       and not isinstance(loader, (list, tuple))):
        raise TypeError(f"{name} must be a DataLoader (an iterable of (inputs, labels) batches), "
                        f"got a {type(loader).__name__}; wrap it: "
                        f"DataLoader({name}, batch_size=128)")
    if isinstance(loader, (list, tuple)):
        for i, batch in enumerate(loader[:1]):
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise TypeError(f"{name} must hold (inputs, labels) batches, got {shown(batch)} "
                                f"at position {i}")
        return loader
    if not isinstance(loader, Iterable):
        raise TypeError(f"{name} must be a DataLoader (an iterable of (inputs, labels) batches), "
                        f"got {shown(loader)}")
    return loader
