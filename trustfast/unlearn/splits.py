"""Forget / retain / test splits of any map-style Dataset (class-wise, random, explicit)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from trustfast.checks import check_number, shown


def check_dataset(name: str, data) -> Dataset:
    """`data` if it is a map-style dataset (len() and [i]), else a TypeError naming `name`
    (a DataLoader is refused: the unlearning API batches the data itself)."""
    if isinstance(data, DataLoader):
        raise TypeError(f"{name} must be a map-style Dataset (len() and [i]), got a "
                        f"DataLoader; pass its dataset: {name}.dataset")
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")) or \
            isinstance(data, (str, bytes, torch.Tensor)):
        raise TypeError(f"{name} must be a map-style Dataset (len() and [i]) of (image, label) "
                        f"items, got {shown(data)}")
    return data


def check_splits(splits) -> Splits:
    """`splits` if it is a Splits of map-style datasets, else a TypeError."""
    if not isinstance(splits, Splits):
        raise TypeError(f"splits must be a trustfast.unlearn.Splits (from classwise, "
                        f"random_fraction or from_indices), got {shown(splits)}")
    for part in ("forget", "retain", "test"):
        check_dataset(f"splits.{part}", getattr(splits, part))
    return splits


@dataclass
class Splits:
    """What to forget, what to keep, and what to test on (all map-style Datasets)."""

    forget: Dataset
    retain: Dataset
    test: Dataset
    scenario: str  # "classwise", "random" or "indices"
    forget_indices: list[int] = field(default_factory=list)  # into the training set
    forget_class: int | None = None

    def describe(self) -> dict:
        return {"scenario": self.scenario, "forget": len(self.forget),
                "retain": len(self.retain), "test": len(self.test),
                "forget_class": self.forget_class}


def labels_of(dataset: Dataset) -> torch.Tensor:
    """Integer labels of a dataset: `targets`, a TensorDataset's second tensor, a Subset of
    either, or else item [1] of every sample."""
    check_dataset("dataset", dataset)
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].long()
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets).long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def _split(train: Dataset, forget_idx: torch.Tensor) -> tuple[Subset, Subset]:
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[forget_idx] = False
    return (Subset(train, forget_idx.tolist()),
            Subset(train, keep.nonzero().flatten().tolist()))


def classwise(train: Dataset, test: Dataset, forget_class: int) -> Splits:
    """Forget every training sample of `forget_class`; the class also leaves the test set."""
    check_dataset("train", train)
    check_dataset("test", test)
    forget_class = check_number("forget_class", forget_class, integer=True)
    train_labels, test_labels = labels_of(train), labels_of(test)
    forget_idx = (train_labels == forget_class).nonzero().flatten()
    if len(forget_idx) == 0:
        raise ValueError(f"forget_class {forget_class} has no training samples; classes present: "
                         f"{sorted(set(train_labels.tolist()))}")
    forget, retain = _split(train, forget_idx)
    kept_test = (test_labels != forget_class).nonzero().flatten().tolist()
    return Splits(forget, retain, Subset(test, kept_test), "classwise", forget_idx.tolist(),
                  forget_class)


def random_fraction(train: Dataset, test: Dataset, fraction: float, seed: int = 0) -> Splits:
    """Forget a seeded random `fraction` of the training set (the test set is unchanged)."""
    check_dataset("train", train)
    check_dataset("test", test)
    fraction = float(check_number("fraction", fraction, low=0.0, high=1.0, low_open=True,
                                  high_open=True))
    seed = check_number("seed", seed, low=0, integer=True)
    n = len(train)
    count = max(1, int(round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    forget_idx = order[:count].sort().values
    forget, retain = _split(train, forget_idx)
    return Splits(forget, retain, test, "random", forget_idx.tolist())


def from_indices(train: Dataset, test: Dataset, indices) -> Splits:
    """Forget the given training indices (unique, in range; integers, not bools or floats)."""
    check_dataset("train", train)
    check_dataset("test", test)
    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        raise TypeError(f"indices must be a sequence of integers, got {shown(indices)}")
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be integers, got a {indices.dtype} tensor")
        indices = indices.flatten().tolist()
    indices = [check_number(f"indices[{i}]", v, integer=True) for i, v in enumerate(indices)]
    idx = torch.as_tensor(indices, dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("indices must not be empty")
    if len(torch.unique(idx)) != len(idx):
        raise ValueError("indices must be unique")
    if int(idx.min()) < 0 or int(idx.max()) >= len(train):
        raise ValueError(f"indices must be in [0, {len(train)}), got range "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    forget_idx = idx.sort().values
    forget, retain = _split(train, forget_idx)
    return Splits(forget, retain, test, "indices", forget_idx.tolist())
