"""`trustfast info`: what this machine has and which backend each op will use."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from trustfast._meta import __version__
from trustfast.ops import _dispatch

# Looked up by package metadata, not imported: diffusers / transformers take seconds to import.
OPTIONAL_PACKAGES = ("triton", "deepspeed", "diffusers", "transformers", "accelerate",
                     "bitsandbytes", "safetensors", "scikit-learn")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def backend_table() -> dict[str, dict[str, str]]:
    """{op: {device: backend or 'unavailable: reason'}} for cpu and, if present, cuda."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    table: dict[str, dict[str, str]] = {}
    for op in sorted(_dispatch.OPS):
        row = {}
        for dev in devices:
            try:
                row[dev] = _dispatch.select_backend(op, torch.device(dev))
            except (_dispatch.BackendUnavailableError, ValueError) as exc:
                row[dev] = f"error: {exc}"
        table[op] = row
    return table


def info_text() -> str:
    """Human-readable report of versions, devices, extension status and op backends."""
    from trustfast._ext import cpp_extension, cpp_extension_error

    lines = [
        f"trustfast     {__version__}",
        f"python        {platform.python_version()} ({platform.machine()}, {platform.system()})",
        f"torch         {torch.__version__} (CUDA {torch.version.cuda or 'none'}, "
        f"{torch.get_num_threads()} CPU threads)",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"cuda:{i}        {torch.cuda.get_device_name(i)}")
    else:
        lines.append("cuda          not available")
    ext = cpp_extension()
    if ext is not None:
        lines.append(f"trustfast._C  built (OpenMP threads: {ext.openmp_threads()})")
    else:
        lines.append(
            f"trustfast._C  NOT built, CPU ops use the torch reference ({cpp_extension_error()})"
        )
    for dist in OPTIONAL_PACKAGES:
        lines.append(f"{dist:<13} {_version(dist)}")
    if _dispatch.triton_interpreted():
        lines.append("TRITON_INTERPRET=1: Triton kernels run on the CPU through the interpreter")
    forced = _dispatch.requested_backend(None)
    choice = f"forced to {forced} by TRUSTFAST_BACKEND" if forced else "auto"
    lines.append(f"backend       {choice}")
    lines.append("")
    table = backend_table()
    devices = list(next(iter(table.values())).keys()) if table else ["cpu"]
    width = max((len(op) for op in table), default=2)
    lines.append(f"{'op':<{width}}  " + "  ".join(f"{d:<8}" for d in devices))
    for op, row in table.items():
        lines.append(f"{op:<{width}}  " + "  ".join(f"{row[d]:<8}" for d in devices))
    lines += ["", "what each backend takes (auto mode skips a backend that fails a check; a "
              "forced one raises):"]
    lines += constraint_lines()
    return "\n".join(lines)


def constraint_lines() -> list[str]:
    """One line per (op, backend): the constraints checked before that backend runs."""
    lines = []
    for op in sorted(_dispatch.OPS):
        spec = _dispatch.OPS[op]
        for backend in spec.backends:
            checks = ", ".join(c.description or c.name for c in spec.checks(backend))
            lines.append(f"  {op}[{backend}]: {checks or 'any call (the reference)'}")
    return lines
