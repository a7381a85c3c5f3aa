"""Fused operations. Each op validates its inputs, resolves a backend and runs it.

Backends: a plain-PyTorch reference (the specification), Triton kernels for CUDA
(`trustfast.kernels`) and C++ kernels for the CPU (`trustfast._C`). Each op registers what each
backend takes and one resolver picks: see `_dispatch.py`. Importing this package registers every
op (`trustfast info` lists them).
"""

from trustfast.ops._dispatch import (
    BACKENDS,
    OPS,
    BackendUnavailableError,
    cpp_available,
    resolve_backend,
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
from trustfast.ops.pgd_step import pgd_step, pgd_step_reference
from trustfast.ops.sequence_nll import SequenceNLL, sequence_nll, sequence_nll_reference

__all__ = [
    "BACKENDS",
    "OPS",
    "BackendUnavailableError",
    "SequenceNLL",
    "attention",
    "attention_reference",
    "cpp_available",
    "masked_adamw_step",
    "masked_adamw_step_reference",
    "masked_sgd_step",
    "masked_sgd_step_reference",
    "pgd_step",
    "pgd_step_reference",
    "resolve_backend",
    "select_backend",
    "sequence_nll",
    "sequence_nll_reference",
    "triton_available",
]
