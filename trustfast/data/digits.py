"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) as NCHW tensors in [0, 1]."""

from __future__ import annotations

import torch
from torch.nn.functional import interpolate
from torch.utils.data import TensorDataset

from trustfast.checks import check_choice, check_number

MAX_DIGITS_SIZE = 256  # the largest upsampled side `digits` makes


def digits(test_fraction: float = 0.2, seed: int = 0, size: int = 8,
           channels: int = 1) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) TensorDatasets of (image [channels, size, size] float32 in [0, 1], label).

    The split is random (not stratified) and seeded: the same seed gives the same split
    everywhere. `size` > 8 upsamples bilinearly (e.g. 32 for CIFAR-style models such as
    `trustfast.models.resnet18`); `channels` = 3 repeats the gray channel.

    Refused with an error naming the argument: test_fraction outside (0, 1), a negative or
    non-int seed, size not an int in [8, 256], channels other than the int 1 or 3.
    """
    check_number("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True,
                 high_open=True)
    seed = check_number("seed", seed, low=0, integer=True)
    # at most 256 px: 1,797 digits x 256^2 x 4 B is 470 MB per channel; beyond it only memory grows
    size = check_number("size", size, low=8, high=MAX_DIGITS_SIZE, integer=True)
    check_choice("channels", channels, (1, 3))
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        images = interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = images.clamp(0.0, 1.0)
    images = images.expand(-1, channels, -1, -1).contiguous()
    labels = torch.tensor(raw.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
    )


def colored_digits(test_fraction: float = 0.2, seed: int = 0,
                   size: int = 16) -> tuple[TensorDataset, TensorDataset]:
    """The digits as 3-channel images with natural-image intensities (SVHN-like), in [0, 1].

    Each image gets a random background colour in [0.05, 0.45] and stroke colour in
    [0.55, 0.95] per channel, plus a smooth random shading of +-0.05, so that its pixels are
    mid-tones as in natural images, not the 0/1 strokes of `digits` (scaling pixel values by
    2-12 then washes a clean image out, as it does a CIFAR image: what SPC-style backdoor scores
    rely on).
    The colours are drawn from `seed`, the split is that of `digits(test_fraction, seed)`.
    """
    train, test = digits(test_fraction, seed, size, channels=1)
    gen = torch.Generator().manual_seed(seed + 7919)
    out = []
    for part in (train, test):
        shape, labels = part.tensors
        n = len(labels)
        background = 0.05 + 0.4 * torch.rand(n, 3, 1, 1, generator=gen)
        stroke = 0.55 + 0.4 * torch.rand(n, 3, 1, 1, generator=gen)
        shading = interpolate(torch.rand(n, 1, 3, 3, generator=gen) * 0.1 - 0.05,
                              size=(size, size), mode="bilinear", align_corners=True)
        images = background + (stroke - background) * shape + shading
        out.append(TensorDataset(images.clamp(0.0, 1.0), labels))
    return out[0], out[1]
