"""Detection metrics: AUROC of a score, TPR / FPR of a split (poisoned = positive).

Inputs are 1-D tensors of one length, refused otherwise (nothing is cast or broadcast):
`poisoned` and `flagged` are bool tensors or integer tensors of 0/1 (a float tensor is a
TypeError: threshold scores into a split first, e.g. `scores > 0`); `scores` is a float or
integer tensor without NaN/Inf.
"""

from __future__ import annotations

import torch

from trustfast.checks import check_same_shape, check_tensor

_INTEGER = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_NUMERIC = _INTEGER[1:] + (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _indicator(name: str, value) -> torch.Tensor:
    """A 1-D bool / 0-1 integer tensor as bool, else an error naming `name`."""
    check_tensor(name, value, dtypes=_INTEGER, ndim=1, nonempty=True, binary=True,
                 hint="a bool or 0/1 integer indicator per sample; threshold float scores "
                      "first")
    return value.bool()


def _both_classes(poisoned: torch.Tensor) -> None:
    if poisoned.all() or not poisoned.any():
        raise ValueError("poisoned must contain both poisoned and clean samples, got "
                         f"{int(poisoned.sum())} poisoned of {poisoned.numel()}")


def auroc(scores: torch.Tensor, poisoned: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` (higher = poisoned) against the true `poisoned`
    indicator; ties count one half (scikit-learn's roc_auc_score).

    scores: (N,) float or integer tensor, finite; poisoned: (N,) bool or 0/1 integer tensor with
    both classes present.
    """
    from sklearn.metrics import roc_auc_score

    truth = _indicator("poisoned", poisoned)
    check_tensor("scores", scores, dtypes=_NUMERIC, ndim=1, finite=True,
                 hint="one suspicion score per sample, higher = poisoned")
    check_same_shape("scores", scores, "poisoned", poisoned)
    _both_classes(truth)
    return float(roc_auc_score(truth.cpu().numpy(), scores.detach().double().cpu().numpy()))


def split_rates(flagged: torch.Tensor, poisoned: torch.Tensor) -> tuple[float, float]:
    """(TPR, FPR) of a split: TPR = flagged poisoned / poisoned, FPR = flagged clean / clean.

    flagged, poisoned: (N,) bool or 0/1 integer tensors of one shape (`poisoned` with both
    classes present).
    """
    f, p = _indicator("flagged", flagged), _indicator("poisoned", poisoned)
    check_same_shape("flagged", flagged, "poisoned", poisoned)
    _both_classes(p)
    p = p.to(f.device)
    tpr = float((f & p).sum()) / float(p.sum())
    fpr = float((f & ~p).sum()) / float((~p).sum())
    return tpr, fpr
