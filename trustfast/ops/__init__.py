"""Fused operations. Each op validates its inputs, picks a backend and runs it.

Backends: a plain-PyTorch reference (the specification), Triton kernels for CUDA
(`trustfast.kernels`) and C++ kernels for the CPU (`trustfast._C`). See `_dispatch.py`.
"""

from trustfast.ops._dispatch import (
    BACKENDS,
    OPS,
    BackendUnavailableError,
    cpp_available,
    select_backend,
    triton_available,
)
from trustfast.ops.masked_update import (
    masked_adamw_step,
    masked_adamw_step_reference,
    masked_sgd_step,
    masked_sgd_step_reference,
)

__all__ = [
    "BACKENDS",
    "OPS",
    "BackendUnavailableError",
    "cpp_available",
    "masked_adamw_step",
    "masked_adamw_step_reference",
    "masked_sgd_step",
    "masked_sgd_step_reference",
    "select_backend",
    "triton_available",
]
