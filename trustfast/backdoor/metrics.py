"""Detection metrics: AUROC of a score, TPR / FPR of a split (poisoned = positive)."""

from __future__ import annotations

import torch


def _as_bool(name: str, value) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.bool()


def auroc(scores: torch.Tensor, poisoned: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` (higher = poisoned) against the true `poisoned`
    indicator; ties count one half (scikit-learn's roc_auc_score)."""
    from sklearn.metrics import roc_auc_score

    truth = _as_bool("poisoned", poisoned)
    s = torch.as_tensor(scores, dtype=torch.float64)
    if s.shape != truth.shape:
        raise ValueError(f"scores has shape {tuple(s.shape)}, poisoned {tuple(truth.shape)}")
    if truth.all() or not truth.any():
        raise ValueError("poisoned must contain both poisoned and clean samples for an AUROC")
    return float(roc_auc_score(truth.numpy(), s.numpy()))


def split_rates(flagged: torch.Tensor, poisoned: torch.Tensor) -> tuple[float, float]:
    """(TPR, FPR) of a split: TPR = flagged poisoned / poisoned, FPR = flagged clean / clean."""
    f, p = _as_bool("flagged", flagged), _as_bool("poisoned", poisoned)
    if f.shape != p.shape:
        raise ValueError(f"flagged has shape {tuple(f.shape)}, poisoned {tuple(p.shape)}")
    if p.all() or not p.any():
        raise ValueError("poisoned must contain both poisoned and clean samples")
    tpr = float((f & p).sum()) / float(p.sum())
    fpr = float((f & ~p).sum()) / float((~p).sum())
    return tpr, fpr
