"""Triton kernels for the fused masked SGD / AdamW update (one pass over memory).

The specification is the torch reference in `trustfast/ops/masked_update.py`; inputs arrive here
validated (same dtype, contiguous, one device). Arithmetic is float32 whatever the storage dtype:
every load is upcast at once (bf16 arithmetic is also broken under the Triton interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from trustfast.kernels._multi_tensor import block_tables, pointer_table

# BLOCK=2048 with 4 warps: 16 fp32 elements per thread, four 16-byte vector accesses per array.
# Not yet tuned on a GPU: `benchmarks/gpu_suite.py` sweeps 1024/2048/4096 to settle it.
BLOCK = 2048
NUM_WARPS = 4
# Under the interpreter every program costs ~2 ms of Python, so use fewer, larger programs there.
INTERPRETER_BLOCK = 8192

_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
DTYPES = tuple(_TL_DTYPE)


@triton.jit
def _sign(x):
    return (x > 0).to(tl.float32) - (x < 0).to(tl.float32)


@triton.jit
def _soft_threshold(x, lam):
    # Proximal operator of lam * |x|: sign(x) * max(|x| - lam, 0).
    shrunk = tl.abs(x) - lam
    return tl.where(shrunk > 0, tl.where(x < 0, -shrunk, shrunk), 0.0)


@triton.jit
def _finite(x):
    # x - x is 0 for finite x and NaN for NaN/Inf, and an ordered == is False for NaN.
    return (x - x) == 0.0


@triton.jit
def _count_bad(ok, valid):
    return tl.sum(tl.where(valid, tl.where(ok, 0, 1), 0), axis=0)


@triton.jit
def _masked_sgd_kernel(
    ptrs,  # int64 [n_tensors, 4]: param, grad, momentum buffer, mask
    numels,
    block_tensor,
    block_start,
    lr,
    momentum,
    one_minus_dampening,
    weight_decay,
    l1,
    lam,
    bad_count,  # int32 [n_programs]: CHECK_ONLY writes each program's non-finite count here
    DTYPE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    PROXIMAL: tl.constexpr,
    BLOCK: tl.constexpr,
    CHECK_ONLY: tl.constexpr = False,
    CHECK_GRADS: tl.constexpr = False,
):
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(block_tensor + pid)
    offs = tl.load(block_start + pid) + tl.arange(0, BLOCK)
    valid = offs < tl.load(numels + t)
    row = ptrs + t * 4
    p_ptr = tl.load(row).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))

    p = tl.load(p_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    d = g + weight_decay * p
    if not PROXIMAL:
        d += l1 * _sign(p)
    u = d
    if HAS_MOMENTUM:
        b_ptr = tl.load(row + 2).to(tl.pointer_type(DTYPE))
        b = momentum * tl.load(b_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        b += one_minus_dampening * d
        if NESTEROV:
            u = d + momentum * b
        else:
            u = b
    x = p - lr * u
    if PROXIMAL:
        x = _soft_threshold(x, lam)
    if HAS_MASK:
        m_ptr = tl.load(row + 3).to(tl.pointer_type(tl.int8))
        keep = tl.load(m_ptr + offs, mask=valid, other=0) != 0
        x = tl.where(keep, x, 0.0)
        if HAS_MOMENTUM:
            b = tl.where(keep, b, 0.0)
    if CHECK_ONLY:
        # what the store below would write, rounded to the storage dtype (fp16 overflows)
        ok = _finite(x.to(DTYPE).to(tl.float32))
        if HAS_MOMENTUM:
            ok = ok & _finite(b.to(DTYPE).to(tl.float32))
        if CHECK_GRADS:
            ok = ok & _finite(g)
        tl.store(bad_count + pid, _count_bad(ok, valid))
    else:
        tl.store(p_ptr + offs, x.to(DTYPE), mask=valid)
        if HAS_MOMENTUM:
            tl.store(b_ptr + offs, b.to(DTYPE), mask=valid)


@triton.jit
def _masked_adamw_kernel(
    ptrs,  # int64 [n_tensors, 5]: param, grad, exp_avg, exp_avg_sq, mask
    numels,
    block_tensor,
    block_start,
    decay,
    w1,
    beta2,
    one_minus_beta2,
    eps,
    l1,
    step_size,
    bc2_sqrt,
    lam,
    bad_count,  # int32 [n_programs]: CHECK_ONLY writes each program's non-finite count here
    DTYPE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PROXIMAL: tl.constexpr,
    LERP_FROM_START: tl.constexpr,
    BLOCK: tl.constexpr,
    CHECK_ONLY: tl.constexpr = False,
    CHECK_GRADS: tl.constexpr = False,
):
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(block_tensor + pid)
    offs = tl.load(block_start + pid) + tl.arange(0, BLOCK)
    valid = offs < tl.load(numels + t)
    row = ptrs + t * 5
    p_ptr = tl.load(row).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))
    m_ptr = tl.load(row + 2).to(tl.pointer_type(DTYPE))
    v_ptr = tl.load(row + 3).to(tl.pointer_type(DTYPE))

    p = tl.load(p_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    d = g
    if not PROXIMAL:
        d += l1 * _sign(p)
    p = p * decay
    m = tl.load(m_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    # torch.lerp's two formulas (weight < 0.5 or not), as torch.optim.AdamW uses.
    if LERP_FROM_START:
        m = m + w1 * (d - m)
    else:
        m = d - (d - m) * (1.0 - w1)
    v = tl.load(v_ptr + offs, mask=valid, other=0.0).to(tl.float32) * beta2
    v += one_minus_beta2 * d * d
    x = p - step_size * m / (tl.sqrt(v) / bc2_sqrt + eps)
    if PROXIMAL:
        x = _soft_threshold(x, lam)
    if HAS_MASK:
        k_ptr = tl.load(row + 4).to(tl.pointer_type(tl.int8))
        keep = tl.load(k_ptr + offs, mask=valid, other=0) != 0
        x = tl.where(keep, x, 0.0)
        m = tl.where(keep, m, 0.0)
        v = tl.where(keep, v, 0.0)
    if CHECK_ONLY:
        ok = _finite(x.to(DTYPE).to(tl.float32)) & _finite(m.to(DTYPE).to(tl.float32))
        ok = ok & _finite(v.to(DTYPE).to(tl.float32))
        if CHECK_GRADS:
            ok = ok & _finite(g)
        tl.store(bad_count + pid, _count_bad(ok, valid))
    else:
        tl.store(p_ptr + offs, x.to(DTYPE), mask=valid)
        tl.store(m_ptr + offs, m.to(DTYPE), mask=valid)
        tl.store(v_ptr + offs, v.to(DTYPE), mask=valid)


def _block_size(device: torch.device, block: int | None) -> int:
    if block is not None:
        return block
    return INTERPRETER_BLOCK if device.type == "cpu" else BLOCK


def _launch_sgd(params, grads, momentum_bufs, masks, lr, momentum, dampening, nesterov,
                weight_decay, l1, l1_proximal, block, check_only, check_grads):
    device = params[0].device
    block = _block_size(device, block)
    has_momentum = momentum != 0.0
    has_mask = len(masks) > 0
    arrays = [
        [
            params[i],
            grads[i],
            momentum_bufs[i] if has_momentum else None,
            masks[i] if has_mask else None,
        ]
        for i in range(len(params))
    ]
    ptrs = pointer_table(arrays, device)
    numels, block_tensor, block_start = block_tables(
        tuple(p.numel() for p in params), block, device
    )
    grid = (block_tensor.numel(),)
    # the update never touches bad_count: any int tensor fills the slot
    bad = torch.empty(grid, dtype=torch.int32, device=device) if check_only else numels
    _masked_sgd_kernel[grid](
        ptrs,
        numels,
        block_tensor,
        block_start,
        lr,
        momentum,
        1.0 - dampening,
        weight_decay,
        l1,
        lr * l1,
        bad,
        DTYPE=_TL_DTYPE[params[0].dtype],
        HAS_MASK=has_mask,
        HAS_MOMENTUM=has_momentum,
        NESTEROV=bool(nesterov and has_momentum),
        PROXIMAL=l1_proximal,
        BLOCK=block,
        CHECK_ONLY=check_only,
        CHECK_GRADS=check_grads,
        num_warps=NUM_WARPS,
    )
    return bad


def masked_sgd_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_bufs: list[torch.Tensor],
    masks: list[torch.Tensor],
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    l1: float,
    l1_proximal: bool,
    block: int | None = None,
) -> None:
    """Launch the fused masked SGD kernel over validated, same-dtype, contiguous tensors.

    `momentum_bufs` is empty when momentum == 0; `masks` is empty for an unmasked call.
    """
    if params:
        _launch_sgd(params, grads, momentum_bufs, masks, lr, momentum, dampening, nesterov,
                    weight_decay, l1, l1_proximal, block, False, False)


def masked_sgd_finite(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_bufs: list[torch.Tensor],
    masks: list[torch.Tensor],
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    l1: float,
    l1_proximal: bool,
    check_grads: bool,
    block: int | None = None,
) -> bool:
    """Dry run of `masked_sgd_step` (same kernel, CHECK_ONLY): True when every value it would
    store is finite (and every gradient, with check_grads). Writes nothing; one host sync."""
    if not params:
        return True
    bad = _launch_sgd(params, grads, momentum_bufs, masks, lr, momentum, dampening, nesterov,
                      weight_decay, l1, l1_proximal, block, True, check_grads)
    return not bool(bad.any())


def _launch_adamw(params, grads, exp_avgs, exp_avg_sqs, masks, lr, beta1, beta2, eps,
                  weight_decay, l1, l1_proximal, bias_correction1, bias_correction2_sqrt, block,
                  check_only, check_grads):
    device = params[0].device
    block = _block_size(device, block)
    has_mask = len(masks) > 0
    arrays = [
        [params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], masks[i] if has_mask else None]
        for i in range(len(params))
    ]
    ptrs = pointer_table(arrays, device)
    numels, block_tensor, block_start = block_tables(
        tuple(p.numel() for p in params), block, device
    )
    grid = (block_tensor.numel(),)
    bad = torch.empty(grid, dtype=torch.int32, device=device) if check_only else numels
    w1 = 1.0 - beta1
    _masked_adamw_kernel[grid](
        ptrs,
        numels,
        block_tensor,
        block_start,
        1.0 - lr * weight_decay,
        w1,
        beta2,
        1.0 - beta2,
        eps,
        l1,
        lr / bias_correction1,
        bias_correction2_sqrt,
        lr * l1,
        bad,
        DTYPE=_TL_DTYPE[params[0].dtype],
        HAS_MASK=has_mask,
        PROXIMAL=l1_proximal,
        LERP_FROM_START=w1 < 0.5,
        BLOCK=block,
        CHECK_ONLY=check_only,
        CHECK_GRADS=check_grads,
        num_warps=NUM_WARPS,
    )
    return bad


def masked_adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    masks: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    l1: float,
    l1_proximal: bool,
    bias_correction1: float,
    bias_correction2_sqrt: float,
    block: int | None = None,
) -> None:
    """Launch the fused masked AdamW kernel over validated, same-dtype, contiguous tensors."""
    if params:
        _launch_adamw(params, grads, exp_avgs, exp_avg_sqs, masks, lr, beta1, beta2, eps,
                      weight_decay, l1, l1_proximal, bias_correction1, bias_correction2_sqrt,
                      block, False, False)


def masked_adamw_finite(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    masks: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    l1: float,
    l1_proximal: bool,
    bias_correction1: float,
    bias_correction2_sqrt: float,
    check_grads: bool,
    block: int | None = None,
) -> bool:
    """Dry run of `masked_adamw_step`: True when every value it would store is finite."""
    if not params:
        return True
    bad = _launch_adamw(params, grads, exp_avgs, exp_avg_sqs, masks, lr, beta1, beta2, eps,
                        weight_decay, l1, l1_proximal, bias_correction1, bias_correction2_sqrt,
                        block, True, check_grads)
    return not bool(bad.any())
