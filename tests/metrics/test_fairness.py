"""Group fairness metrics: parity with fairlearn, known answers, the multi-class and
undefined-rate rules, and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fairlearn import metrics as fl
from sklearn.metrics import accuracy_score

from trustfast.metrics import (
    accuracy_gap,
    equal_opportunity_difference,
    equalized_odds_difference,
    fairness_report,
    group_accuracies,
    worst_group_accuracy,
)


def random_predictions(n: int, num_classes: int, num_groups: int, seed: int):
    """Labels, predictions that are right with a group-dependent probability, and groups."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, num_groups, n)
    y_true = rng.integers(0, num_classes, n)
    right = rng.random(n) < 0.5 + 0.1 * groups
    y_pred = np.where(right, y_true, rng.integers(0, num_classes, n))
    return y_true, y_pred, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_parity_with_fairlearn(seed):
    y_true, y_pred, groups = random_predictions(600, 2, 4, seed)
    frame = fl.MetricFrame(metrics=accuracy_score, y_true=y_true, y_pred=y_pred,
                        sensitive_features=groups)
    expected = {int(g): float(v) for g, v in frame.by_group.items()}
    got = group_accuracies(y_true, y_pred, groups)
    assert list(got) == sorted(expected)
    for g in expected:
        assert got[g] == pytest.approx(expected[g], abs=1e-12)
    assert worst_group_accuracy(y_true, y_pred, groups) == pytest.approx(frame.group_min())
    assert accuracy_gap(y_true, y_pred, groups) == pytest.approx(frame.difference())
    assert equalized_odds_difference(y_true, y_pred, groups) == pytest.approx(
        fl.equalized_odds_difference(y_true, y_pred, sensitive_features=groups), abs=1e-12)
    assert equal_opportunity_difference(y_true, y_pred, groups) == pytest.approx(
        fl.equal_opportunity_difference(y_true, y_pred, sensitive_features=groups), abs=1e-12)
    # Torch tensors give the same numbers.
    t = [torch.from_numpy(a) for a in (y_true, y_pred, groups)]
    assert fairness_report(*t) == fairness_report(y_true, y_pred, groups)


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_is_the_mean_of_fairlearns_one_vs_rest(seed):
    y_true, y_pred, groups = random_predictions(900, 5, 3, seed)
    eod, eop = [], []
    for c in range(5):
        t, p = (y_true == c).astype(int), (y_pred == c).astype(int)
        eod.append(fl.equalized_odds_difference(t, p, sensitive_features=groups))
        eop.append(fl.equal_opportunity_difference(t, p, sensitive_features=groups))
        assert equalized_odds_difference(y_true, y_pred, groups, pos_label=c) == pytest.approx(
            eod[-1], abs=1e-12)
    assert equalized_odds_difference(y_true, y_pred, groups) == pytest.approx(np.mean(eod))
    assert equal_opportunity_difference(y_true, y_pred, groups) == pytest.approx(np.mean(eop))
    frame = fl.MetricFrame(metrics=accuracy_score, y_true=y_true, y_pred=y_pred,
                        sensitive_features=groups)
    report = fairness_report(y_true, y_pred, groups)
    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert report["worst_group_accuracy"] == pytest.approx(frame.group_min())
    assert report["accuracy_gap"] == pytest.approx(frame.difference())
    assert report["equalized_odds_difference"] == pytest.approx(np.mean(eod))
    assert set(report) == {"accuracy", "worst_group_accuracy", "accuracy_gap",
                           "equal_opportunity_difference", "equalized_odds_difference"}


def test_known_answer():
    # group 0: TPR 1/2 (pos 0,1), FPR 1/2 (neg 2,3); group 1: TPR 1 (pos 4), FPR 0 (neg 5,6)
    y_true = torch.tensor([1, 1, 0, 0, 1, 0, 0])
    y_pred = torch.tensor([1, 0, 1, 0, 1, 0, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    assert group_accuracies(y_true, y_pred, groups) == {0: 0.5, 1: 1.0}
    assert worst_group_accuracy(y_true, y_pred, groups) == 0.5
    assert accuracy_gap(y_true, y_pred, groups) == 0.5
    assert equal_opportunity_difference(y_true, y_pred, groups) == 0.5
    assert equalized_odds_difference(y_true, y_pred, groups) == 0.5
    # Perfect predictions: no gap at all.
    assert fairness_report(y_true, y_true, groups) == {
        "accuracy": 1.0, "worst_group_accuracy": 1.0, "accuracy_gap": 0.0,
        "equal_opportunity_difference": 0.0, "equalized_odds_difference": 0.0}


def test_group_without_positives_is_left_out_of_the_tpr():
    # Group 2 has no positives: fairlearn counts its TPR as 0 (difference 1.0); its TPR is
    # undefined, so here it is left out (groups 0 and 1 both have TPR 1).
    y_true = np.array([1, 0, 1, 0, 0, 0])
    y_pred = np.array([1, 0, 1, 1, 0, 1])
    groups = np.array([0, 0, 1, 1, 2, 2])
    assert fl.equal_opportunity_difference(y_true, y_pred, sensitive_features=groups) == 1.0
    assert equal_opportunity_difference(y_true, y_pred, groups) == 0.0
    # FPR is defined in every group: 0, 1, 1/2 -> difference 1.
    assert equalized_odds_difference(y_true, y_pred, groups) == 1.0
    # No positives anywhere: the TPR difference is undefined.
    assert math.isnan(equal_opportunity_difference(np.zeros(4, int), np.zeros(4, int),
                                                   np.array([0, 0, 1, 1])))


def test_bad_inputs_name_the_argument():
    y = torch.tensor([0, 1, 1, 0])
    g = torch.tensor([0, 0, 1, 1])
    with pytest.raises(TypeError, match="y_pred must be an integer tensor"):
        group_accuracies(y, y.float(), g)
    with pytest.raises(ValueError, match=r"groups must have the length of y_true \(4\)"):
        fairness_report(y, y, g[:3])
    with pytest.raises(ValueError, match="y_true must have 1 dimension"):
        accuracy_gap(y.view(2, 2), y.view(2, 2), g.view(2, 2))
    with pytest.raises(TypeError, match="groups must be a 1-D integer torch.Tensor"):
        equalized_odds_difference(y, y, [0, 0, 1, 1])
    with pytest.raises(TypeError, match="y_true must hold integers"):
        equal_opportunity_difference(np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="y_true must not be empty"):
        worst_group_accuracy(y[:0], y[:0], g[:0])
    with pytest.raises(TypeError, match="pos_label must be an integer"):
        equalized_odds_difference(y, y, g, pos_label=0.5)
