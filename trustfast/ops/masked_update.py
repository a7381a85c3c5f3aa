"""Fused masked optimizer update: mask, weight decay, l1, momentum / Adam moments in one pass.

Sparsity-aware unlearning ("prune first, then unlearn", l1-sparse unlearning; Jia et al.,
NeurIPS 2023) and saliency-masked unlearning (SalUn, WAGLE) update only the weights a {0,1} mask
keeps, often with an l1 penalty. torch.optim plus mask ops walks memory many times per step; the
C++ and Triton backends read and write every array once.

Per element, with keep = mask (all true without a mask), in float32 (float64 for float64 tensors):

SGD (``masked_sgd_step``; equals ``torch.optim.SGD`` when keep is all true and l1 = 0)::

    d = g + weight_decay * p (+ l1 * sign(p)            if l1_mode == "subgradient")
    b = momentum * b + (1 - dampening) * d               (only if momentum != 0)
    u = d + momentum * b if nesterov else b              (u = d if momentum == 0)
    x = p - lr * u
    x = sign(x) * max(|x| - lr * l1, 0)                  (if l1_mode == "proximal")
    p = x if keep else 0;  b = b if keep else 0

AdamW (``masked_adamw_step``; equals ``torch.optim.AdamW`` with amsgrad=False likewise)::

    d = g (+ l1 * sign(p)                                if l1_mode == "subgradient")
    p = p * (1 - lr * weight_decay)
    m = lerp(m, d, 1 - beta1);  v = beta2 * v + (1 - beta2) * d * d
    x = p - lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)
    x = sign(x) * max(|x| - lr * l1, 0)                  (if l1_mode == "proximal")
    p, m, v = (x, m, v) if keep else (0, 0, 0)

Pruned weights and their optimizer state are therefore exactly zero after every step, whatever
the gradient holds there (NaN included). The first momentum step of torch.optim.SGD (buffer = d,
no dampening) is this update with a zero buffer and dampening = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from trustfast._ext import cpp_extension
from trustfast.ops._dispatch import check_contiguous, dtypes, register_op, resolve_backend

L1_MODES = ("subgradient", "proximal")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Storage dtypes each kernel backend implements (the reference takes all of FLOAT_DTYPES).
KERNEL_DTYPES = {
    "cpp": FLOAT_DTYPES,
    "triton": (torch.float16, torch.bfloat16, torch.float32),
}

_KERNEL_CONSTRAINTS = {b: (dtypes(*d),) for b, d in KERNEL_DTYPES.items()}
register_op("masked_sgd_step", ("torch", "triton", "cpp"), constraints=_KERNEL_CONSTRAINTS)
register_op("masked_adamw_step", ("torch", "triton", "cpp"), constraints=_KERNEL_CONSTRAINTS)


# ----------------------------------------------------------------------------- validation


def _check_scalar(name: str, value: float, low: float | None = 0.0, high: float | None = None,
                  high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        bound = f"< {high}" if high_open else f"<= {high}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_tensor_list(name: str, tensors, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each entry must match its parameter's shape, dtype and device."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"{name} must be a list of tensors, got {type(tensors).__name__}")
    if len(tensors) != len(params):
        raise ValueError(f"{name} has {len(tensors)} tensors, params has {len(params)}")
    for i, (t, p) in enumerate(zip(tensors, params)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{name}[{i}] must be a dense tensor, got layout {t.layout}")
        if t.shape != p.shape:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(t.shape)}, params[{i}] has {tuple(p.shape)}"
            )
        if t.dtype != p.dtype:
            raise TypeError(f"{name}[{i}] has dtype {t.dtype}, params[{i}] has {p.dtype}")
        if t.device != p.device:
            raise ValueError(f"{name}[{i}] is on {t.device}, params[{i}] is on {p.device}")
    return list(tensors)


def _check_params(params) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor) or not isinstance(params, Sequence):
        raise TypeError(f"params must be a list of tensors, got {type(params).__name__}")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a tensor, got {type(p).__name__}")
        if p.dtype not in FLOAT_DTYPES:
            raise TypeError(f"params[{i}] must be a floating tensor {FLOAT_DTYPES}, got {p.dtype}")
        if p.layout != torch.strided:
            raise TypeError(f"params[{i}] must be a dense tensor, got layout {p.layout}")
        if p.device != params[0].device:
            raise ValueError(
                f"params[{i}] is on {p.device}, params[0] on {params[0].device}: "
                "one call updates tensors on one device"
            )
    return list(params)


def _check_masks(masks, params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    if masks is None:
        return [None] * len(params)
    if isinstance(masks, torch.Tensor) or not isinstance(masks, Sequence):
        raise TypeError(f"masks must be None or a list of bool tensors, got {type(masks).__name__}")
    if len(masks) != len(params):
        raise ValueError(f"masks has {len(masks)} entries, params has {len(params)}")
    for i, (m, p) in enumerate(zip(masks, params)):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"masks[{i}] must be a bool tensor or None, got {type(m).__name__}")
        if m.dtype != torch.bool:
            raise TypeError(
                f"masks[{i}] must have dtype torch.bool, got {m.dtype} (convert with `mask != 0`)"
            )
        if m.shape != p.shape:
            raise ValueError(
                f"masks[{i}] has shape {tuple(m.shape)}, params[{i}] has {tuple(p.shape)}"
            )
        if m.device != p.device:
            raise ValueError(f"masks[{i}] is on {m.device}, params[{i}] is on {p.device}")
    return list(masks)


def _check_l1_mode(l1_mode: str) -> bool:
    if l1_mode not in L1_MODES:
        raise ValueError(f"l1_mode must be one of {L1_MODES}, got {l1_mode!r}")
    return l1_mode == "proximal"


def _resolve(op: str, params: list[torch.Tensor], backend: str | None,
             named: dict[str, Sequence]) -> str:
    """The backend for this call; a kernel backend also needs contiguous tensors."""
    chosen = resolve_backend(op, backend, device=params[0].device, dtype=params[0].dtype)
    if chosen != "torch":
        check_contiguous(chosen, named)
    return chosen


def _kernel_module(backend: str):
    if backend == "cpp":
        return cpp_extension()
    from trustfast.kernels import masked_update  # triton is imported only when used

    return masked_update


def _split_by_mask(masks: list[torch.Tensor | None]) -> tuple[list[int], list[int]]:
    with_mask = [i for i, m in enumerate(masks) if m is not None]
    without = [i for i, m in enumerate(masks) if m is None]
    return with_mask, without


# ----------------------------------------------------------------------------- references


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _soft_threshold(x: torch.Tensor, lam: float) -> torch.Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - lam, min=0)


@torch.no_grad()
def masked_sgd_step_reference(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momentum_bufs: Sequence[torch.Tensor] | None,
    masks: Sequence[torch.Tensor | None] | None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    l1: float = 0.0,
    l1_mode: str = "subgradient",
) -> None:
    """Plain-PyTorch specification of `masked_sgd_step` (module docstring), one tensor at a time."""
    proximal = l1_mode == "proximal"
    for i, (p, g) in enumerate(zip(params, grads)):
        acc = _acc_dtype(p.dtype)
        pf = p.to(acc)
        d = g.to(acc) + weight_decay * pf
        if not proximal:
            d = d + l1 * torch.sign(pf)
        u = d
        if momentum != 0:
            b = momentum * momentum_bufs[i].to(acc) + (1 - dampening) * d
            u = d + momentum * b if nesterov else b
        x = pf - lr * u
        if proximal:
            x = _soft_threshold(x, lr * l1)
        keep = None if masks is None else masks[i]
        if keep is not None:
            x = torch.where(keep, x, 0.0)
        p.copy_(x)
        if momentum != 0:
            momentum_bufs[i].copy_(b if keep is None else torch.where(keep, b, 0.0))


@torch.no_grad()
def masked_adamw_step_reference(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor | None] | None,
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    l1: float = 0.0,
    l1_mode: str = "subgradient",
) -> None:
    """Plain-PyTorch specification of `masked_adamw_step` (module docstring)."""
    proximal = l1_mode == "proximal"
    step_size = lr / (1 - beta1**step)
    bc2_sqrt = (1 - beta2**step) ** 0.5
    for i, (p, g) in enumerate(zip(params, grads)):
        acc = _acc_dtype(p.dtype)
        p0 = p.to(acc)
        d = g.to(acc)
        if not proximal:
            d = d + l1 * torch.sign(p0)
        pf = p0 * (1 - lr * weight_decay)
        m = torch.lerp(exp_avgs[i].to(acc), d, 1 - beta1)
        v = exp_avg_sqs[i].to(acc) * beta2 + (1 - beta2) * d * d
        x = pf - step_size * m / (v.sqrt() / bc2_sqrt + eps)
        if proximal:
            x = _soft_threshold(x, lr * l1)
        keep = None if masks is None else masks[i]
        if keep is not None:
            x, m, v = (torch.where(keep, t, 0.0) for t in (x, m, v))
        p.copy_(x)
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)


# ----------------------------------------------------------------------------- public ops


def masked_sgd_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momentum_bufs: Sequence[torch.Tensor] | None,
    masks: Sequence[torch.Tensor | None] | None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    l1: float = 0.0,
    l1_mode: str = "subgradient",
    backend: str | None = None,
) -> str:
    """In-place masked SGD step over lists of tensors, in one pass over memory.

    p <- keep * (p - lr * u), u = momentum-filtered g + weight_decay * p + l1 * sign(p)
    (full spec in this module's docstring; l1-sparse unlearning, Jia et al. NeurIPS 2023).

    Args:
        params: parameters to update (float16/bfloat16/float32/float64, one device).
        grads: gradients, same shapes and dtypes as `params`.
        momentum_bufs: momentum buffers (zero-initialized), required when momentum != 0, else None.
        masks: None, or one bool tensor (True = trainable) or None per parameter.
        lr, momentum, dampening, nesterov, weight_decay: as in `torch.optim.SGD`.
        l1: l1 penalty strength; l1_mode: "subgradient" (add l1 * sign(p) to the gradient,
            as in l1-sparse unlearning) or "proximal" (soft-threshold by lr * l1 after the step).
        backend: "torch", "triton", "cpp" or None (automatic; TRUSTFAST_BACKEND overrides).

    Returns:
        The backend that ran.
    """
    params = _check_params(params)
    grads = _check_tensor_list("grads", grads, params)
    lr = _check_scalar("lr", lr)
    momentum = _check_scalar("momentum", momentum)
    dampening = _check_scalar("dampening", dampening, 0.0, 1.0)
    weight_decay = _check_scalar("weight_decay", weight_decay)
    l1 = _check_scalar("l1", l1)
    proximal = _check_l1_mode(l1_mode)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
    if momentum != 0:
        if momentum_bufs is None:
            raise ValueError("momentum_bufs is required when momentum != 0")
        momentum_bufs = _check_tensor_list("momentum_bufs", momentum_bufs, params)
    masks = _check_masks(masks, params)
    if not params:
        return "torch"

    hyper = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=bool(nesterov),
                 weight_decay=weight_decay, l1=l1)
    chosen = _resolve(
        "masked_sgd_step", params, backend,
        {"params": params, "grads": grads, "momentum_bufs": momentum_bufs or [], "masks": masks},
    )
    if chosen == "torch":
        masked_sgd_step_reference(params, grads, momentum_bufs, masks, l1_mode=l1_mode, **hyper)
        return chosen
    kernel = _kernel_module(chosen)
    for idx, masked in zip(_split_by_mask(masks), (True, False)):
        if not idx:
            continue
        kernel.masked_sgd_step(
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [momentum_bufs[i] for i in idx] if momentum != 0 else [],
            [masks[i] for i in idx] if masked else [],
            lr, momentum, dampening, bool(nesterov), weight_decay, l1, proximal,
        )
    return chosen


def masked_adamw_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor | None] | None,
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    l1: float = 0.0,
    l1_mode: str = "subgradient",
    backend: str | None = None,
) -> str:
    """In-place masked AdamW step (decoupled weight decay, bias correction, amsgrad off).

    p <- keep * (p (1 - lr wd) - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps))
    (Loshchilov & Hutter, ICLR 2019; full spec in this module's docstring).

    Args:
        params, grads: as in `masked_sgd_step`.
        exp_avgs, exp_avg_sqs: first and second moment buffers (zero-initialized).
        masks: None, or one bool tensor (True = trainable) or None per parameter.
        step: 1-based index of this update, for bias correction (shared by all tensors).
        lr, beta1, beta2, eps, weight_decay: as in `torch.optim.AdamW`.
        l1, l1_mode: as in `masked_sgd_step`.
        backend: "torch", "triton", "cpp" or None (automatic; TRUSTFAST_BACKEND overrides).

    Returns:
        The backend that ran.
    """
    params = _check_params(params)
    grads = _check_tensor_list("grads", grads, params)
    exp_avgs = _check_tensor_list("exp_avgs", exp_avgs, params)
    exp_avg_sqs = _check_tensor_list("exp_avg_sqs", exp_avg_sqs, params)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1 (1-based update count), got {step!r}")
    lr = _check_scalar("lr", lr)
    beta1 = _check_scalar("beta1", beta1, 0.0, 1.0, high_open=True)
    beta2 = _check_scalar("beta2", beta2, 0.0, 1.0, high_open=True)
    eps = _check_scalar("eps", eps)
    weight_decay = _check_scalar("weight_decay", weight_decay)
    l1 = _check_scalar("l1", l1)
    proximal = _check_l1_mode(l1_mode)
    masks = _check_masks(masks, params)
    if not params:
        return "torch"

    chosen = _resolve(
        "masked_adamw_step", params, backend,
        {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs,
         "masks": masks},
    )
    if chosen == "torch":
        masked_adamw_step_reference(
            params, grads, exp_avgs, exp_avg_sqs, masks, step=step, lr=lr, beta1=beta1,
            beta2=beta2, eps=eps, weight_decay=weight_decay, l1=l1, l1_mode=l1_mode,
        )
        return chosen
    kernel = _kernel_module(chosen)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    for idx, masked in zip(_split_by_mask(masks), (True, False)):
        if not idx:
            continue
        kernel.masked_adamw_step(
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [exp_avgs[i] for i in idx],
            [exp_avg_sqs[i] for i in idx],
            [masks[i] for i in idx] if masked else [],
            lr, beta1, beta2, eps, weight_decay, l1, proximal,
            bias_correction1, bias_correction2_sqrt,
        )
    return chosen
