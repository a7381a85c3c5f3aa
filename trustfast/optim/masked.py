"""`MaskedSGD` and `MaskedAdamW`: torch.optim optimizers over the fused masked update ops.

With no mask and l1 = 0 they follow `torch.optim.SGD` / `torch.optim.AdamW` (amsgrad off) step
for step, and their state uses the same keys ("momentum_buffer"; "step", "exp_avg",
"exp_avg_sq"), plus "mask" for masked parameters. With a mask (True = trainable), pruned weights
and their optimizer state are exactly zero after `set_masks` and after every step.

Non-finite gradients and updates: before each group's update a dry run (in the fused kernel of
the backend that will run the step, see `trustfast.ops.masked_update`) computes what the step
would store. A group with any NaN/Inf gradient (pruned positions included), or whose update
would be non-finite (an overflow: lr = 10 with a gradient of 1e38 gives -inf), is not updated:
weights, momentum buffers, Adam moments and the step count stay as they were. With
``nonfinite="skip"`` (default) its ``group["nonfinite_skips"]`` counter grows and a
`TrustfastWarning` is issued once per optimizer; ``nonfinite="raise"`` raises
`FloatingPointError` instead. Nothing non-finite is ever written into the weights.

Bad input is refused when the optimizer (or a param group) is made: every hyperparameter is
checked by name (TypeError for a non-number such as ``lr="0.1"``, ValueError for a value out of
range), and parameters must be float16/bfloat16/float32/float64 tensors (complex or integer
parameters are a TypeError naming the parameter, before any kernel runs).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from trustfast.checks import check_choice, check_number, check_tensor, shown
from trustfast.ops.masked_update import (
    FLOAT_DTYPES,
    L1_MODES,
    PreparedStep,
    prepare_masked_adamw_step,
    prepare_masked_sgd_step,
)

NONFINITE_POLICIES = ("skip", "raise")
BACKEND_CHOICES = (None, "torch", "triton", "cpp")
_PARAM_HINT = "a floating tensor: complex and integer parameters are not supported"


def _warning_class():
    from trustfast._meta import TrustfastWarning

    return TrustfastWarning


class _MaskedOptimizer(torch.optim.Optimizer):
    """Shared mask handling, non-finite policy and state_dict round trip."""

    def __init__(self, params, defaults: dict[str, Any], masks, module: nn.Module | None):
        self._check_group(defaults, "")
        defaults["nonfinite_skips"] = 0
        super().__init__(params, defaults)
        self._warned_nonfinite = False
        if masks is not None:
            self.set_masks(masks, module=module)

    # ------------------------------------------------------------------ validation

    def _check_group(self, group: dict, where: str) -> None:
        """Every hyperparameter of a param group (or of the defaults), checked by name."""
        for key in ("lr", "weight_decay", "l1"):  # stored as Python numbers, as the ops take
            group[key] = check_number(f"{where}{key}", group[key], low=0.0)
        check_choice(f"{where}l1_mode", group["l1_mode"], L1_MODES)
        check_choice(f"{where}nonfinite", group["nonfinite"], NONFINITE_POLICIES)
        check_choice(f"{where}backend", group["backend"], BACKEND_CHOICES)
        self._check_hyper(group, where)

    def _check_hyper(self, group: dict, where: str) -> None:
        raise NotImplementedError  # each optimizer's own hyperparameters

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As `torch.optim.Optimizer.add_param_group`, refusing bad hyperparameters and
        non-floating parameters (complex, integer) with an error that names them."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        g = len(self.param_groups) - 1
        try:
            self._check_group(group, f"param_groups[{g}] " if g else "")
            for i, p in enumerate(group["params"]):
                name = f"param_groups[{g}]['params'][{i}]" if g else f"params[{i}]"
                check_tensor(name, p, dtypes=FLOAT_DTYPES, hint=_PARAM_HINT)
                if p.layout != torch.strided:
                    raise TypeError(f"{name} must be a dense tensor, got layout {p.layout}")
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    # ------------------------------------------------------------------ masks

    def _all_params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def set_masks(
        self,
        masks: Sequence[torch.Tensor | None] | Mapping[Any, torch.Tensor | None],
        *,
        module: nn.Module | None = None,
        apply: bool = True,
    ) -> None:
        """Set the sparsity masks (True or 1 = trainable, False or 0 = pruned).

        Args:
            masks: a list aligned with the optimizer's parameters (in param-group order, None
                for "no mask"), or a mapping from parameter tensor to mask, or a mapping from
                parameter name to mask together with `module`. Parameters not mentioned in a
                mapping keep their current mask. Masks are bool tensors, or floating tensors
                holding only 0 and 1 (converted to bool); shape and device must match.
            module: resolves names when `masks` is keyed by `module.named_parameters()` names.
            apply: zero the pruned weights and their optimizer state now (default True).
        """
        params = self._all_params()
        pairs = self._pair_masks(masks, params, module)
        index = {id(p): i for i, p in enumerate(params)}
        for p, mask in pairs:
            i = index[id(p)]
            state = self.state[p]
            if mask is None:
                state.pop("mask", None)
                continue
            mask = self._check_mask(f"masks[{i}]", mask, p)
            state["mask"] = mask
            if apply:
                p.masked_fill_(~mask, 0)
                for key, value in state.items():
                    if key != "mask" and torch.is_tensor(value) and value.shape == p.shape:
                        value.masked_fill_(~mask, 0)

    def masks(self) -> list[torch.Tensor | None]:
        """The current masks, aligned with the optimizer's parameters."""
        return [self.state[p].get("mask") if p in self.state else None for p in self._all_params()]

    @staticmethod
    def _pair_masks(masks, params, module):
        if isinstance(masks, Mapping):
            by_id = {id(p): p for p in params}
            if module is not None:
                named = dict(module.named_parameters())
                unknown = sorted(str(k) for k in masks if k not in named)
                if unknown:
                    raise ValueError(f"masks: no parameter named {unknown} in module")
                pairs = [(named[k], m) for k, m in masks.items()]
            else:
                if any(isinstance(k, str) for k in masks):
                    raise ValueError("masks is keyed by names: pass module= to resolve them")
                pairs = list(masks.items())
            for k, (p, _) in zip(masks, pairs):
                if not isinstance(p, torch.Tensor) or id(p) not in by_id:
                    raise ValueError(f"masks: key {k!r} is not a parameter of this optimizer")
            return pairs
        if isinstance(masks, torch.Tensor) or not isinstance(masks, Sequence):
            raise TypeError(f"masks must be a list or a mapping, got {type(masks).__name__}")
        if len(masks) != len(params):
            raise ValueError(
                f"masks has {len(masks)} entries, the optimizer has {len(params)} parameters"
            )
        return list(zip(params, masks))

    @staticmethod
    def _check_mask(name: str, mask: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name} must be a tensor or None, got {type(mask).__name__}")
        if mask.shape != p.shape:
            raise ValueError(f"{name} has shape {tuple(mask.shape)}, parameter {tuple(p.shape)}")
        if mask.device != p.device:
            raise ValueError(f"{name} is on {mask.device}, its parameter on {p.device}")
        if mask.dtype != torch.bool:
            if not (mask.is_floating_point() or mask.dtype in (torch.uint8, torch.int8,
                                                               torch.int32, torch.int64)):
                raise TypeError(f"{name} must be bool or hold 0/1 values, got dtype {mask.dtype}")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"{name} must hold only 0 and 1 values")
            mask = mask != 0
        return mask.contiguous()

    # ------------------------------------------------------------------ step helpers

    def _all_finite(self, group: dict, steps: list[PreparedStep]) -> bool:
        """The dry run of every bucket of the group; the non-finite policy when one fails."""
        if all(s.finite() for s in steps):
            return True
        if group["nonfinite"] == "raise":
            raise FloatingPointError("non-finite gradient or update (NaN or Inf); no parameter "
                                     "was updated")
        group["nonfinite_skips"] += 1
        if not self._warned_nonfinite:
            warnings.warn(
                "non-finite gradient or update: skipped this param group's step (counted in "
                "param_groups[i]['nonfinite_skips']; warned once)",
                _warning_class(),
                stacklevel=4,
            )
            self._warned_nonfinite = True
        return False

    @staticmethod
    def _gather(group: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.layout != torch.strided:
                raise TypeError(f"masked optimizers need dense gradients, got a {p.grad.layout} "
                                f"gradient for a parameter of shape {tuple(p.shape)}")
            params.append(p)
            grads.append(p.grad if p.grad.is_contiguous() else p.grad.contiguous())
        return params, grads

    def _backend_for(self, group: dict, p: torch.Tensor) -> str | None:
        # Kernels need contiguous tensors; a non-contiguous parameter (rare) uses the reference.
        return group["backend"] if p.is_contiguous() else "torch"

    @torch.no_grad()
    def step(self, closure=None):
        """One masked step for every param group; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = self._gather(group)
            if params:
                self._update_group(group, params, grads)
        return loss

    def _update_group(self, group: dict, params: list[torch.Tensor],
                      grads: list[torch.Tensor]) -> None:
        raise NotImplementedError  # each optimizer's fused update: prepare, dry-run, apply

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts every state tensor of a floating parameter to its dtype: restore bool masks.
        for p in self._all_params():
            st = self.state.get(p)
            if st is not None and "mask" in st:
                st["mask"] = st["mask"] != 0


class MaskedSGD(_MaskedOptimizer):
    """SGD that keeps a sparsity mask and adds an l1 penalty, in one fused pass per step.

    With keep = mask: p <- keep * (p - lr * u), u the momentum-filtered g + wd p + l1 sign(p)
    (l1-sparse unlearning, Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
    NeurIPS 2023). Equals `torch.optim.SGD` with no mask and l1 = 0.

    Args:
        params: iterable of parameters or param-group dicts.
        lr, momentum, dampening, weight_decay, nesterov: as in `torch.optim.SGD`.
        l1: l1 penalty strength (per group; schedule it by editing `group["l1"]`).
        l1_mode: "subgradient" (l1 * sign(p) added to the gradient) or "proximal"
            (soft-threshold by lr * l1 after the step).
        masks: initial masks, as accepted by `set_masks`; module: resolves named masks.
        nonfinite: "skip" (default) or "raise" on NaN/Inf gradients (see module docstring).
        backend: force "torch", "triton" or "cpp" (default: automatic per device).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        l1: float = 0.0,
        l1_mode: str = "subgradient",
        masks=None,
        module: nn.Module | None = None,
        nonfinite: str = "skip",
        backend: str | None = None,
    ):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, l1=l1, l1_mode=l1_mode, nonfinite=nonfinite,
                        backend=backend)
        super().__init__(params, defaults, masks, module)

    def _check_hyper(self, group, where):
        momentum = group["momentum"] = check_number(f"{where}momentum", group["momentum"],
                                                    low=0.0)
        dampening = group["dampening"] = check_number(f"{where}dampening", group["dampening"],
                                                      low=0.0, high=1.0)
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"{where}nesterov must be a bool, got {shown(group['nesterov'])}")
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")

    def _update_group(self, group, params, grads):
        momentum = group["momentum"]
        buckets: dict[tuple, list[int]] = {}
        fresh_bufs = []
        for i, p in enumerate(params):
            state = self.state[p]
            fresh = momentum != 0 and state.get("momentum_buffer") is None
            if fresh:
                state["momentum_buffer"] = torch.zeros_like(p)
                fresh_bufs.append(p)
            key = (p.device, p.dtype, fresh, self._backend_for(group, p))
            buckets.setdefault(key, []).append(i)
        steps = []
        for (_, _, fresh, backend), idx in buckets.items():
            ps = [params[i] for i in idx]
            steps.append(prepare_masked_sgd_step(
                ps,
                [grads[i] for i in idx],
                [self.state[p]["momentum_buffer"] for p in ps] if momentum != 0 else None,
                [self.state[p].get("mask") for p in ps],
                lr=group["lr"],
                momentum=momentum,
                # torch.optim.SGD starts the buffer at d (no dampening): a zero buffer with
                # dampening 0 gives exactly that.
                dampening=0.0 if fresh else group["dampening"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
                l1=group["l1"],
                l1_mode=group["l1_mode"],
                backend=backend,
                check_grads=True,
            ))
        if self._all_finite(group, steps):
            for s in steps:
                s.apply()
        else:  # a skipped first step leaves no buffer behind, as if it never happened
            for p in fresh_bufs:
                del self.state[p]["momentum_buffer"]


class MaskedAdamW(_MaskedOptimizer):
    """AdamW that keeps a sparsity mask and adds an l1 penalty, in one fused pass per step.

    p <- keep * (p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)) with moments of g + l1 sign(p)
    (Loshchilov & Hutter, ICLR 2019; masks as in SalUn / WAGLE). Equals `torch.optim.AdamW`
    (amsgrad=False) with no mask and l1 = 0.

    Args:
        params: iterable of parameters or param-group dicts.
        lr, betas, eps, weight_decay: as in `torch.optim.AdamW`.
        l1, l1_mode, masks, module, nonfinite, backend: as in `MaskedSGD`.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        l1: float = 0.0,
        l1_mode: str = "subgradient",
        masks=None,
        module: nn.Module | None = None,
        nonfinite: str = "skip",
        backend: str | None = None,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, l1=l1,
                        l1_mode=l1_mode, nonfinite=nonfinite, backend=backend)
        super().__init__(params, defaults, masks, module)

    def _check_hyper(self, group, where):
        betas = group["betas"]
        if isinstance(betas, torch.Tensor) or not isinstance(betas, Sequence) \
                or isinstance(betas, str):
            raise TypeError(f"{where}betas must be a pair of numbers (beta1, beta2), got "
                            f"{shown(betas)}")
        if len(betas) != 2:
            raise ValueError(f"{where}betas must be a pair of numbers (beta1, beta2), got "
                             f"{len(betas)} values: {betas!r}")
        group["betas"] = tuple(check_number(f"{where}betas[{i}]", b, low=0.0, high=1.0,
                                            high_open=True) for i, b in enumerate(betas))
        group["eps"] = check_number(f"{where}eps", group["eps"], low=0.0)

    def _update_group(self, group, params, grads):
        buckets: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            step = int(state["step"].item()) + 1  # counted only once the step is applied
            key = (p.device, p.dtype, step, self._backend_for(group, p))
            buckets.setdefault(key, []).append(i)
        beta1, beta2 = group["betas"]
        steps = []
        for (_, _, step, backend), idx in buckets.items():
            ps = [params[i] for i in idx]
            steps.append(prepare_masked_adamw_step(
                ps,
                [grads[i] for i in idx],
                [self.state[p]["exp_avg"] for p in ps],
                [self.state[p]["exp_avg_sq"] for p in ps],
                [self.state[p].get("mask") for p in ps],
                step=step,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                l1=group["l1"],
                l1_mode=group["l1_mode"],
                backend=backend,
                check_grads=True,
            ))
        if self._all_finite(group, steps):
            for s in steps:
                s.apply()
            for p in params:
                self.state[p]["step"] += 1
