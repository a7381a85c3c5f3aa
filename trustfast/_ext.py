"""Loads the optional C++ extension `trustfast._C` once and remembers why it is missing."""

from __future__ import annotations

import importlib

import torch  # noqa: F401  (_C links against libtorch: torch must be loaded first)

_C = None
_C_ERROR: str | None = None

try:
    _C = importlib.import_module("trustfast._C")
except ImportError as exc:  # not built (no compiler, TRUSTFAST_NO_EXT=1) or ABI mismatch
    _C_ERROR = f"{type(exc).__name__}: {exc}"


def cpp_extension():
    """The `trustfast._C` module, or None when it was not built."""
    return _C


def cpp_extension_error() -> str | None:
    """Why `trustfast._C` could not be imported (None when it is available)."""
    return _C_ERROR
