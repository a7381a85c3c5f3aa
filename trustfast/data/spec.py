"""Image data named by a string, as the CLI's `--data` receives it, and what a model needs to
know about it (`dataset_info`).

Specs: `digits`, `colored_digits` (built in), `imagefolder:DIR`, `cifar10:DIR`, `npz:FILE`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from trustfast.checks import check_number
from trustfast.data.adapt import as_image_dataset, label_index
from trustfast.data.images import ImageSize, image_size

DATA_SPECS = ("digits", "colored_digits", "imagefolder:DIR", "cifar10:DIR", "npz:FILE")
_TEST_FOLDERS = ("test", "val")


class LabeledSubset(Subset):
    """`torch.utils.data.Subset` that keeps its parent's `targets` (for these indices) and
    `classes`, so labels and the class count are known without reading images."""

    def __init__(self, dataset: Dataset, indices):
        super().__init__(dataset, [int(i) for i in indices])
        parent = getattr(dataset, "targets", None)
        if parent is not None:
            self.targets = [int(parent[i]) for i in self.indices]
        classes = getattr(dataset, "classes", None)
        if classes is not None:
            self.classes = classes


def split_dataset(dataset: Dataset, test_fraction: float = 0.2,
                  seed: int = 0) -> tuple[LabeledSubset, LabeledSubset]:
    """(train, test): a seeded random split, round(test_fraction * N) items to the test part
    (the order of `trustfast.data.digits`' split: same seed, same split)."""
    _check_fraction(test_fraction)
    seed = check_number("seed", seed, low=0, integer=True)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"dataset must be a map-style Dataset (with __len__ and __getitem__), "
                        f"got {type(dataset).__name__}")
    n = len(dataset)
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"test_fraction {test_fraction} of {n} items leaves "
                         f"{n_test} for the test split and {n - n_test} for training; "
                         f"each needs at least one")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return LabeledSubset(dataset, order[n_test:]), LabeledSubset(dataset, order[:n_test])


def _check_fraction(test_fraction) -> None:
    check_number("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True,
                 high_open=True, hint="the share of the items in the test split")


def _builtin(scheme: str, hw: tuple[int, int] | None, seed: int, test_fraction: float):
    from trustfast.data.digits import colored_digits, digits

    if hw is not None and hw[0] != hw[1]:
        raise ValueError(f"size: {scheme} images are square, got {hw}")
    if scheme == "digits":
        return digits(test_fraction, seed, size=8 if hw is None else hw[0])
    return colored_digits(test_fraction, seed, size=16 if hw is None else hw[0])


def _image_folder(root: str, size, seed: int, test_fraction: float):
    from trustfast.data.images import ImageFolder

    train_dir = os.path.join(root, "train")
    test_dirs = [os.path.join(root, d) for d in _TEST_FOLDERS
                 if os.path.isdir(os.path.join(root, d))]
    if os.path.isdir(train_dir) and test_dirs:
        train, test = ImageFolder(train_dir, size=size), ImageFolder(test_dirs[0], size=size)
        if train.classes != test.classes:
            only_train = sorted(set(train.classes) - set(test.classes))
            only_test = sorted(set(test.classes) - set(train.classes))
            raise ValueError(f"{train_dir!r} and {test_dirs[0]!r} must hold the same class "
                             f"folders (labels are their sorted order); only in train: "
                             f"{only_train[:5]}, only in {os.path.basename(test_dirs[0])}: "
                             f"{only_test[:5]}")
        return train, test
    return split_dataset(ImageFolder(root, size=size), test_fraction, seed)


def load_image_data(spec: str, *, seed: int = 0, test_fraction: float = 0.2,
                    size: ImageSize | None = None) -> tuple[Dataset, Dataset]:
    """(train, test) map-style image datasets for a `--data` spec.

    `digits` / `colored_digits`: the built-in sets (`size` upsamples them). `imagefolder:DIR`:
    DIR/train and DIR/test (or DIR/val) when both exist, else DIR/<class>/<image> split at
    random. `cifar10:DIR`: the training batches and the test batch. `npz:FILE`: its x_test /
    y_test when present, else split at random. A random split puts round(test_fraction * N)
    items in the test part, drawn from `seed`. `size` (int or (height, width)) resizes every
    image. Errors name the argument `data`.
    """
    if not isinstance(spec, str):
        raise TypeError(f"data must be a string such as {', '.join(DATA_SPECS)}, got "
                        f"{type(spec).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    _check_fraction(test_fraction)
    hw = image_size(size)
    scheme, sep, target = spec.partition(":")
    scheme = scheme.strip().lower()
    if scheme in ("digits", "colored_digits"):
        if sep:
            raise ValueError(f"data {spec!r}: {scheme} is built in and takes no path")
        try:
            return _builtin(scheme, hw, seed, test_fraction)
        except ValueError as err:
            raise ValueError(f"data {spec!r}: {err}") from err
    if scheme not in ("imagefolder", "cifar10", "npz") or not sep:
        raise ValueError(f"data: unknown data spec {spec!r}; expected one of "
                         f"{', '.join(DATA_SPECS)}")
    path = os.path.expanduser(target.strip())
    if not path:
        raise ValueError(f"data {spec!r}: no path after '{scheme}:'")
    kind = "file" if scheme == "npz" else "folder"
    if not (os.path.isfile(path) if kind == "file" else os.path.isdir(path)):
        raise ValueError(f"data {spec!r}: no such {kind} {path!r}")
    try:
        if scheme == "imagefolder":
            return _image_folder(path, size, seed, test_fraction)
        if scheme == "cifar10":
            from trustfast.data.cifar import CIFAR10

            return CIFAR10(path, train=True, size=size), CIFAR10(path, train=False, size=size)
        from trustfast.data.npz import NpzDataset, npz_splits

        if "test" in npz_splits(path):
            return (NpzDataset(path, "train", size=size), NpzDataset(path, "test", size=size))
        return split_dataset(NpzDataset(path, "train", size=size), test_fraction, seed)
    except (ValueError, TypeError) as err:
        kind_of_error = TypeError if isinstance(err, TypeError) else ValueError
        raise kind_of_error(f"data {spec!r}: {err}") from err


def _labels(dataset: Dataset, name: str) -> list[int]:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        tensors = getattr(dataset, "tensors", None)
        if isinstance(tensors, (tuple, list)) and len(tensors) == 2 \
                and isinstance(tensors[1], torch.Tensor):
            targets = tensors[1]
    if targets is None:  # read every item (images too): datasets without targets
        data = as_image_dataset(dataset, name)
        return [int(data[i][1]) for i in range(len(data))]
    if isinstance(targets, (torch.Tensor, np.ndarray)):
        targets = torch.as_tensor(targets)
        if targets.dim() == 1 and not (targets.is_floating_point() or targets.is_complex()
                                       or targets.dtype == torch.bool):
            if len(targets) and int(targets.min()) < 0:
                raise ValueError(f"{name}.targets: class labels must be >= 0, got "
                                 f"{int(targets.min())}")
            return targets.tolist()
        targets = list(targets)
    return [label_index(t, f"{name}.targets[{i}]") for i, t in enumerate(targets)]


def dataset_info(dataset: Dataset, name: str = "dataset") -> dict:
    """{"n": items, "num_classes": len(classes) when the dataset names them, else the largest
    label + 1, "image_shape": (C, H, W) of its first image} (what `build_model` needs). Labels
    come from `targets` or a TensorDataset's tensors when present, else from reading items."""
    data = as_image_dataset(dataset, name)
    labels = _labels(dataset, name)
    if len(labels) != len(dataset):
        raise ValueError(f"{name}: {len(labels)} targets for {len(dataset)} items")
    classes = getattr(dataset, "classes", None)
    num_classes = len(classes) if classes is not None else max(labels) + 1
    return {"n": len(dataset), "num_classes": int(num_classes),
            "image_shape": tuple(int(s) for s in data[0][0].shape)}
