"""Unlearning metrics as "Model Sparsity Can Simplify Machine Unlearning" (Jia et al., NeurIPS
2023) reports them: UA, RA, TA, MIA-Efficacy, RTE, and Disparity Ave against Retrain."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trustfast.checks import check_number
from trustfast.sparsity import check_module
from trustfast.unlearn.splits import Splits, check_dataset, check_splits
from trustfast.utils import eval_mode

METRICS = ("UA", "MIA", "RA", "TA")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_args(model, dataset, batch_size) -> None:
    check_module("model", model)
    check_dataset("dataset", dataset)
    check_number("batch_size", batch_size, low=1, integer=True)


@torch.no_grad()
def true_label_probs(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> torch.Tensor:
    """softmax(f(x))[y] for every sample (the MIA's confidence feature), in eval mode; NaN
    outputs count as probability 0."""
    _check_args(model, dataset, batch_size)
    out = []
    with eval_mode(model):
        for x, y in DataLoader(dataset, batch_size=batch_size):
            # a diverged model (e.g. gradient ascent run too long) gives NaN: count it as 0
            probs = torch.softmax(model(x.to(_device(model))).float(), dim=1).nan_to_num(0.0)
            out.append(probs.gather(1, y.to(probs.device).long().view(-1, 1)).flatten().cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy in % (eval mode)."""
    _check_args(model, dataset, batch_size)
    if len(dataset) == 0:
        raise ValueError("accuracy of an empty dataset")
    correct = 0
    with eval_mode(model):
        for x, y in DataLoader(dataset, batch_size=batch_size):
            pred = model(x.to(_device(model))).argmax(1).cpu()
            correct += int((pred == y.long()).sum())
    return 100.0 * correct / len(dataset)


def mia_efficacy(model: nn.Module, splits: Splits, seed: int = 0) -> float:
    """MIA-Efficacy (%): the fraction of forget samples a confidence-based membership attack
    calls non-members. The attack is an RBF SVC (C=3) on the softmax probability of the true
    label, trained with retain samples as members and test samples as non-members (equal
    counts, retain subsampled with `seed`), as in the paper's code. Higher = more forgotten."""
    from sklearn.svm import SVC

    check_module("model", model)
    check_splits(splits)
    seed = check_number("seed", seed, low=0, integer=True)
    member = true_label_probs(model, splits.retain)
    nonmember = true_label_probs(model, splits.test)
    if len(member) == 0 or len(nonmember) == 0 or len(splits.forget) == 0:
        raise ValueError("mia_efficacy needs non-empty retain, test and forget sets")
    n = min(len(member), len(nonmember))
    gen = torch.Generator().manual_seed(seed)
    member = member[torch.randperm(len(member), generator=gen)[:n]]
    nonmember = nonmember[torch.randperm(len(nonmember), generator=gen)[:n]]
    features = torch.cat([member, nonmember]).view(-1, 1).numpy()
    targets = torch.cat([torch.ones(n), torch.zeros(n)]).numpy()
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(features, targets)
    forget = true_label_probs(model, splits.forget).view(-1, 1).numpy()
    return 100.0 * float((clf.predict(forget) == 0).mean())


def evaluate(model: nn.Module, splits: Splits, seconds: float | None = None,
             seed: int = 0) -> dict:
    """{"UA": 100 - forget accuracy, "RA", "TA", "MIA": MIA-Efficacy, "RTE": seconds}, in %."""
    check_module("model", model)
    check_splits(splits)
    if seconds is not None:
        seconds = check_number("seconds", seconds, low=0.0)
    row = {
        "UA": 100.0 - accuracy(model, splits.forget),
        "RA": accuracy(model, splits.retain),
        "TA": accuracy(model, splits.test),
        "MIA": mia_efficacy(model, splits, seed),
    }
    if seconds is not None:
        row["RTE"] = seconds
    return row


def disparity_average(row: dict, retrain: dict) -> float:
    """Disparity Ave: mean over UA, MIA-Efficacy, RA, TA of |metric - Retrain's metric|
    (the paper's Table 1 column; lower = closer to exact unlearning)."""
    for name, value in (("row", row), ("retrain", retrain)):
        if not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict of metrics {METRICS}, got "
                            f"{type(value).__name__}")
    missing = [k for k in METRICS if k not in row or k not in retrain]
    if missing:
        raise ValueError(f"disparity_average needs {METRICS}; missing {missing}")
    for name, value in (("row", row), ("retrain", retrain)):
        for k in METRICS:
            check_number(f"{name}[{k!r}]", value[k])
    return sum(abs(row[k] - retrain[k]) for k in METRICS) / len(METRICS)
