"""Fused masked optimizer update vs its torch peers, on one synthetic model-sized problem.

The problem: `n` parameters split over 16 tensors, a 50 % random mask, SGD with momentum 0.9,
weight decay 5e-4 and l1 5e-4 (subgradient), or AdamW with the same mask and l1. Peers:
  - "torch foreach": the best torch equivalent of the same math, with foreach ops (mask multiply,
    add weight decay, add l1 sign, momentum, update, re-mask), masks stored in the param dtype as
    research code does;
  - "torch.optim + remask": torch.optim.SGD / AdamW (foreach=True; AdamW also fused=True) with the
    mask applied to the gradient before and to the weights after, l1 added to the gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trustfast.ops import masked_adamw_step, masked_sgd_step

N_TENSORS = 16
LR, MOMENTUM, WEIGHT_DECAY, L1 = 1e-3, 0.9, 5e-4, 5e-4


@dataclass
class Problem:
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    state1: list[torch.Tensor]
    state2: list[torch.Tensor]
    masks: list[torch.Tensor]
    float_masks: list[torch.Tensor]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def make_problem(n: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> Problem:
    """`n` parameters over N_TENSORS tensors with random data and a 50 % mask."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sizes = [n // N_TENSORS] * N_TENSORS
    sizes[-1] += n - sum(sizes)

    def randn(size):
        return torch.randn(size, generator=gen, device=device, dtype=dtype)

    params = [randn(s) for s in sizes]
    masks = [torch.rand(s, generator=gen, device=device) < 0.5 for s in sizes]
    for p, m in zip(params, masks):
        p.mul_(m)
    return Problem(
        params=params,
        grads=[randn(s) * 1e-2 for s in sizes],
        state1=[torch.zeros(s, device=device, dtype=dtype) for s in sizes],
        state2=[torch.zeros(s, device=device, dtype=dtype) for s in sizes],
        masks=masks,
        float_masks=[m.to(dtype) for m in masks],
    )


def sgd_bytes(pb: Problem) -> int:
    """Bytes the fused SGD step must move: read p, g, buf, mask (bool); write p, buf."""
    elem = pb.params[0].element_size()
    return pb.numel * (5 * elem + 1)


def adamw_bytes(pb: Problem) -> int:
    """Bytes the fused AdamW step must move: read p, g, m, v, mask; write p, m, v."""
    elem = pb.params[0].element_size()
    return pb.numel * (7 * elem + 1)


def sgd_variants(pb: Problem, backend: str | None) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable doing one masked SGD step (trustfast first)."""

    def fused():
        masked_sgd_step(pb.params, pb.grads, pb.state1, pb.masks, lr=LR, momentum=MOMENTUM,
                        weight_decay=WEIGHT_DECAY, l1=L1, backend=backend)

    def torch_foreach():
        d = torch._foreach_mul(pb.grads, pb.float_masks)
        torch._foreach_add_(d, pb.params, alpha=WEIGHT_DECAY)
        torch._foreach_add_(d, torch._foreach_sign(pb.params), alpha=L1)
        torch._foreach_mul_(pb.state1, MOMENTUM)
        torch._foreach_add_(pb.state1, d)
        torch._foreach_add_(pb.params, pb.state1, alpha=-LR)
        torch._foreach_mul_(pb.params, pb.float_masks)
        torch._foreach_mul_(pb.state1, pb.float_masks)

    opt_params = [p.clone().requires_grad_() for p in pb.params]
    for p, g in zip(opt_params, pb.grads):
        p.grad = g.clone()
    opt = torch.optim.SGD(opt_params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                          foreach=True)
    grads = [p.grad for p in opt_params]

    def optim_remask():
        with torch.no_grad():
            torch._foreach_mul_(grads, pb.float_masks)
            torch._foreach_add_(grads, torch._foreach_sign(opt_params), alpha=L1)
            opt.step()
            torch._foreach_mul_(opt_params, pb.float_masks)

    return {"trustfast fused": fused, "torch foreach": torch_foreach,
            "torch.optim.SGD(foreach) + remask": optim_remask}


def adamw_variants(pb: Problem, backend: str | None) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable doing one masked AdamW step (trustfast first)."""
    step = [0]

    def fused():
        step[0] += 1
        masked_adamw_step(pb.params, pb.grads, pb.state1, pb.state2, pb.masks, step=step[0],
                          lr=LR, weight_decay=WEIGHT_DECAY, l1=L1, backend=backend)

    variants = {"trustfast fused": fused}
    for label, kwargs in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt_params = [p.clone().requires_grad_() for p in pb.params]
        for p, g in zip(opt_params, pb.grads):
            p.grad = g.clone()
        try:
            opt = torch.optim.AdamW(opt_params, lr=LR, weight_decay=WEIGHT_DECAY, **kwargs)
        except (RuntimeError, ValueError):  # fused AdamW missing for this device / dtype
            continue
        grads = [p.grad for p in opt_params]

        def optim_remask(opt=opt, grads=grads, opt_params=opt_params):
            with torch.no_grad():
                torch._foreach_mul_(grads, pb.float_masks)
                torch._foreach_add_(grads, torch._foreach_sign(opt_params), alpha=L1)
                opt.step()
                torch._foreach_mul_(opt_params, pb.float_masks)

        variants[f"torch.optim.AdamW({label}) + remask"] = optim_remask
    return variants
