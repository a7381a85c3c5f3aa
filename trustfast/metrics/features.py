"""Feature extractors for Fréchet distances, and per-group distances.

A FeatureExtractor is any callable `extractor(images) -> (N, d)` on float images (N, 3, H, W) in
[0, 1] with a `name` attribute; distances computed with it are reported as `FD_<name>`, and as
"FID" only for pytorch-fid's Inception weights (`inception_extractor`, name "inception";
`distance_name`). Two come with trustfast:

- `inception_extractor(weights_path)`: pytorch-fid's FID InceptionV3, pool3 (2048-d), from the
  weights file the user gives (nothing is downloaded);
- `train_feature_extractor(images, labels)`: for offline runs, a small CNN trained with
  cross-entropy on the given labels; its features are the penultimate layer (the global average
  pool of the last convolution, like Inception's pool3), name "cnn". Its distances are FD_cnn:
  comparable between runs that use the same trained extractor, not with published FIDs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from trustfast.checks import check_images, check_number, check_tensor, describe, shown
from trustfast.metrics.frechet import frechet_distance_from_features
from trustfast.metrics.inception import FIDInceptionV3, inception_extractor
from trustfast.utils import eval_mode, progress_kwargs

__all__ = ["CNNFeatureExtractor", "FIDInceptionV3", "FeatureExtractor", "distance_name",
           "extract_features", "frechet_by_group", "inception_extractor",
           "train_feature_extractor"]


@runtime_checkable
class FeatureExtractor(Protocol):
    """images (N, 3, H, W) float in [0, 1] -> features (N, d); `name` says what it is."""

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def distance_name(extractor: Any) -> str:
    """The result key of a Fréchet distance computed with `extractor` (or an extractor name):
    "FID" for pytorch-fid's Inception ("inception"), else "FD_<name>"."""
    name = extractor if isinstance(extractor, str) else getattr(extractor, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"extractor must be a FeatureExtractor (with a str `name`) or a name, "
                        f"got {shown(extractor)}")
    return "FID" if name == "inception" else f"FD_{name}"


def _check_extractor(extractor: Any) -> None:
    if not callable(extractor) or not isinstance(getattr(extractor, "name", None), str):
        raise TypeError(f"extractor must be a FeatureExtractor (a callable with a str `name`), "
                        f"got {shown(extractor)}")


def _module_device(module: Any, default: torch.device) -> torch.device:
    if isinstance(module, nn.Module):
        for tensor in module.parameters():
            return tensor.device
        for tensor in module.buffers():
            return tensor.device
    return default


def extract_features(extractor: FeatureExtractor, images: torch.Tensor,
                     batch_size: int = 256) -> torch.Tensor:
    """`extractor`'s features of `images` as a float64 (N, d) tensor.

    images: (N, 3, H, W) float in [0, 1]. Batches of `batch_size` go to the extractor's device
    (that of its first parameter; the images' device for a parameterless callable) and run
    under no_grad, an nn.Module in eval mode (each submodule's mode is restored afterwards). The
    features stay on that device.
    """
    _check_extractor(extractor)
    images = check_images("images", images, channels=3)
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    if images.shape[0] == 0:
        raise ValueError(f"images must hold at least one image, got {describe(images)}")
    device = _module_device(extractor, images.device)
    chunks = []
    context = eval_mode(extractor) if isinstance(extractor, nn.Module) else contextlib.nullcontext()
    with context, torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device)
            out = extractor(batch)
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or \
                    out.shape[0] != batch.shape[0]:
                got = describe(out) if isinstance(out, torch.Tensor) else shown(out)
                raise ValueError(f"extractor must return (batch, d) features, got {got} for a "
                                 f"batch of {batch.shape[0]}")
            chunks.append(out.to(torch.float64))
    features = torch.cat(chunks)
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"extractor {extractor.name!r} returned NaN/Inf features")
    return features


class CNNFeatureExtractor(nn.Module):
    """A small classifier CNN whose forward returns its penultimate features.

    conv3x3(3 -> width) -> BN -> ReLU -> max-pool 2 -> conv3x3(width -> 2 width) -> BN -> ReLU
    -> max-pool 2 -> conv3x3(2 width -> feature_dim) -> BN -> ReLU -> global average pool:
    (N, feature_dim) features; `logits` adds the linear head (num_classes). Any input size of at
    least 4 x 4 (16, 32, 64 px); inputs in [0, 1] are mapped to [-1, 1].
    """

    name = "cnn"

    def __init__(self, num_classes: int, feature_dim: int = 64, width: int = 16) -> None:
        super().__init__()
        self.num_classes, self.feature_dim, self.width = num_classes, feature_dim, width

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, width), nn.MaxPool2d(2), *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, feature_dim), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(2 * images - 1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(images))


def train_feature_extractor(images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
                            epochs: int = 10, feature_dim: int = 64, width: int = 16,
                            batch_size: int = 64, lr: float = 3e-3,
                            num_classes: int | None = None,
                            device: str | torch.device | None = None,
                            progress: bool = False) -> CNNFeatureExtractor:
    """A `CNNFeatureExtractor` (name "cnn") trained on (images, labels) with cross-entropy.

    Adam (lr, no weight decay) over `epochs` passes of mini-batches shuffled by `seed`;
    the weights are initialised from `seed` too (the global RNG is left untouched), so the same
    seed gives the same extractor on the CPU. A last batch of one image is dropped (BatchNorm
    needs two); after training the BatchNorm statistics are re-estimated over all the images
    with the final weights, so eval-mode features do not lag behind a short training.
    images: (N, 3, H, W) in [0, 1], H, W >= 4; labels: (N,) int64 in [0, num_classes)
    (num_classes defaults to labels.max() + 1). Returns the model in eval mode
    with gradients off on `device` (default: the images' device), with `losses` (mean loss per
    epoch) and `train_accuracy` (accuracy on the training images after training).
    """
    images = check_images("images", images, channels=3)
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"images must hold at least 2 images, got {describe(images)}")
    if min(images.shape[-2:]) < 4:
        raise ValueError(f"images must be at least 4 x 4 pixels, got {describe(images)}")
    labels = check_tensor("labels", labels, dtypes=(torch.int64, torch.int32), shape=(n,))
    seed = check_number("seed", seed, low=0, integer=True)
    epochs = check_number("epochs", epochs, low=1, integer=True)
    feature_dim = check_number("feature_dim", feature_dim, low=1, integer=True)
    width = check_number("width", width, low=1, integer=True)
    batch_size = check_number("batch_size", batch_size, low=2, integer=True)
    lr = check_number("lr", lr, low=0, low_open=True)
    low, high = int(labels.min()), int(labels.max())
    if num_classes is None:
        num_classes = high + 1
    num_classes = check_number("num_classes", num_classes, low=1, integer=True)
    if low < 0 or high >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] (num_classes="
                         f"{num_classes}), got values in [{low}, {high}]")
    device = torch.device(device) if device is not None else images.device

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CNNFeatureExtractor(num_classes, feature_dim, width)
    model = model.to(device)
    labels = labels.to(torch.int64)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    from tqdm.auto import tqdm

    model.train()
    for _ in tqdm(range(epochs), desc="feature extractor", leave=False,
                  **progress_kwargs(progress)):
        order = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if idx.numel() < 2:
                continue
            x, y = images[idx].to(device), labels[idx].to(device)
            loss = F.cross_entropy(model.logits(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
            seen += idx.numel()
        losses.append(total / seen)
    _recalibrate_batchnorm(model, images, device)
    model.eval().requires_grad_(False)
    correct = 0
    with torch.no_grad():
        for start in range(0, n, 256):
            x = images[start:start + 256].to(device)
            y = labels[start:start + 256].to(device)
            correct += int((model.logits(x).argmax(1) == y).sum())
    model.losses = losses
    model.train_accuracy = correct / n
    return model


def _recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, device: torch.device,
                           batch_size: int = 256) -> None:
    """BatchNorm running statistics re-estimated as exact averages over the training images
    with the final weights: the running averages of a short training lag behind the weights
    (momentum 0.1 over a few dozen steps), and eval-mode features would inherit the lag."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            model(images[start:start + batch_size].to(device))
    for m in norms:
        m.momentum = 0.1


def _check_groups(name: str, groups: Any, n: int, features_name: str) -> torch.Tensor:
    groups = check_tensor(name, groups, dtypes=(torch.int64, torch.int32, torch.int16,
                                                torch.int8, torch.uint8), ndim=1)
    if groups.shape[0] != n:
        raise ValueError(f"{name} must have one entry per row of {features_name} ({n}), got "
                         f"{describe(groups)}")
    return groups.to(torch.int64)


def frechet_by_group(real_features: torch.Tensor, real_groups: torch.Tensor,
                     fake_features: torch.Tensor, fake_groups: torch.Tensor, *,
                     groups: Sequence[int] | None = None) -> dict[int, float]:
    """{group: Fréchet distance between the real and the generated features of that group}.

    Each distance is `frechet_distance_from_features` on the rows of the group (the exact
    low-rank form when a group has fewer samples than dimensions). groups: the groups to report,
    default every group in `real_groups`, sorted; each needs at least 2 real and 2 generated
    samples (else a ValueError naming the group and the counts).
    """
    for name, f in (("real_features", real_features), ("fake_features", fake_features)):
        check_tensor(name, f, dtypes="floating", ndim=2)
    real_groups = _check_groups("real_groups", real_groups, real_features.shape[0],
                                "real_features")
    fake_groups = _check_groups("fake_groups", fake_groups, fake_features.shape[0],
                                "fake_features")
    if groups is None:
        wanted = sorted(int(g) for g in torch.unique(real_groups))
    else:
        if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
            raise TypeError(f"groups must be a sequence of ints, got {shown(groups)}")
        wanted = [int(check_number("groups", g, integer=True)) for g in groups]
    out: dict[int, float] = {}
    for g in wanted:
        real_rows = real_groups.to(real_features.device) == g
        fake_rows = fake_groups.to(fake_features.device) == g
        n_real, n_fake = int(real_rows.sum()), int(fake_rows.sum())
        if n_real < 2 or n_fake < 2:
            raise ValueError(f"group {g} needs at least 2 real and 2 generated samples for a "
                             f"Fréchet distance, got {n_real} real and {n_fake} generated")
        out[g] = frechet_distance_from_features(real_features[real_rows],
                                                fake_features[fake_rows])
    if not out:
        raise ValueError("groups must name at least one group")
    return out
