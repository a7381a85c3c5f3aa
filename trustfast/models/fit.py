"""Supervised training of an image classifier: the one SGD loop the experiments share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from trustfast.checks import FLOATING, check_tensor
from trustfast.config import Config

SCHEDULES = ("constant", "cosine")


@dataclass
class SGDConfig(Config):
    """SGD with momentum over shuffled mini-batches (the defaults train a digits CNN)."""

    epochs: int = 8
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64

    def check(self) -> None:
        self.at_least("epochs", 1)
        self.at_least("lr", 0, strict=True)
        self.within("momentum", 0, 1, high_open=True)
        self.at_least("weight_decay", 0)
        self.at_least("batch_size", 1)


class _Indexed(Dataset):
    """`data`'s items with their position: (item, index)."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.data[index], index


def fit_classifier(model: nn.Module, data: Dataset, sgd: SGDConfig | None = None, *,
                   seed: int = 0, epochs: int | None = None, l1: float = 0.0,
                   masks: dict | None = None, schedule: str = "constant",
                   on_epoch: Callable[[int], None] | None = None,
                   desc: str = "train",
                   sample_weights: torch.Tensor | None = None) -> list[float]:
    """Cross-entropy training with `trustfast.optim.MaskedSGD` and the settings of `sgd`
    (momentum, weight decay; `l1` penalty; pruned weights of `masks` stay exactly 0; `epochs`
    overrides sgd.epochs), over mini-batches shuffled by `seed`, the learning rate constant or
    cosine-annealed per step to 0. Items are (image, label, ...extra ignored, e.g. a group) or
    {"image", "label"}; batches follow the model's device. Returns the mean training loss of
    each epoch; `on_epoch(epoch)` runs after each.

    `sample_weights`: None (every sample counts alike: the mean cross-entropy of the batch) or a
    (len(data),) float tensor of non-negative per-sample weights w, indexed by dataset position
    and tracked through the shuffled batches; the loss of a batch B is then the weighted mean
    sum_{i in B} w_i ce_i / sum_{i in B} w_i, so a sample of weight 0 is as if left out, and a
    batch whose weights sum to 0 takes no optimizer step (the schedule still advances: it
    counts loader steps). The returned epoch loss is the weighted mean over the epoch. The
    batches are those of the unweighted run with the same seed (the same shuffled order).
    """
    from trustfast.optim import MaskedSGD

    sgd = SGDConfig() if sgd is None else sgd
    if not isinstance(sgd, SGDConfig):
        raise TypeError(f"sgd must be an SGDConfig, got {type(sgd).__name__}")
    epochs = sgd.epochs if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if sample_weights is not None:
        sample_weights = check_tensor("sample_weights", sample_weights, dtypes=FLOATING,
                                      shape=(len(data),), finite=True, low=0.0)
        if not bool(sample_weights.sum() > 0):
            raise ValueError("sample_weights must not all be 0 (nothing would be trained)")
        sample_weights = sample_weights.detach().to("cpu", torch.float64)
    first = data[0] if len(data) else None
    if isinstance(first, dict):  # {"image", "label"} items: the data layer's adaptor
        from trustfast.data import as_image_dataset

        data = as_image_dataset(data, "data")
    opt = MaskedSGD(model.parameters(), lr=sgd.lr, momentum=sgd.momentum,
                    weight_decay=sgd.weight_decay, l1=l1, masks=masks,
                    module=model if masks else None)
    # The index wrapper changes what an item is, not the RandomSampler's draws over len(data):
    # the weighted run sees the unweighted run's batches.
    loader = DataLoader(data if sample_weights is None else _Indexed(data),
                        batch_size=sgd.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
             if schedule == "cosine" else None)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    losses = []
    for epoch in tqdm(range(epochs), desc=desc, leave=False):
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        if sample_weights is not None:
            total_w = 0.0
            for item, index in loader:
                x, y = item[0].to(device), item[1].to(device)
                w = sample_weights[index]
                w_sum = float(w.sum())
                if w_sum > 0:
                    opt.zero_grad(set_to_none=True)
                    ce = fn.cross_entropy(model(x), y, reduction="none")
                    w = w.to(device=ce.device, dtype=ce.dtype)
                    loss = (w * ce).sum() / w.sum()
                    loss.backward()
                    opt.step()
                    total += loss.detach().double() * w_sum
                    total_w += w_sum
                if sched is not None:
                    sched.step()
            losses.append(float(total) / total_w if total_w > 0 else 0.0)
        else:
            for batch in loader:
                x, y = batch[0].to(device), batch[1].to(device)
                opt.zero_grad(set_to_none=True)
                loss = fn.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += loss.detach().double() * len(y)
                count += len(y)
            losses.append(float(total) / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return losses
