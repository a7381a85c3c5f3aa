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

Non-finite values never reach the weights. Every backend first runs a dry run that computes
what the step would store (p, and b or m, v; rounded to the storage dtype, after the mask) and
writes nothing; only when all of it is finite is the step applied. A NaN/Inf gradient at a kept
position and an update that overflows (lr = 10 with a gradient of 1e38 gives -inf) are caught
alike. Then ``nonfinite="raise"`` (default) raises `FloatingPointError` and ``"skip"`` warns
(`TrustfastWarning`) and returns None; in both cases nothing was written, state included. The
dry run reads p, g and the state once more (SGD with momentum, fp32: 13 more bytes per element
on top of the update's 21); the optimizers use it in place of their former gradient-only check.
Parameters must be float16/bfloat16/float32/float64 (complex and integer tensors are a
TypeError before any kernel runs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from trustfast._ext import cpp_extension
from trustfast.checks import check_choice, check_tensor
from trustfast.ops._dispatch import check_contiguous, dtypes, register_op, resolve_backend

L1_MODES = ("subgradient", "proximal")
NONFINITE_POLICIES = ("raise", "skip")
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
        check_tensor(f"params[{i}]", p, dtypes=FLOAT_DTYPES,
                     hint="a floating tensor: complex and integer parameters are not supported")
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


def _finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _refuse(op: str) -> FloatingPointError:
    return FloatingPointError(
        f"{op}: the step would write NaN/Inf into params or their optimizer state (a non-finite "
        "value in grads, or an update that overflows, e.g. lr * grad beyond the dtype's range); "
        "nothing was written"
    )


def _decide(finite: bool, op: str, nonfinite: str) -> bool:
    """True to apply the step; otherwise the non-finite policy: raise, or warn and skip."""
    if finite:
        return True
    if nonfinite == "raise":
        raise _refuse(op)
    from trustfast._meta import TrustfastWarning

    warnings.warn(f"{op}: skipped a step that would write NaN/Inf (non-finite gradient or "
                  "overflowing update); nothing was written", TrustfastWarning, stacklevel=4)
    return False


def _sgd_values(params, grads, momentum_bufs, masks, *, lr, momentum=0.0, dampening=0.0,
                nesterov=False, weight_decay=0.0, l1=0.0, l1_mode="subgradient"):
    """What the SGD step stores, per tensor: (new p, new b or None), in the storage dtype."""
    proximal = l1_mode == "proximal"
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        acc = _acc_dtype(p.dtype)
        pf = p.to(acc)
        d = g.to(acc) + weight_decay * pf
        if not proximal:
            d = d + l1 * torch.sign(pf)
        u, b = d, None
        if momentum != 0:
            b = momentum * momentum_bufs[i].to(acc) + (1 - dampening) * d
            u = d + momentum * b if nesterov else b
        x = pf - lr * u
        if proximal:
            x = _soft_threshold(x, lr * l1)
        keep = None if masks is None else masks[i]
        if keep is not None:
            x = torch.where(keep, x, 0.0)
            b = None if b is None else torch.where(keep, b, 0.0)
        out.append((x.to(p.dtype), None if b is None else b.to(p.dtype)))
    return out


def _adamw_values(params, grads, exp_avgs, exp_avg_sqs, masks, *, step, lr, beta1=0.9,
                  beta2=0.999, eps=1e-8, weight_decay=1e-2, l1=0.0, l1_mode="subgradient"):
    """What the AdamW step stores, per tensor: (new p, new m, new v), in the storage dtype."""
    proximal = l1_mode == "proximal"
    step_size = lr / (1 - beta1**step)
    bc2_sqrt = (1 - beta2**step) ** 0.5
    out = []
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
        out.append((x.to(p.dtype), m.to(p.dtype), v.to(p.dtype)))
    return out


def _values_finite(values, grads=None) -> bool:
    stored = [t for per_tensor in values for t in per_tensor if t is not None]
    return _finite(stored) and (grads is None or _finite(grads))


def _store(values, *targets) -> None:
    for i, per_tensor in enumerate(values):
        for target, value in zip(targets, per_tensor):
            if target is not None and value is not None:
                target[i].copy_(value)


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
    nonfinite: str = "raise",
) -> None:
    """Plain-PyTorch specification of `masked_sgd_step` (module docstring), one tensor at a time.

    Computes every new value first and writes nothing when any of them (rounded to the storage
    dtype, after the mask) is NaN/Inf: then raises `FloatingPointError` (nonfinite="raise") or
    warns (nonfinite="skip"), as the op. Tensor arguments are checked as in `masked_sgd_step`
    (hyperparameters are taken as given).
    """
    check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
    params = _check_params(params)
    grads = _check_tensor_list("grads", grads, params)
    if momentum != 0:
        momentum_bufs = _check_tensor_list("momentum_bufs", momentum_bufs, params)
    masks = _check_masks(masks, params)
    values = _sgd_values(params, grads, momentum_bufs, masks, lr=lr, momentum=momentum,
                         dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                         l1=l1, l1_mode=l1_mode)
    if _decide(_values_finite(values), "masked_sgd_step_reference", nonfinite):
        _store(values, params, momentum_bufs if momentum != 0 else None)


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
    nonfinite: str = "raise",
) -> None:
    """Plain-PyTorch specification of `masked_adamw_step` (module docstring); writes nothing
    when a value to store is NaN/Inf, then raises or warns per `nonfinite`, as the op."""
    check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
    params = _check_params(params)
    grads = _check_tensor_list("grads", grads, params)
    exp_avgs = _check_tensor_list("exp_avgs", exp_avgs, params)
    exp_avg_sqs = _check_tensor_list("exp_avg_sqs", exp_avg_sqs, params)
    masks = _check_masks(masks, params)
    values = _adamw_values(params, grads, exp_avgs, exp_avg_sqs, masks, step=step, lr=lr,
                           beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, l1=l1,
                           l1_mode=l1_mode)
    if _decide(_values_finite(values), "masked_adamw_step_reference", nonfinite):
        _store(values, params, exp_avgs, exp_avg_sqs)


# ----------------------------------------------------------------------------- prepared steps


class PreparedStep:
    """A validated masked update bound to its backend: `finite()` is the dry run (writes
    nothing), `apply()` writes the step. The optimizers prepare every bucket of a param group,
    dry-run them all and apply them only if all pass, so a group is updated whole or not at all.

    check_grads: the dry run also refuses a non-finite gradient at pruned positions (the
    optimizers' policy: NaN anywhere in a gradient is a symptom); the ops check only what is
    stored, so a NaN gradient under a False mask entry still gives an exact zero there.
    """

    def __init__(self, op: str, backend: str, check, apply):
        self.op, self.backend = op, backend
        self._check, self._apply = check, apply
        self._checked: bool | None = None

    def finite(self) -> bool:
        if self._checked is None:
            self._checked = bool(self._check())
        return self._checked

    def apply(self) -> None:
        self._apply()


def _refuse_meta(params: list[torch.Tensor]) -> None:
    if params[0].device.type == "meta":
        raise ValueError("params[0] is a meta tensor: an in-place update needs tensors with "
                         "data (cpu or cuda)")


def _each(launch, calls) -> None:
    for call in calls:
        launch(*call)


def _empty_step(op: str) -> PreparedStep:
    return PreparedStep(op, "torch", lambda: True, lambda: None)


@torch.no_grad()
def prepare_masked_sgd_step(
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
    check_grads: bool = False,
) -> PreparedStep:
    """Validate a `masked_sgd_step` call (same arguments) and bind it to its backend."""
    params = _check_params(params)
    grads = _check_tensor_list("grads", grads, params)
    lr = _check_scalar("lr", lr)
    momentum = _check_scalar("momentum", momentum)
    dampening = _check_scalar("dampening", dampening, 0.0, 1.0)
    weight_decay = _check_scalar("weight_decay", weight_decay)
    l1 = _check_scalar("l1", l1)
    proximal = _check_l1_mode(l1_mode)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r} ({type(nesterov).__name__})")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
    if momentum != 0:
        if momentum_bufs is None:
            raise ValueError("momentum_bufs is required when momentum != 0")
        momentum_bufs = _check_tensor_list("momentum_bufs", momentum_bufs, params)
    masks = _check_masks(masks, params)
    if not params:
        return _empty_step("masked_sgd_step")

    hyper = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                 weight_decay=weight_decay, l1=l1)
    chosen = _resolve(
        "masked_sgd_step", params, backend,
        {"params": params, "grads": grads, "momentum_bufs": momentum_bufs or [], "masks": masks},
    )
    if chosen == "torch":
        _refuse_meta(params)
        cache: dict = {}

        def values():
            if "v" not in cache:
                cache["v"] = _sgd_values(params, grads, momentum_bufs, masks, l1_mode=l1_mode,
                                         **hyper)
            return cache["v"]

        return PreparedStep(
            "masked_sgd_step", chosen,
            lambda: _values_finite(values(), grads if check_grads else None),
            lambda: _store(values(), params, momentum_bufs if momentum != 0 else None),
        )
    kernel = _kernel_module(chosen)
    calls = []
    for idx, masked in zip(_split_by_mask(masks), (True, False)):
        if idx:
            calls.append((
                [params[i] for i in idx],
                [grads[i] for i in idx],
                [momentum_bufs[i] for i in idx] if momentum != 0 else [],
                [masks[i] for i in idx] if masked else [],
                lr, momentum, dampening, nesterov, weight_decay, l1, proximal,
            ))
    return PreparedStep(
        "masked_sgd_step", chosen,
        lambda: all(kernel.masked_sgd_finite(*c, check_grads) for c in calls),
        lambda: _each(kernel.masked_sgd_step, calls),
    )


@torch.no_grad()
def prepare_masked_adamw_step(
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
    check_grads: bool = False,
) -> PreparedStep:
    """Validate a `masked_adamw_step` call (same arguments) and bind it to its backend."""
    params = _check_params(params)
    grads = _check_tensor_list("grads", grads, params)
    exp_avgs = _check_tensor_list("exp_avgs", exp_avgs, params)
    exp_avg_sqs = _check_tensor_list("exp_avg_sqs", exp_avg_sqs, params)
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be an int >= 1 (1-based update count), got {step!r} "
                        f"({type(step).__name__})")
    if step < 1:
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
        return _empty_step("masked_adamw_step")

    hyper = dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                 l1=l1, l1_mode=l1_mode)
    chosen = _resolve(
        "masked_adamw_step", params, backend,
        {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs,
         "masks": masks},
    )
    if chosen == "torch":
        _refuse_meta(params)
        cache: dict = {}

        def values():
            if "v" not in cache:
                cache["v"] = _adamw_values(params, grads, exp_avgs, exp_avg_sqs, masks, **hyper)
            return cache["v"]

        return PreparedStep(
            "masked_adamw_step", chosen,
            lambda: _values_finite(values(), grads if check_grads else None),
            lambda: _store(values(), params, exp_avgs, exp_avg_sqs),
        )
    kernel = _kernel_module(chosen)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    calls = []
    for idx, masked in zip(_split_by_mask(masks), (True, False)):
        if idx:
            calls.append((
                [params[i] for i in idx],
                [grads[i] for i in idx],
                [exp_avgs[i] for i in idx],
                [exp_avg_sqs[i] for i in idx],
                [masks[i] for i in idx] if masked else [],
                lr, beta1, beta2, eps, weight_decay, l1, proximal,
                bias_correction1, bias_correction2_sqrt,
            ))
    return PreparedStep(
        "masked_adamw_step", chosen,
        lambda: all(kernel.masked_adamw_finite(*c, check_grads) for c in calls),
        lambda: _each(kernel.masked_adamw_step, calls),
    )


def _run(prepared: PreparedStep, nonfinite: str) -> str | None:
    if _decide(prepared.finite(), prepared.op, nonfinite):
        prepared.apply()
        return prepared.backend
    return None


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
    nonfinite: str = "raise",
    backend: str | None = None,
) -> str | None:
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
        nonfinite: a step that would store NaN/Inf (non-finite gradient at a kept position, or
            an overflowing update) writes nothing and then "raise" (default) raises
            FloatingPointError, "skip" warns and returns None.
        backend: "torch", "triton", "cpp" or None (automatic; TRUSTFAST_BACKEND overrides).

    Returns:
        The backend that ran (None when the step was skipped).
    """
    check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
    prepared = prepare_masked_sgd_step(
        params, grads, momentum_bufs, masks, lr=lr, momentum=momentum, dampening=dampening,
        nesterov=nesterov, weight_decay=weight_decay, l1=l1, l1_mode=l1_mode, backend=backend,
    )
    return _run(prepared, nonfinite)


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
    nonfinite: str = "raise",
    backend: str | None = None,
) -> str | None:
    """In-place masked AdamW step (decoupled weight decay, bias correction, amsgrad off).

    p <- keep * (p (1 - lr wd) - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps))
    (Loshchilov & Hutter, ICLR 2019; full spec in this module's docstring).

    Args:
        params, grads: as in `masked_sgd_step`.
        exp_avgs, exp_avg_sqs: first and second moment buffers (zero-initialized).
        masks: None, or one bool tensor (True = trainable) or None per parameter.
        step: 1-based index of this update, for bias correction (shared by all tensors).
        lr, beta1, beta2, eps, weight_decay: as in `torch.optim.AdamW`.
        l1, l1_mode, nonfinite: as in `masked_sgd_step`.
        backend: "torch", "triton", "cpp" or None (automatic; TRUSTFAST_BACKEND overrides).

    Returns:
        The backend that ran (None when the step was skipped).
    """
    check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
    prepared = prepare_masked_adamw_step(
        params, grads, exp_avgs, exp_avg_sqs, masks, step=step, lr=lr, beta1=beta1,
        beta2=beta2, eps=eps, weight_decay=weight_decay, l1=l1, l1_mode=l1_mode,
        backend=backend,
    )
    return _run(prepared, nonfinite)
