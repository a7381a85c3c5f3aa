"""Attention: trustfast's kernel vs SDPA's backends (flash, efficient, cuDNN, math) and xformers.

`check(shape, dtype, device)` runs the Triton kernel's forward, backward and JVP against a
float64 explicit-softmax reference; it passes when each error is at most twice that of PyTorch's
math attention in the same precision (STYLE.md's rule), with a floor for exact baselines.
`measure(shape, device, repeats)` times forward, forward+backward and forward+JVP for every
variant that supports the mode (an unsupported one gives a row with its error), in TFLOP/s
counted as 4 B H Nq Nk D per forward (x 3.5 with the backward, x 3 with the JVP), and reports
peak memory on CUDA. Shapes: (B, H, Nq, Nk, D). On the CPU the variants are trustfast's default
(the fused CPU flash kernel, "sdpa", with its own blocks for the JVP), trustfast's torch blocks
forced, SDPA's default and SDPA's math backend.

`unet_training_step(repeats, threads)` times one training step (forward + backward of an MSE loss)
of `trustfast.diffusion.tiny.tiny_unet` under diffusers' `AttnProcessor2_0` and under
`FastAttnProcessor`, interleaved, at each intra-op thread count (goal on the CPU: FastAttnProcessor
at >= 0.95x AttnProcessor2_0's speed).

Registry interface: `checks` (key "attention_checks") and `timings` (key "attention_timings":
`measure` per shape, then `jvp_over_forward`, then on the CPU the tiny UNet training step); on the
CPU both use the small shapes, and the timings run in float32 (bf16 on CUDA).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable

import torch

from trustfast._bench.judge import judge
from trustfast._bench.registry import Section, shape_dtype_checks
from trustfast._bench.timing import (
    intra_op_threads,
    loadavg,
    median_time,
    time_and_peak,
    unsupported,
)
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
OURS_BLOCKS = "trustfast torch blocks"  # the CPU's differentiable path, forced
UNET_PROCESSORS = ("AttnProcessor2_0", "FastAttnProcessor")
UNET_THREADS = (1, 2)
UNET_GOAL = 0.95  # FastAttnProcessor's training-step speed over AttnProcessor2_0's, on the CPU


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
        if backend is None:
            out[OURS_BLOCKS] = lambda q, k, v: attention(q, k, v, backend="torch")
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


def unet_training_step(repeats: int = 10, threads=UNET_THREADS) -> list[dict]:
    """One row per (processor, thread count): the median and the minimum ms of a tiny-UNet
    training step (forward, MSE loss against a fixed target, backward into every parameter) on
    the CPU, batch 2, 16 x 16 latents, 77 prompt tokens. The two processors alternate within each
    repeat, so a load spike from other work hits both. FastAttnProcessor's row carries "speed vs
    AttnProcessor2_0" (AttnProcessor2_0's median over its own), the same from the minima, and
    whether the minima meet UNET_GOAL (other processes' load only ever adds time, so the minimum
    is the steadier estimate on a shared machine; timeit's rule), and the median process CPU
    time ("cpu ms": at one thread, the work itself, whatever the machine's load)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from trustfast.diffusion.attention import enable_fast_attention
    from trustfast.diffusion.tiny import tiny_unet

    unet = tiny_unet().train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    prompt = torch.randn(2, 77, 32, generator=gen)
    target = torch.randn(2, 4, 16, 16, generator=gen)
    timestep = torch.tensor([10, 500])
    install = {"AttnProcessor2_0": lambda: unet.set_attn_processor(AttnProcessor2_0()),
               "FastAttnProcessor": lambda: enable_fast_attention(unet)}

    def step():
        unet.zero_grad(set_to_none=True)
        out = unet(x, timestep, encoder_hidden_states=prompt).sample
        torch.nn.functional.mse_loss(out, target).backward()

    rows = []
    for n in threads:
        samples = {name: [] for name in UNET_PROCESSORS}
        cpu = {name: [] for name in UNET_PROCESSORS}
        with intra_op_threads(n):
            for name in UNET_PROCESSORS:  # warm-up: first-call allocations, kernel selection
                install[name]()
                step()
            for _ in range(repeats):
                for name in UNET_PROCESSORS:
                    install[name]()
                    start, start_cpu = time.perf_counter(), time.process_time()
                    step()
                    samples[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        ms = {name: 1e3 * statistics.median(t) for name, t in samples.items()}
        low = {name: 1e3 * min(t) for name, t in samples.items()}
        cpu_ms = {name: 1e3 * statistics.median(t) for name, t in cpu.items()}
        for name in UNET_PROCESSORS:
            row = {"case": "tiny UNet training step", "variant": name, "threads": n,
                   "ms": ms[name], "min ms": low[name], "cpu ms": cpu_ms[name],
                   "repeats": repeats, "loadavg": loadavg()}
            if name == "FastAttnProcessor":
                ratio = low["AttnProcessor2_0"] / low[name]
                row.update({"speed vs AttnProcessor2_0": ms["AttnProcessor2_0"] / ms[name],
                            "speed vs AttnProcessor2_0 (min)": ratio,
                            "speed vs AttnProcessor2_0 (cpu)": (cpu_ms["AttnProcessor2_0"]
                                                                / cpu_ms[name]),
                            "meets_goal": bool(ratio >= UNET_GOAL)})
            rows.append(row)
    unet.set_attn_processor(AttnProcessor2_0())
    return rows


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
    if cpu:
        no_diffusers = (None if importlib.util.find_spec("diffusers") is not None
                        else "diffusers is not installed")
        sections.append(Section("attention_timings", "tiny UNet training step",
                                lambda: unet_training_step(max(3, min(repeats, 10))),
                                {"bench": "attention unet training step"}, skip=no_diffusers))
    return sections
