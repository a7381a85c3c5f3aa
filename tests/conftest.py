"""Test harness. TRITON_INTERPRET=1 must be set before triton is imported anywhere, so every
Triton kernel runs on the CPU (float32 / float16 only: bfloat16 is broken in the interpreter)."""

import os

os.environ["TRITON_INTERPRET"] = "1"
os.environ.pop("TRUSTFAST_BACKEND", None)  # tests choose backends explicitly

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# The same drawn examples on every run: a red CI run can be reproduced, a green one repeats.
settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.load_profile("deterministic")

from trustfast.ops import cpp_available, triton_available  # noqa: E402

KERNEL_BACKENDS = [
    pytest.param(
        "cpp",
        marks=[pytest.mark.cpp,
               pytest.mark.skipif(not cpp_available(), reason="trustfast._C not built")],
    ),
    pytest.param(
        "triton",
        marks=[pytest.mark.triton,
               pytest.mark.skipif(not triton_available(), reason="triton not installed")],
    ),
]

# Per-dtype tolerances (atol, rtol) of a kernel against the float64 reference after one step.
TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-6, 1e-5),
    torch.bfloat16: (1e-2, 2e-2),
    torch.float16: (1e-3, 2e-3),
}


def mismatch_report(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> str:
    """'' when close, else how many elements differ, the worst one, and where."""
    a, e = actual.double(), expected.double()
    bad = ~((a - e).abs() <= atol + rtol * e.abs())
    bad |= a.isnan() != e.isnan()
    n_bad = int(bad.sum())
    if n_bad == 0:
        return ""
    flat = bad.flatten().nonzero().flatten()
    first = flat[:5].tolist()
    err = (a - e).abs().flatten()
    worst = int(torch.nan_to_num(err, nan=float("inf")).argmax())
    return (
        f"{n_bad} of {a.numel()} elements differ (atol={atol}, rtol={rtol}); first at flat "
        f"indices {first}; worst at {worst}: got {a.flatten()[worst].item()!r}, "
        f"expected {e.flatten()[worst].item()!r}"
    )


def assert_close(actual, expected, dtype=None, atol=None, rtol=None, name="tensor"):
    dtype = dtype or actual.dtype
    d_atol, d_rtol = TOLERANCES[dtype]
    msg = mismatch_report(actual, expected, d_atol if atol is None else atol,
                          d_rtol if rtol is None else rtol)
    assert not msg, f"{name}: {msg}"


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Tiny graphs gain nothing from intra-op threads; on a busy 2-core runner the pool's threads
    slowed one 156x156 reference Hessian from 0.27 s to 1.6-7 s (1 thread: 0.27 s, measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
