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
from trustfast.ops.attention import attention, attention_reference
from trustfast.ops.masked_update import (
    masked_adamw_step,
    masked_adamw_step_reference,
    masked_sgd_step,
    masked_sgd_step_reference,
)
from trustfast.ops.pgd_step import pgd_step

__all__ = [
    "BACKENDS",
    "OPS",
    "BackendUnavailableError",
    "attention",
    "attention_reference",
    "cpp_available",
    "masked_adamw_step",
    "masked_adamw_step_reference",
    "masked_sgd_step",
    "masked_sgd_step_reference",
    "pgd_step",
    "select_backend",
    "triton_available",
]
