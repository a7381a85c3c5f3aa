"""Attention: trustfast's kernel vs SDPA's backends (flash, efficient, cuDNN, math) and xformers.

`check(shape, dtype, device)` runs the Triton kernel's forward, backward and JVP against a
float64 explicit-softmax reference; it passes when each error is at most twice that of PyTorch's
math attention in the same precision (STYLE.md's rule), with a floor for exact baselines.
`measure(shape, device, repeats)` times forward, forward+backward and forward+JVP for every
variant that supports the mode (an unsupported one gives a row with its error), in TFLOP/s
counted as 4 B H Nq Nk D per forward (x 3.5 with the backward, x 3 with the JVP), and reports
peak memory on CUDA. Shapes: (B, H, Nq, Nk, D).

Registry interface: `checks` (key "attention_checks") and `timings` (key "attention_timings":
`measure` per shape, then `jvp_over_forward`); on the CPU both use the small shapes, and the
timings run in float32 (bf16 on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trustfast._bench.judge import judge
from trustfast._bench.registry import Section, shape_dtype_checks
from trustfast._bench.timing import median_time, time_and_peak, unsupported
from trustfast.ops.attention import attention, attention_reference

# Stable Diffusion (batch 2 x 8 heads; self N = 4096 / 1024 / 256, cross 77 tokens) and DiT.
SD_SHAPES = [(2, 8, n, n, d) for n in (4096, 1024, 256) for d in (40, 64, 80, 160)] + [
    (2, 8, 4096, 77, d) for d in (40, 80, 160)]
DIT_SHAPES = [(2, 16, n, n, d) for n in (1024, 4096) for d in (64, 128)]
CHECK_SHAPES = [(2, 8, 1024, 1024, 40), (2, 8, 1024, 77, 80), (1, 4, 4096, 4096, 160),
                (2, 16, 1024, 1024, 128)]
SMALL_CHECK_SHAPES = [(1, 2, 33, 33, 40), (1, 2, 17, 77, 80)]
SMALL_TIMING_SHAPES = [(1, 2, 64, 64, 40)]
JVP_SHAPE, SMALL_JVP_SHAPE = (2, 8, 4096, 4096, 64), (1, 2, 64, 64, 40)
CHECK_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MODES = ("forward", "forward+backward", "forward+jvp")
FLOP_FACTOR = {"forward": 1.0, "forward+backward": 3.5, "forward+jvp": 3.0}
OURS = "trustfast"


def shape_name(shape) -> str:
    b, h, nq, nk, d = shape
    return f"B{b} H{h} Nq{nq} Nk{nk} D{d}"


def _inputs(shape, dtype, device, seed=0):
    b, h, nq, nk, d = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=gen, device=device, dtype=dtype)
    k = torch.randn(b, h, nk, d, generator=gen, device=device, dtype=dtype)
    v = torch.randn(b, h, nk, d, generator=gen, device=device, dtype=dtype)
    return q, k, v


def check(shape, dtype: torch.dtype, device: torch.device, backend: str = "triton") -> dict:
    """Forward, dq/dk/dv and the JVP of `attention(backend=...)` vs float64, against math
    attention's error in `dtype`."""
    q, k, v = _inputs(shape, dtype, device)
    tq, tk, tv = _inputs(shape, dtype, device, seed=1)
    do = _inputs(shape, dtype, device, seed=2)[0]
    q64, k64, v64, do64 = (t.double() for t in (q, k, v, do))
    t64 = tuple(t.double() for t in (tq, tk, tv))

    def derivatives(fn, a, b, c, d, tangents):
        a, b, c = (t.detach().requires_grad_() for t in (a, b, c))
        out = fn(a, b, c)
        grads = torch.autograd.grad(out, (a, b, c), d)
        _, tan = torch.func.jvp(fn, (a.detach(), b.detach(), c.detach()), tangents)
        return {"out": out.detach(), "dq": grads[0], "dk": grads[1], "dv": grads[2], "jvp": tan}

    ref = derivatives(attention_reference, q64, k64, v64, do64, t64)
    ours = derivatives(lambda a, b, c: attention(a, b, c, backend=backend), q, k, v, do,
                       (tq, tk, tv))
    math_attn = derivatives(attention_reference, q, k, v, do, (tq, tk, tv))
    floor = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    return judge(ref, ours, math_attn, floor, shape=shape_name(shape),
                 dtype=str(dtype).removeprefix("torch."))


def _sdpa(backend) -> Callable:
    """SDPA pinned to one backend, or PyTorch's own choice when backend is None."""
    from torch.nn.attention import sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    if backend is None:
        return scaled_dot_product_attention

    def run(q, k, v):
        with sdpa_kernel(backend):
            return scaled_dot_product_attention(q, k, v)
    return run


def _xformers() -> Callable | None:
    try:
        import xformers.ops as xops
    except Exception:  # not installed (it pins torch: a GPU-machine benchmark peer only)
        return None

    def run(q, k, v):  # xformers takes (B, N, H, D)
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2),
                                              v.transpose(1, 2))
        return out.transpose(1, 2)
    return run


def variants(device: torch.device, backend: str | None = None) -> dict[str, Callable]:
    from torch.nn.attention import SDPBackend

    out = {OURS: lambda q, k, v: attention(q, k, v, backend=backend)}
    backends = [("SDPA math", SDPBackend.MATH)]
    if device.type == "cuda":
        backends = [("SDPA flash", SDPBackend.FLASH_ATTENTION),
                    ("SDPA efficient", SDPBackend.EFFICIENT_ATTENTION),
                    ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)] + backends
        xf = _xformers()
        if xf is not None:
            out["xformers"] = xf
    else:
        out["SDPA default"] = _sdpa(None)
    for name, sdpa_backend in backends:
        out[name] = _sdpa(sdpa_backend)
    return out


def _work(mode: str, fn: Callable, q, k, v) -> Callable[[], object]:
    if mode == "forward":
        return lambda: fn(q, k, v)
    if mode == "forward+backward":
        qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
        do = torch.randn_like(q)
        return lambda: torch.autograd.grad(fn(qq, kk, vv), (qq, kk, vv), do)
    return lambda: torch.func.jvp(fn, (q, k, v), (q, k, v))


def measure(shape, device: torch.device, repeats: int, dtype: torch.dtype = torch.bfloat16,
            modes=MODES, matmul_tflops: float | None = None,
            backend: str | None = None) -> list[dict]:
    """One row per (variant, mode): ms, TFLOP/s, % of the matmul rate, peak MB (CUDA)."""
    q, k, v = _inputs(shape, dtype, device)
    b, h, nq, nk, d = shape
    rows = []
    for mode in modes:
        flops = 4 * b * h * nq * nk * d * FLOP_FACTOR[mode]
        times, mode_rows = {}, []
        for name, fn in variants(device, backend).items():
            row = {"shape": shape_name(shape), "mode": mode, "variant": name,
                   "dtype": str(dtype).removeprefix("torch.")}
            try:  # SDPA's fused kernels raise for forward AD: a row saying so
                seconds, peak = time_and_peak(_work(mode, fn, q, k, v), device, repeats)
            except (RuntimeError, NotImplementedError) as exc:
                row["unsupported"] = unsupported(exc)
                mode_rows.append(row)
                continue
            if peak is not None:
                row["peak_MB"] = peak
            times[name] = seconds
            row.update(ms=seconds * 1e3, **{"TFLOP/s": flops / seconds / 1e12})
            if matmul_tflops:
                row["% of matmul"] = 100 * flops / seconds / 1e12 / matmul_tflops
            mode_rows.append(row)
        ours = times.get(OURS)
        best_peer = min((t for n, t in times.items() if n != OURS), default=None)
        for row in mode_rows:
            if ours and row["variant"] in times:
                row["trustfast speed-up"] = times[row["variant"]] / ours
            if row["variant"] == OURS and best_peer:
                row["vs best peer"] = best_peer / ours
        rows += mode_rows
    return rows


def jvp_over_forward(shape, device: torch.device, repeats: int,
                     dtype: torch.dtype = torch.bfloat16, backend: str | None = None) -> dict:
    """trustfast's JVP time as a multiple of its forward time (goal: <= 2.5x)."""
    q, k, v = _inputs(shape, dtype, device)
    ours = variants(device, backend)[OURS]
    fwd = median_time(_work("forward", ours, q, k, v), device, repeats)
    jvp = median_time(_work("forward+jvp", ours, q, k, v), device, repeats)
    return {"shape": shape_name(shape), "dtype": str(dtype).removeprefix("torch."),
            "forward_ms": fwd * 1e3, "jvp_ms": jvp * 1e3, "jvp / forward": jvp / fwd,
            "meets_goal": bool(jvp / fwd <= 2.5)}


def checks(device: torch.device, *, small: bool, backend: str = "triton") -> list[Section]:
    """`check` per shape and dtype (the small shapes on the CPU: the Triton interpreter)."""
    device = torch.device(device)
    shapes = SMALL_CHECK_SHAPES if small or device.type == "cpu" else CHECK_SHAPES
    return shape_dtype_checks("attention", check, shapes, CHECK_DTYPES, device, backend, shape_name)


def timings(device: torch.device, repeats: int, *, small: bool, backend: str | None = None,
            ceilings: dict | None = None) -> list[Section]:
    """`measure` per shape (Stable Diffusion and DiT shapes on CUDA, bf16), then the JVP's cost
    over the forward; "% of matmul" when `ceilings` has "matmul TFLOP/s"."""
    device = torch.device(device)
    cpu = device.type == "cpu"
    shapes = SMALL_TIMING_SHAPES if small or cpu else SD_SHAPES + DIT_SHAPES
    dtype = torch.float32 if cpu else torch.bfloat16
    matmul = (ceilings or {}).get("matmul TFLOP/s")
    sections = [Section("attention_timings", f"attention timing {shape_name(shape)}",
                        lambda s=shape: measure(s, device, min(repeats, 5), dtype,
                                                matmul_tflops=matmul, backend=backend),
                        {"bench": "attention"}) for shape in shapes]
    jvp_shape = SMALL_JVP_SHAPE if small or cpu else JVP_SHAPE
    sections.append(Section("attention_timings", "attention JVP / forward",
                            lambda: jvp_over_forward(jvp_shape, device, min(repeats, 5), dtype,
                                                     backend=backend),
                            {"bench": "attention jvp"}))
    return sections
