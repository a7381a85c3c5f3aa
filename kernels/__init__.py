"""Triton kernels and their host launchers, installed as `trustfast.kernels`.

Kernel code only: no domain logic and no imports of `trustfast.<domain>`. Domains call
`trustfast.ops`, which validates inputs and dispatches here for CUDA tensors (or for CPU tensors
under TRITON_INTERPRET=1).
"""
