"""pytest-benchmark: trustfast's chunked CPU attention vs PyTorch SDPA on the CPU, time and peak
tensor memory, at N = 4096 (self-attention, B=1, H=8, D=64 and D=40, float32).

Peers in the same run: SDPA's default CPU backend (a fused flash kernel: O(N) memory, but no
forward-mode AD and no double backward) and SDPA's math backend (what a JVP or an HVP through
attention falls back to: O(N^2) memory). Variants: forward, forward+backward, and forward+JVP
(ours only: SDPA's CPU kernel raises NotImplementedError for forward AD; the math backend's JVP is
timed as the peer). Peak memory is counted per tensor storage through a TorchDispatchMode
(`trustfast.utils.peak_tensor_bytes`), so buffers a fused kernel allocates internally are not
seen: SDPA
flash's figure is a lower bound.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention as sdpa

from trustfast._bench.timing import intra_op_threads, loadavg
from trustfast.ops.attention import attention
from trustfast.utils import peak_tensor_bytes

N, B, H = 4096, 1, 8
THREADS = 2  # the whole CI machine: attention is matmul-bound, both variants use every core
OURS = "trustfast attention (chunked)"
FLASH = "SDPA default (CPU flash)"
MATH = "SDPA math"


def _sdpa(backend):
    def run(q, k, v):
        with sdpa_kernel(backend):
            return sdpa(q, k, v)
    return run


VARIANTS = {OURS: attention, FLASH: sdpa, MATH: _sdpa(SDPBackend.MATH)}


@functools.lru_cache(maxsize=4)
def _inputs(d: int):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, d, generator=gen) for _ in range(3))
    ref = sdpa(q, k, v)
    assert torch.allclose(attention(q, k, v), ref, atol=1e-5), "trustfast attention != SDPA"
    return q, k, v


def _work(mode: str, fn, q, k, v):
    if mode == "forward":
        return lambda: fn(q, k, v)
    if mode == "forward+backward":
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        return lambda: fn(qq, kk, vv).sum().backward()
    return lambda: torch.func.jvp(lambda a, b, c: fn(a, b, c), (q, k, v), (q, k, v))


@pytest.mark.parametrize("d", [64, 40])
@pytest.mark.parametrize("mode", ["forward", "forward+backward", "forward+jvp"])
@pytest.mark.parametrize("variant", [OURS, FLASH, MATH])
def test_attention_cpu(benchmark, variant, mode, d):
    if variant == FLASH and mode == "forward+jvp":
        pytest.skip("SDPA's CPU flash kernel has no forward-mode AD (NotImplementedError)")
    q, k, v = _inputs(d)
    work = _work(mode, VARIANTS[variant], q, k, v)
    with intra_op_threads(THREADS):
        work()  # warm-up
        peak = peak_tensor_bytes(work)
        benchmark.group = f"attention cpu {mode} N={N} D={d}"
        flops = 4 * B * H * N * N * d * {"forward": 1, "forward+backward": 3.5,
                                         "forward+jvp": 3}[mode]
        benchmark.extra_info.update(
            bench="attention cpu", variant=variant, mode=mode, n=N, d=d, batch=B, heads=H,
            peak_tensor_mb=peak / 2**20, flops=flops, threads=THREADS, loadavg=loadavg())
        benchmark.pedantic(work, rounds=3, warmup_rounds=0)
