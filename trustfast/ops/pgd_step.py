"""Fused projected-gradient step for adversarial examples (PGD, Madry et al., ICLR 2018).

One pass per element instead of torch's 4-5 kernels (sign, axpy, subtract, clamp, add, clamp).
With s = alpha * sign(g) (L-inf) or s = alpha * g / (||g||_2 + 1e-10) (L2), per sample:

    L-inf:  x_new = clamp(x + clamp(x_adv + s - x, -eps, eps), 0, 1)
    L2:     d = x_adv + s - x;  d *= min(eps / ||d||_2, 1);  x_new = clamp(x + d, 0, 1)

as torchattacks 3.5.1's PGD / PGDL2 compute them (same operation order, so the same rounding
for the same `grad`; torchattacks' grad is that of the batch-mean loss, so an L2 attack that
feeds the per-sample sum, as `trustfast.attacks.PGD` does, sees the 1e-10 guard weigh N times
less). `grad` is the gradient of the objective to *maximize* (negate the loss for a targeted
attack). eps and alpha are scalars or one value per sample. Optional best-iterate tracking: given
the per-sample `loss` at `x_adv`, every sample whose loss beats `best_loss` copies `x_adv` into
`best_adv` and updates `best_loss`, in the same call.
"""

from __future__ import annotations

import math

import torch

from trustfast._ext import cpp_extension
from trustfast.checks import IMAGE_HINT, check_choice, check_tensor
from trustfast.ops._dispatch import check_contiguous, dtypes, register_op, resolve_backend

NORMS = ("linf", "l2")
EPS_FOR_DIVISION = 1e-10  # torchattacks' PGDL2 guard against a zero gradient
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNEL_DTYPES = {
    "cpp": FLOAT_DTYPES,
    "triton": (torch.float16, torch.bfloat16, torch.float32),
}

register_op("pgd_step", ("torch", "triton", "cpp"),
            constraints={b: (dtypes(*d),) for b, d in KERNEL_DTYPES.items()})


def _per_sample(name: str, value, n: int, like: torch.Tensor,
                check: bool = True) -> torch.Tensor:
    """A (n,) float tensor on like's device (float64 for float64 inputs, else float32)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number or a real tensor, got "
                            f"{value.dtype}")
        if value.dim() == 0:
            value = value.reshape(1).expand(n)
        if value.shape != (n,):
            raise ValueError(f"{name} must be a scalar or have shape ({n},), got "
                             f"{tuple(value.shape)}")
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device}, x_adv on {like.device}")
        out = value.to(dtype).contiguous()
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
        if check and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
        return torch.full((n,), float(value), dtype=dtype, device=like.device)
    # one host sync for a tensor budget (none with check=False, for validated inner loops)
    if check and out.device.type != "meta" and not bool((torch.isfinite(out) & (out >= 0)).all()):
        raise ValueError(f"{name} must be finite and >= 0")
    return out


def _check_values(x_adv, x_clean, grad, loss) -> None:
    """The value checks `validate=False` skips: one read of each tensor (a host sync each on
    CUDA). Images outside [0, 1] would be clamped into the box silently; a NaN/Inf gradient
    gives NaN under L2 (inf / inf) and a meaningless sign step under L-inf."""
    for name, t in (("x_adv", x_adv), ("x_clean", x_clean), ("grad", grad), ("loss", loss)):
        if t is not None and t.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor: pgd_step needs tensors with data "
                             "(cpu or cuda)")
    check_tensor("x_clean", x_clean, low=0.0, high=1.0, hint=IMAGE_HINT)
    check_tensor("x_adv", x_adv, low=0.0, high=1.0, hint=IMAGE_HINT)
    check_tensor("grad", grad, finite=True)
    if loss is not None and loss.is_floating_point():
        # NaN never beats best_loss (NaN > x is False) but +inf would win every later step
        check_tensor("loss", loss, finite=True)


def _check(x_adv, x_clean, grad, loss, best_loss, best_adv):
    for name, t in (("x_adv", x_adv), ("x_clean", x_clean), ("grad", grad)):
        check_tensor(name, t)
    if x_adv.dim() < 1 or x_adv.shape[0] == 0:
        raise ValueError(f"x_adv must have a non-empty batch dim, got shape {tuple(x_adv.shape)}")
    check_tensor("x_adv", x_adv, dtypes=FLOAT_DTYPES, hint=IMAGE_HINT)
    for name, t in (("x_clean", x_clean), ("grad", grad)):
        if t.shape != x_adv.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, x_adv has {tuple(x_adv.shape)}")
        if t.dtype != x_adv.dtype or t.device != x_adv.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device}, x_adv is {x_adv.dtype} on "
                             f"{x_adv.device}")
    tracking = [t is not None for t in (loss, best_loss, best_adv)]
    if any(tracking) and not all(tracking):
        raise ValueError("best-iterate tracking needs all of loss, best_loss and best_adv")
    if all(tracking):
        n = x_adv.shape[0]
        for name, t in (("loss", loss), ("best_loss", best_loss)):
            check_tensor(name, t, dtypes=FLOAT_DTYPES)
            if t.shape != (n,):
                raise ValueError(f"{name} must be a tensor of shape ({n},), got "
                                 f"{getattr(t, 'shape', type(t).__name__)}")
            if t.device != x_adv.device:
                raise ValueError(f"{name} is on {t.device}, x_adv on {x_adv.device}")
        check_tensor("best_adv", best_adv)
        if best_adv.device != x_adv.device:
            raise ValueError(f"best_adv is on {best_adv.device}, x_adv on {x_adv.device}")
        if best_adv.shape != x_adv.shape or best_adv.dtype != x_adv.dtype:
            raise ValueError(f"best_adv must match x_adv ({tuple(x_adv.shape)}, {x_adv.dtype})")
        if best_loss.dtype != loss.dtype:
            raise ValueError(f"best_loss has dtype {best_loss.dtype}, loss {loss.dtype}")
    return all(tracking)


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


@torch.no_grad()
def pgd_step_reference(x_adv: torch.Tensor, x_clean: torch.Tensor, grad: torch.Tensor,
                       eps: torch.Tensor, alpha: torch.Tensor, norm: str = "linf",
                       improved: torch.Tensor | None = None,
                       best_adv: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch specification (module docstring); eps / alpha are (N,) tensors.

    Half-precision inputs are computed in float32 and rounded once at the end, as the kernels
    do (in float16, torchattacks' 1e-10 division guard rounds to 0 and a zero gradient -> NaN).
    """
    if improved is not None:
        best_adv[improved] = x_adv[improved]
    if x_adv.dtype in (torch.float16, torch.bfloat16):
        out = pgd_step_reference(x_adv.float(), x_clean.float(), grad.float(), eps, alpha, norm)
        return out.to(x_adv.dtype)
    eps_b, alpha_b = _view(eps, x_adv), _view(alpha, x_adv)
    if norm == "linf":
        stepped = x_adv + alpha_b * grad.sign()
        delta = torch.clamp(stepped - x_clean, min=-eps_b, max=eps_b)
    else:
        n = x_adv.shape[0]
        g_norm = torch.norm(grad.reshape(n, -1), p=2, dim=1) + EPS_FOR_DIVISION
        stepped = x_adv + alpha_b * (grad / _view(g_norm, x_adv))
        delta = stepped - x_clean
        d_norm = torch.norm(delta.reshape(n, -1), p=2, dim=1)
        factor = torch.where(d_norm > 0, torch.minimum(eps.to(d_norm.dtype) / d_norm,
                                                       torch.ones_like(d_norm)),
                             torch.ones_like(d_norm))
        delta = delta * _view(factor, x_adv)
    return torch.clamp(x_clean + delta, min=0, max=1)


def pgd_step(
    x_adv: torch.Tensor,
    x_clean: torch.Tensor,
    grad: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    norm: str = "linf",
    loss: torch.Tensor | None = None,
    best_loss: torch.Tensor | None = None,
    best_adv: torch.Tensor | None = None,
    backend: str | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """One fused PGD step; returns the new adversarial batch (inputs are not modified, except
    `best_loss` / `best_adv` when tracking).

    Args:
        x_adv: current adversarial batch (N, ...), in [0, 1].
        x_clean: clean batch, same shape, in [0, 1].
        grad: gradient of the objective to maximize at x_adv.
        eps, alpha: budget and step size, scalars or (N,) tensors (>= 0), in the [0, 1] scale.
        norm: "linf" (sign step) or "l2" (normalized-gradient step).
        loss, best_loss, best_adv: optional best-iterate tracking (all three or none); loss is
            the per-sample objective at x_adv.
        backend: "torch", "triton", "cpp" or None (automatic; TRUSTFAST_BACKEND overrides).
        validate: check the values (default True): x_adv and x_clean in [0, 1], grad and
            loss finite (NaN/Inf), eps / alpha finite and >= 0; a ValueError names the
            argument. One read of each tensor (a host sync per check on CUDA). `PGD` validates
            its inputs once and passes False inside its step loop; with False, values outside
            [0, 1] are clamped into the box and a non-finite grad gives NaN (L2) unchecked.
            Types, shapes, dtypes and devices are always checked.
    """
    check_choice("norm", norm, NORMS)
    if not isinstance(validate, bool):
        raise TypeError(f"validate must be a bool, got {validate!r}")
    tracking = _check(x_adv, x_clean, grad, loss, best_loss, best_adv)
    n = x_adv.shape[0]
    eps_t = _per_sample("eps", eps, n, x_adv, validate)
    alpha_t = _per_sample("alpha", alpha, n, x_adv, validate)
    chosen = resolve_backend("pgd_step", backend, device=x_adv.device, dtype=x_adv.dtype)
    if chosen != "torch":
        tensors = {"x_adv": x_adv, "x_clean": x_clean, "grad": grad}
        if tracking:
            tensors["best_adv"] = best_adv
        check_contiguous(chosen, tensors)
    if validate:  # after dispatch, so a forced backend's own refusal comes first
        _check_values(x_adv, x_clean, grad, loss if tracking else None)
    improved = None
    if tracking:
        improved = loss.detach() > best_loss
        best_loss.copy_(torch.where(improved, loss.detach(), best_loss))
    if chosen == "torch":
        return pgd_step_reference(x_adv, x_clean, grad, eps_t, alpha_t, norm, improved, best_adv)
    row = math.prod(x_adv.shape[1:])
    out = torch.empty_like(x_adv)
    flags = improved.to(torch.uint8) if tracking else None
    if chosen == "cpp":
        cpp_extension().pgd_step(out, x_adv, x_clean, grad, eps_t, alpha_t, norm == "l2",
                                 flags, best_adv if tracking else None, EPS_FOR_DIVISION)
    else:
        from trustfast.kernels import pgd_step as kernel

        kernel.pgd_step(out, x_adv, x_clean, grad, eps_t, alpha_t, norm == "l2", flags,
                        best_adv if tracking else None, row, EPS_FOR_DIVISION)
    return out
