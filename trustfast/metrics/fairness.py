"""Group fairness of a classifier's predictions: per-group accuracy and the disparity metrics.

Definitions (checked against fairlearn in tests/metrics/test_fairness.py):
- group accuracy: P(pred = y | group = g); worst-group accuracy: min over groups; accuracy gap:
  max - min over groups (fairlearn: MetricFrame(accuracy_score).by_group / .difference()).
- true / false positive rate of a group for a positive class c: TPR_g = P(pred = c | y = c, g),
  FPR_g = P(pred = c | y != c, g).
- equal-opportunity difference: max_g TPR_g - min_g TPR_g (fairlearn's
  `equal_opportunity_difference`, "between_groups");
- equalized-odds difference: max(TPR difference, FPR difference) (fairlearn's
  `equalized_odds_difference`, agg="worst_case").

Binary labels (every label 0 or 1; positive class 1) follow fairlearn exactly. `pos_label=c`
picks another positive class (one class vs the rest). Multi-class labels (any label outside
{0, 1}, pos_label=None): trustfast's extension, since fairlearn's are binary only — the mean
over classes of the one-vs-rest binary difference, over the classes that occur in y_true.
A group whose rate is undefined (no positives of the class for TPR, no negatives for FPR) is
left out of that rate's max - min; fairlearn instead counts such a group's rate as 0. A class
whose rate is undefined in every group is left out of the mean (NaN if nothing is left).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from trustfast.checks import check_number, describe, shown

INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _labels(name: str, x: Any) -> torch.Tensor:
    """`x` (a 1-D integer torch tensor or numpy array) as a CPU int64 tensor."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must hold integers (class or group indices), got a numpy "
                            f"array of dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x).astype(np.int64))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D integer torch.Tensor or numpy array, got "
                        f"{shown(x)}")
    elif x.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor (class or group indices), got "
                        f"{describe(x)}")
    if x.dim() != 1:
        raise ValueError(f"{name} must have 1 dimension, got {describe(x)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got {describe(x)}")
    return x.detach().to(device="cpu", dtype=torch.int64)


def _inputs(y_true: Any, y_pred: Any, groups: Any) -> tuple[torch.Tensor, ...]:
    y_true, y_pred, groups = (_labels("y_true", y_true), _labels("y_pred", y_pred),
                              _labels("groups", groups))
    n = y_true.shape[0]
    for name, x in (("y_pred", y_pred), ("groups", groups)):
        if x.shape[0] != n:
            raise ValueError(f"{name} must have the length of y_true ({n}), got {describe(x)}")
    return y_true, y_pred, groups


def group_accuracies(y_true: Any, y_pred: Any, groups: Any) -> dict[int, float]:
    """{group: accuracy of y_pred on the samples of that group}, groups sorted ascending."""
    y_true, y_pred, groups = _inputs(y_true, y_pred, groups)
    ids, index = torch.unique(groups, return_inverse=True)
    correct = torch.bincount(index, weights=(y_true == y_pred).double(), minlength=len(ids))
    counts = torch.bincount(index, minlength=len(ids)).double()
    return {int(g): float(c / n) for g, c, n in zip(ids, correct, counts)}


def worst_group_accuracy(y_true: Any, y_pred: Any, groups: Any) -> float:
    """min over groups of the group accuracy."""
    return min(group_accuracies(y_true, y_pred, groups).values())


def accuracy_gap(y_true: Any, y_pred: Any, groups: Any) -> float:
    """max - min over groups of the group accuracy (fairlearn's MetricFrame.difference())."""
    acc = group_accuracies(y_true, y_pred, groups).values()
    return max(acc) - min(acc)


def _positive_classes(y_true: torch.Tensor, y_pred: torch.Tensor,
                      pos_label: int | None) -> list[int]:
    if pos_label is not None:
        return [int(check_number("pos_label", pos_label, integer=True))]
    labels = torch.cat([y_true, y_pred])
    if bool(((labels == 0) | (labels == 1)).all()):
        return [1]
    return [int(c) for c in torch.unique(y_true)]


def _spread(hits: torch.Tensor, totals: torch.Tensor) -> float:
    """max - min of hits / totals over the groups with totals > 0 (NaN if none)."""
    defined = totals > 0
    if not bool(defined.any()):
        return math.nan
    rates = hits[defined] / totals[defined]
    return float(rates.max() - rates.min())


def _rate_differences(y_true: torch.Tensor, y_pred: torch.Tensor, groups: torch.Tensor,
                      pos_label: int | None) -> list[tuple[float, float]]:
    """(TPR difference, FPR difference) per positive class (binary: one class)."""
    _, index = torch.unique(groups, return_inverse=True)
    k = int(index.max()) + 1
    out = []
    for c in _positive_classes(y_true, y_pred, pos_label):
        pos, hit = y_true == c, (y_pred == c).double()
        tp = torch.bincount(index[pos], weights=hit[pos], minlength=k)
        p = torch.bincount(index[pos], minlength=k).double()
        fp = torch.bincount(index[~pos], weights=hit[~pos], minlength=k)
        neg = torch.bincount(index[~pos], minlength=k).double()
        out.append((_spread(tp, p), _spread(fp, neg)))
    return out


def _mean_defined(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def equal_opportunity_difference(y_true: Any, y_pred: Any, groups: Any, *,
                                 pos_label: int | None = None) -> float:
    """max - min over groups of the true positive rate (fairlearn's definition for binary
    labels; multi-class: the mean over classes of the one-vs-rest difference, module docs)."""
    y_true, y_pred, groups = _inputs(y_true, y_pred, groups)
    return _mean_defined([tpr for tpr, _ in _rate_differences(y_true, y_pred, groups,
                                                              pos_label)])


def equalized_odds_difference(y_true: Any, y_pred: Any, groups: Any, *,
                              pos_label: int | None = None) -> float:
    """max(TPR difference, FPR difference) over groups (fairlearn's
    `equalized_odds_difference`, worst case); multi-class: the mean over classes of the
    one-vs-rest value (module docs)."""
    y_true, y_pred, groups = _inputs(y_true, y_pred, groups)
    per_class = []
    for tpr, fpr in _rate_differences(y_true, y_pred, groups, pos_label):
        defined = [v for v in (tpr, fpr) if not math.isnan(v)]
        per_class.append(max(defined) if defined else math.nan)
    return _mean_defined(per_class)


def fairness_report(y_true: Any, y_pred: Any, groups: Any, *,
                    pos_label: int | None = None) -> dict[str, float]:
    """Overall accuracy and the group metrics of this module, as one row of floats: keys
    "accuracy", "worst_group_accuracy", "accuracy_gap", "equal_opportunity_difference",
    "equalized_odds_difference"."""
    y_true, y_pred, groups = _inputs(y_true, y_pred, groups)
    acc = group_accuracies(y_true, y_pred, groups).values()
    return {
        "accuracy": float((y_true == y_pred).double().mean()),
        "worst_group_accuracy": min(acc),
        "accuracy_gap": max(acc) - min(acc),
        "equal_opportunity_difference": equal_opportunity_difference(
            y_true, y_pred, groups, pos_label=pos_label),
        "equalized_odds_difference": equalized_odds_difference(
            y_true, y_pred, groups, pos_label=pos_label),
    }
