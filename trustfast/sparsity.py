"""Sparsity masks for conv and linear weights (the weights pruning methods act on)."""

from __future__ import annotations

import torch
from torch import nn


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> weight of every Conv/Linear layer (biases and norms are never pruned)."""
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out[f"{mod_name}.weight" if mod_name else "weight"] = mod.weight
    return out


@torch.no_grad()
def global_magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Bool masks (True = kept) pruning the `sparsity` fraction of smallest-|w| prunable weights,
    ranked globally across layers (one-shot magnitude pruning, Han et al. 2015; the OMP of
    "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    weights = prunable_weights(model)
    if not weights:
        raise ValueError("model has no Conv/Linear weights to prune")
    scores = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
    n_prune = int(sparsity * scores.numel())
    if n_prune == 0:
        return {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    threshold = torch.kthvalue(scores, n_prune).values.item()
    return {k: w.detach().abs() > threshold for k, w in weights.items()}


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of masked-out (False) entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)
