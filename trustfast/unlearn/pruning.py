"""Pruning that produces bool masks per parameter name (True = kept), for "prune first, then
unlearn" (Jia et al., NeurIPS 2023): OMP, IMP (Frankle & Carbin, ICLR 2019) and SynFlow
(Tanaka et al., NeurIPS 2020). Only conv / linear weights are pruned; masks are kept by
`trustfast.optim.MaskedSGD` (pruned weights exactly zero) and saved with safetensors.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trustfast.checks import check_number, shown
from trustfast.sparsity import (
    Masks,
    check_masks,
    check_module,
    check_sparsity,
    mask_sparsity,
    masks_from_scores,
    prunable_weights,
)

# the unlearning API's name for global magnitude pruning (one implementation, in sparsity.py)
from trustfast.sparsity import global_magnitude_masks as magnitude_masks

# retrain(model, masks): train `model` in place under `masks` (e.g. with MaskedSGD).
Retrain = Callable[[nn.Module, Masks], None]


def _check_retrain(retrain) -> None:
    if not callable(retrain):
        raise TypeError(f"retrain must be a callable retrain(model, masks), got {shown(retrain)}")


def _check_rewind(rewind_state) -> None:
    if rewind_state is not None and not isinstance(rewind_state, Mapping):
        raise TypeError(f"rewind_state must be a state dict (a mapping of name -> tensor) or "
                        f"None, got {shown(rewind_state)}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned entries of `model`'s parameters in place.

    Each mask is bool (True = kept) or a floating tensor of exactly 0 and 1, with its
    parameter's exact shape and device (`trustfast.sparsity.check_masks`: nothing is cast or
    broadcast, a 0.5 is refused); every mask is checked before any weight is touched."""
    check_module("model", model)
    params = dict(model.named_parameters())
    masks = check_masks("masks", masks, params)
    for name, m in masks.items():
        # masked_fill, not a multiply: 0 * inf or 0 * NaN would leave NaN in a pruned weight
        params[name].masked_fill_(~m, 0)


def omp(model: nn.Module, sparsity: float, retrain: Retrain,
        rewind_state: dict[str, torch.Tensor] | None = None) -> Masks:
    """One-shot magnitude pruning: global magnitude masks from the trained `model`, weights
    rewound to `rewind_state` (an early checkpoint; None keeps the trained weights), then
    `retrain(model, masks)`. Returns the masks; `model` ends pruned and retrained."""
    check_module("model", model)
    sparsity = check_sparsity(sparsity)
    _check_retrain(retrain)
    _check_rewind(rewind_state)
    masks = magnitude_masks(model, sparsity)
    if rewind_state is not None:
        model.load_state_dict(rewind_state)
    apply_masks(model, masks)
    retrain(model, masks)
    return masks


def imp(model: nn.Module, sparsity: float, retrain: Retrain,
        rewind_state: dict[str, torch.Tensor] | None = None, rate: float = 0.2) -> Masks:
    """Iterative magnitude pruning: rounds that each prune `rate` (20 %) of the remaining weights,
    rewind to `rewind_state`, and retrain under the mask, until `sparsity` (the last round
    prunes exactly to it)."""
    check_module("model", model)
    sparsity = check_sparsity(sparsity)
    _check_retrain(retrain)
    _check_rewind(rewind_state)
    rate = float(check_number("rate", rate, low=0.0, high=1.0, low_open=True, high_open=True))
    # count rounds with integers: ceil(log(1 - s) / log(1 - rate)) rounds 2.0000000000000004 up
    rounds = 0
    while 1 - (1 - rate) ** rounds < sparsity - 1e-12:
        rounds += 1
    masks = magnitude_masks(model, 0.0)
    for r in range(1, rounds + 1):
        target = min(sparsity, 1 - (1 - rate) ** r)
        masks = magnitude_masks(model, target, current=masks)
        if rewind_state is not None:
            model.load_state_dict(rewind_state)
        apply_masks(model, masks)
        retrain(model, masks)
    return masks


def synflow(model: nn.Module, sparsity: float, input_shape: tuple[int, ...],
            rounds: int = 100) -> Masks:
    """SynFlow: data-free iterative pruning. Each round scores |theta * dR/dtheta| with
    R = sum(f_|theta|(1)) (all weights made positive, an all-ones input, float64, eval mode) and
    prunes globally to 1 - (1 - sparsity)^(k / rounds). `model` itself is not modified."""
    check_module("model", model)
    sparsity = check_sparsity(sparsity)
    rounds = check_number("rounds", rounds, low=1, integer=True)
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str) or \
            not input_shape:
        raise TypeError(f"input_shape must be a non-empty tuple of ints (one sample's shape, "
                        f"e.g. (1, 8, 8)), got {shown(input_shape)}")
    input_shape = tuple(check_number(f"input_shape[{i}]", s, low=1, integer=True)
                        for i, s in enumerate(input_shape))
    probe = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in probe.parameters():
            p.abs_()
    weights = prunable_weights(probe)
    original = {k: w.detach().clone() for k, w in weights.items()}
    device = next(probe.parameters()).device
    ones = torch.ones(1, *input_shape, dtype=torch.float64, device=device)
    masks = magnitude_masks(probe, 0.0)
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for name, w in weights.items():
                w.copy_(original[name] * masks[name])
        probe.zero_grad(set_to_none=True)
        torch.sum(probe(ones)).backward()
        scores = {name: (w.grad * w).detach().abs() for name, w in weights.items()}
        target = 1 - (1 - sparsity) ** (k / rounds)
        masks = masks_from_scores(scores, target, masks)
    return {k: m.to(model.get_parameter(k).device) for k, m in masks.items()}


def _check_path(path) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {shown(path)}")


def save_masks(path: str, masks: Masks) -> None:
    """Write masks (bool or 0/1 tensors by parameter name) to a safetensors file, as bool."""
    _check_path(path)
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping of name -> bool mask, got {shown(masks)}")
    masks = check_masks("masks", masks, masks, same_device=False)
    save_file({k: m.detach().to(torch.bool).contiguous().cpu() for k, m in masks.items()}, path)


def load_masks(path: str) -> Masks:
    """Read masks written by `save_masks` (bool tensors on the CPU)."""
    _check_path(path)
    if not os.path.isfile(path):
        raise ValueError(f"path must be a masks file written by save_masks, got {str(path)!r} "
                         f"(no such file)")
    masks = load_file(path)
    bad = [k for k, m in masks.items() if m.dtype != torch.bool]
    if bad:
        raise ValueError(f"{path}: entries {bad} are not bool masks")
    return masks


__all__ = ["Masks", "apply_masks", "imp", "load_masks", "magnitude_masks", "mask_sparsity",
           "omp", "save_masks", "synflow"]
