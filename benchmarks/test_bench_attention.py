"""pytest-benchmark: trustfast attention vs PyTorch SDPA on the CPU, time and peak tensor memory,
at N = 4096 (self-attention, B=1, H=8, D=64 and D=40, float32); then one training step of the
tiny diffusers UNet under each attention processor.

Variants of the op: trustfast's default on the CPU (PyTorch's fused CPU flash kernel for the
forward and the first-order backward, its own blocks for the JVP), trustfast's torch blocks forced
(`backend="torch"`: what runs where a graph of the backward is needed), SDPA's default CPU backend
(the same fused flash kernel: O(N) memory, but no forward-mode AD and no double backward) and
SDPA's math backend (what a JVP or an HVP through attention falls back to: O(N^2) memory). Modes:
forward, forward+backward, and forward+JVP (SDPA's CPU kernel raises NotImplementedError for
forward AD; the math backend's JVP is timed as the peer). Peak memory is counted per tensor
storage through a TorchDispatchMode (`trustfast.utils.peak_tensor_bytes`), so buffers a fused
kernel allocates internally are not seen: the flash kernels' figures are lower bounds.

Groups "unet training step cpu threads=<n>": forward + MSE loss + backward of
`trustfast.diffusion.tiny.tiny_unet` (batch 2, 16 x 16 latents, 77 prompt tokens) with diffusers'
`AttnProcessor2_0` and with `FastAttnProcessor`, at 1 and 2 intra-op threads (goal:
FastAttnProcessor at >= 0.95x AttnProcessor2_0's speed; `trustfast bench --ops attention` times
the two interleaved, which the shared machine's load skews less).
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
OURS = "trustfast attention"
BLOCKS = "trustfast attention (torch blocks)"
FLASH = "SDPA default (CPU flash)"
MATH = "SDPA math"
UNET_THREADS = (1, 2)
UNET_PROCESSORS = ("AttnProcessor2_0", "FastAttnProcessor")


def _sdpa(backend):
    def run(q, k, v):
        with sdpa_kernel(backend):
            return sdpa(q, k, v)
    return run


VARIANTS = {OURS: attention, BLOCKS: functools.partial(attention, backend="torch"),
            FLASH: sdpa, MATH: _sdpa(SDPBackend.MATH)}


@functools.lru_cache(maxsize=4)
def _inputs(d: int):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, d, generator=gen) for _ in range(3))
    ref = sdpa(q, k, v)
    for name in (OURS, BLOCKS):
        assert torch.allclose(VARIANTS[name](q, k, v), ref, atol=1e-5), f"{name} != SDPA"
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
@pytest.mark.parametrize("variant", [OURS, BLOCKS, FLASH, MATH])
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


@functools.lru_cache(maxsize=1)
def _unet():
    pytest.importorskip("diffusers")
    from trustfast.diffusion.tiny import tiny_unet

    gen = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([10, 500]),
              torch.randn(2, 77, 32, generator=gen), torch.randn(2, 4, 16, 16, generator=gen))
    return tiny_unet().train(), inputs


@pytest.mark.parametrize("threads", UNET_THREADS)
@pytest.mark.parametrize("processor", UNET_PROCESSORS)
def test_tiny_unet_training_step(benchmark, processor, threads):
    unet, (x, t, prompt, target) = _unet()
    from diffusers.models.attention_processor import AttnProcessor2_0

    from trustfast.diffusion.attention import enable_fast_attention

    if processor == "FastAttnProcessor":
        assert enable_fast_attention(unet).replaced == 8
    else:
        unet.set_attn_processor(AttnProcessor2_0())

    def step():
        unet.zero_grad(set_to_none=True)
        out = unet(x, t, encoder_hidden_states=prompt).sample
        torch.nn.functional.mse_loss(out, target).backward()

    with intra_op_threads(threads):
        step()  # warm-up
        benchmark.group = f"unet training step cpu threads={threads}"
        benchmark.extra_info.update(bench="unet training step cpu", variant=processor,
                                    threads=threads, batch=2, latent=16, tokens=77,
                                    loadavg=loadavg())
        benchmark.pedantic(step, rounds=15, warmup_rounds=2)
