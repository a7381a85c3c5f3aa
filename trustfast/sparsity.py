"""Sparsity masks for conv and linear weights (the weights pruning methods act on).

A mask is a bool tensor (True = kept) or a floating tensor holding only 0 and 1, with exactly
its parameter's shape and device: nothing is broadcast or cast (a float mask of 0.5 is refused,
not read as "kept"). `check_masks` is the one check every mask-taking function here and in
`trustfast.unlearn` runs; it returns the masks as bool tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from trustfast.checks import BOOL_OR_FLOAT, check_number, check_tensor, shown

Masks = dict[str, torch.Tensor]  # parameter name -> bool mask, True = kept


def check_module(name: str, model) -> nn.Module:
    """`model` if it is an nn.Module with at least one parameter, else a TypeError/ValueError."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {shown(model)}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"{name} must have parameters, got a {type(model).__name__} without any")
    return model


def check_masks(name: str, masks, params: Mapping[str, torch.Tensor], *,
                same_device: bool = True) -> Masks:
    """`masks` as bool tensors, each named like one of `params` and of exactly its shape (and
    device, with `same_device`), holding only True/False or 0/1 (BOOL_OR_FLOAT, binary); else
    an error naming `name[key]`. Unknown names are a ValueError listing them."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"{name} must be a mapping of parameter name -> bool mask, got "
                        f"{shown(masks)}")
    unknown = sorted(str(k) for k in masks if k not in params)
    if unknown:
        raise ValueError(f"{name} name parameters the model does not have: {unknown}")
    out = {}
    for key, m in masks.items():
        p = params[key]
        m = check_tensor(f"{name}[{key!r}]", m, dtypes=BOOL_OR_FLOAT, shape=tuple(p.shape),
                         device=p.device if same_device else None, binary=True)
        out[key] = m if m.dtype == torch.bool else m != 0
    return out


def check_sparsity(sparsity) -> float:
    """A pruning target: a number in [0, 1)."""
    return float(check_number("sparsity", sparsity, low=0.0, high=1.0, high_open=True))


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> weight of every Conv/Linear layer (biases and norms are never pruned)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {shown(model)}")
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out[f"{mod_name}.weight" if mod_name else "weight"] = mod.weight
    return out


@torch.no_grad()
def global_magnitude_masks(model: nn.Module, sparsity: float,
                           current: Masks | None = None) -> Masks:
    """Bool masks (True = kept) pruning exactly round(sparsity * n) of the n smallest-|w|
    prunable weights, ranked globally across layers (one-shot magnitude pruning, Han et al.
    2015; the OMP of "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023). Weights
    already pruned by `current` stay pruned; ties are pruned first by position.

    Refused: a `model` that is not an nn.Module, `sparsity` outside [0, 1) or not a number,
    `current` masks that are not bool/0-1 of their weight's exact shape, and NaN weights
    (their magnitude has no rank)."""
    check_module("model", model)
    sparsity = check_sparsity(sparsity)
    weights = prunable_weights(model)
    if not weights:
        raise ValueError("model has no Conv/Linear weights to prune")
    if current is not None:
        current = check_masks("current", current, dict(model.named_parameters()))
        current = {k: m for k, m in current.items() if k in weights}
    for name, w in weights.items():
        if bool(torch.isnan(w).any()):
            raise ValueError(f"model weight {name} holds NaN: magnitudes cannot be ranked")
    scores = {name: w.detach().abs().double() for name, w in weights.items()}
    keep_all = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    return masks_from_scores(scores, sparsity, {**keep_all, **(current or {})})


def masks_from_scores(scores: Masks, sparsity: float, current: Masks) -> Masks:
    """Prune the lowest scores globally to `sparsity`, never reviving entries `current` pruned.

    `scores` are non-negative, non-NaN floating tensors by name; `current` holds a mask of
    each one's shape for every name of `scores`."""
    sparsity = check_sparsity(sparsity)
    if not isinstance(scores, Mapping) or not scores:
        raise TypeError(f"scores must be a non-empty mapping of name -> score tensor, got "
                        f"{shown(scores)}")
    for key, s in scores.items():
        check_tensor(f"scores[{key!r}]", s, dtypes="floating", low=0.0)
    missing = sorted(str(k) for k in scores if not isinstance(current, Mapping) or k not in current)
    if missing:
        raise ValueError(f"current must hold a mask for every scored weight; missing {missing}")
    current = check_masks("current", {k: current[k] for k in scores}, scores,
                          same_device=False)
    flat = torch.cat([torch.where(current[k].to(s.device), s,
                                  torch.tensor(-1.0, dtype=s.dtype, device=s.device))
                      .flatten().cpu() for k, s in scores.items()])
    n_prune = int(round(sparsity * flat.numel()))
    already = int((flat < 0).sum())
    if already > n_prune:
        raise ValueError(f"sparsity {sparsity} is below that of `current` "
                         f"({already / flat.numel():.4g}): pruned weights would come back")
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if n_prune:
        keep[torch.argsort(flat, stable=True)[:n_prune]] = False
    out, start = {}, 0
    for k, s in scores.items():
        out[k] = keep[start:start + s.numel()].view_as(s).to(s.device)
        start += s.numel()
    return out


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of masked-out (False / 0) entries over all masks."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping of name -> bool mask, got {shown(masks)}")
    for key, m in masks.items():
        check_tensor(f"masks[{key!r}]", m, dtypes=BOOL_OR_FLOAT, binary=True)
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int((m != 0).sum()) for m in masks.values()) / max(total, 1)
