"""Triton kernels for the fused PGD step (spec: trustfast/ops/pgd_step.py).

L-inf: a 2-D grid (sample, block of its row), every element read once and written once. L2: one
program per sample making three sweeps over its row (gradient norm, step norm, write); a row of a
224x224x3 image is 600 KB in fp32, so the second and third sweeps hit L2 cache.
Arithmetic is float32 whatever the storage dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# 1024 elements / 4 warps: 8 fp32 per thread, two 16-byte accesses per array. Untuned until a
# GPU run of benchmarks/gpu_suite.py.
BLOCK = 1024
NUM_WARPS = 4
INTERPRETER_BLOCK = 4096

_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _clamp(v, lo, hi):
    return tl.minimum(tl.maximum(v, lo), hi)


@triton.jit
def _copy_if_improved(xa, best_ptr, offs, valid, flag_ptr, n, TRACK: tl.constexpr):
    if TRACK:
        # the flag broadcast to the block's shape: the interpreter rejects a scalar mask operand
        improved = (offs * 0 + tl.load(flag_ptr + n).to(tl.int64)) != 0
        tl.store(best_ptr + offs, xa, mask=valid & improved)


@triton.jit
def _pgd_linf_kernel(out_ptr, xa_ptr, x_ptr, g_ptr, eps_ptr, alpha_ptr, flag_ptr, best_ptr, row,
                     TRACK: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = col < row
    offs = n * row + col
    xa = tl.load(xa_ptr + offs, mask=valid, other=0.0)
    _copy_if_improved(xa, best_ptr, offs, valid, flag_ptr, n, TRACK)
    x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + n)
    sign = (g > 0).to(tl.float32) - (g < 0).to(tl.float32)
    stepped = xa.to(tl.float32) + tl.load(alpha_ptr + n) * sign
    delta = _clamp(stepped - x, -eps, eps)
    out = _clamp(x + delta, 0.0, 1.0)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _pgd_l2_kernel(out_ptr, xa_ptr, x_ptr, g_ptr, eps_ptr, alpha_ptr, flag_ptr, best_ptr, row,
                   eps_div, TRACK: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    base = n * row
    g_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, row, BLOCK):
        col = start + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + base + col, mask=col < row, other=0.0).to(tl.float32)
        g_sq += g * g
    g_norm = tl.sqrt(tl.sum(g_sq, axis=0)) + eps_div
    alpha = tl.load(alpha_ptr + n)
    d_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, row, BLOCK):
        col = start + tl.arange(0, BLOCK)
        valid = col < row
        xa = tl.load(xa_ptr + base + col, mask=valid, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + base + col, mask=valid, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + base + col, mask=valid, other=0.0).to(tl.float32)
        d = tl.where(valid, xa + alpha * (g / g_norm) - x, 0.0)
        d_sq += d * d
    d_norm = tl.sqrt(tl.sum(d_sq, axis=0))
    eps = tl.load(eps_ptr + n)
    factor = tl.where(d_norm > 0, tl.minimum(eps / d_norm, 1.0), 1.0)
    for start in range(0, row, BLOCK):
        col = start + tl.arange(0, BLOCK)
        valid = col < row
        xa_raw = tl.load(xa_ptr + base + col, mask=valid, other=0.0)
        _copy_if_improved(xa_raw, best_ptr, base + col, valid, flag_ptr, n, TRACK)
        xa = xa_raw.to(tl.float32)
        x = tl.load(x_ptr + base + col, mask=valid, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + base + col, mask=valid, other=0.0).to(tl.float32)
        out = _clamp(x + (xa + alpha * (g / g_norm) - x) * factor, 0.0, 1.0)
        tl.store(out_ptr + base + col, out.to(out_ptr.dtype.element_ty), mask=valid)


def pgd_step(out, x_adv, x_clean, grad, eps, alpha, l2: bool, improved, best_adv, row: int,
             eps_for_division: float, block: int | None = None) -> None:
    """Launch the L-inf or L2 kernel over validated contiguous tensors (writes `out`)."""
    if x_adv.dtype not in _TL_DTYPE:
        raise TypeError(f"pgd_step triton kernel: unsupported dtype {x_adv.dtype}")
    n = x_adv.shape[0]
    if block is None:
        block = INTERPRETER_BLOCK if x_adv.device.type == "cpu" else BLOCK
    track = improved is not None
    flags = improved if track else eps  # placeholders are never read when TRACK is False
    best = best_adv if track else out
    if l2:
        _pgd_l2_kernel[(n,)](out, x_adv, x_clean, grad, eps, alpha, flags, best, row,
                             eps_for_division, TRACK=track, BLOCK=block, num_warps=NUM_WARPS)
    else:
        grid = (n, triton.cdiv(row, block))
        _pgd_linf_kernel[grid](out, x_adv, x_clean, grad, eps, alpha, flags, best, row,
                               TRACK=track, BLOCK=block, num_warps=NUM_WARPS)
