"""The shared runner: median wall time with device synchronization, peak memory, the floors
(copy bandwidth, matmul rate) and where the numbers come from (`machine`).

Every bench in `trustfast._bench` times through these, so a latency always sits next to the same
floor measured the same way (STYLE.md: a latency without a roofline is half a number).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block at `n` intra-op threads, then restore torch's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def loadavg() -> str:
    """The 1/5/15-minute load averages, recorded with CPU timings (others' load skews them)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int = 20,
                warmup: int = 3, calls_per_sample: int | None = None) -> float:
    """Median seconds per call of `fn()` over `repeats` synchronized samples, after `warmup`.

    On CUDA a sample is 10 back-to-back calls (one sync), so a 50 us kernel is not measured as
    the sync and Python around it; the host work of each call still counts, as in training.
    """
    device = torch.device(device)
    calls = calls_per_sample or (10 if device.type == "cuda" else 1)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def time_and_peak(work: Callable[[], object], device: torch.device,
                  repeats: int) -> tuple[float, float | None]:
    """(median seconds of `work()`, its peak extra CUDA memory in MB, or None off CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return median_time(work, device, repeats), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    seconds = median_time(work, device, repeats)
    return seconds, (torch.cuda.max_memory_allocated(device) - base) / 2**20


def unsupported(exc: BaseException) -> str:
    """A variant that cannot run (no forward AD, out of memory...), for its benchmark row."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def copy_bandwidth(nbytes: int, device: torch.device, repeats: int = 20) -> float:
    """Bytes/s of `dst.copy_(src)` moving `nbytes` in total (nbytes / 2 read, nbytes / 2 written).

    This is the floor a memory-bound kernel is compared with: the same bytes, moved by the
    simplest possible kernel on the same device.
    """
    half = max(nbytes // 2, 1)
    src = torch.empty(half, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), torch.device(device), repeats)
    return 2 * half / seconds


def copy_ceiling(nbytes: int, device: torch.device, repeats: int) -> dict:
    """Device copy bandwidth: the floor every memory-bound kernel is reported against."""
    bw = copy_bandwidth(nbytes, device, repeats)
    return {"item": "copy bandwidth (dst.copy_(src))", "dtype": "uint8", "bytes": nbytes,
            "ms": nbytes / bw * 1e3, "GB/s": bw / 1e9}


def matmul_ceiling(n: int, device: torch.device, repeats: int,
                   dtype: torch.dtype = torch.bfloat16) -> dict:
    """Dense matmul rate (n^3, preallocated output): the roofline for FLOP-bound kernels."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    seconds = median_time(lambda: torch.matmul(a, b, out=c), device, repeats)
    return {"item": f"matmul {n}^3", "dtype": str(dtype).removeprefix("torch."), "n": n,
            "ms": seconds * 1e3, "TFLOP/s": 2 * n**3 / seconds / 1e12}


def tf32_settings(device: torch.device) -> dict:
    """torch's TF32 switches on CUDA (recorded with timings run at torch's defaults)."""
    if torch.device(device).type != "cuda":
        return {}
    return {"cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}


def machine() -> dict:
    """Date, torch version, CPU, threads and (if present) the GPU: recorded with every result."""
    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
