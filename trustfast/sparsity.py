"""Sparsity masks for conv and linear weights (the weights pruning methods act on)."""

from __future__ import annotations

import torch
from torch import nn

Masks = dict[str, torch.Tensor]  # parameter name -> bool mask, True = kept


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> weight of every Conv/Linear layer (biases and norms are never pruned)."""
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
    already pruned by `current` stay pruned; ties are pruned first by position."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    weights = prunable_weights(model)
    if not weights:
        raise ValueError("model has no Conv/Linear weights to prune")
    scores = {name: w.detach().abs().double() for name, w in weights.items()}
    keep_all = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    return masks_from_scores(scores, sparsity, {**keep_all, **(current or {})})


def masks_from_scores(scores: Masks, sparsity: float, current: Masks) -> Masks:
    """Prune the lowest scores globally to `sparsity`, never reviving entries `current` pruned."""
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
    """Fraction of masked-out (False) entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)
