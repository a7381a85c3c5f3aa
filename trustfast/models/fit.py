"""Supervised training of an image classifier: the one SGD loop the experiments share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

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


def fit_classifier(model: nn.Module, data: Dataset, sgd: SGDConfig | None = None, *,
                   seed: int = 0, epochs: int | None = None, l1: float = 0.0,
                   masks: dict | None = None, schedule: str = "constant",
                   on_epoch: Callable[[int], None] | None = None,
                   desc: str = "train") -> list[float]:
    """Cross-entropy training with `trustfast.optim.MaskedSGD` and the settings of `sgd`
    (momentum, weight decay; `l1` penalty; pruned weights of `masks` stay exactly 0; `epochs`
    overrides sgd.epochs), over mini-batches shuffled by `seed`, the learning rate constant or
    cosine-annealed per step to 0. Items are (image, label) or {"image", "label"}; batches
    follow the model's device. Returns the mean training loss of each epoch; `on_epoch(epoch)`
    runs after each."""
    from trustfast.optim import MaskedSGD

    sgd = SGDConfig() if sgd is None else sgd
    if not isinstance(sgd, SGDConfig):
        raise TypeError(f"sgd must be an SGDConfig, got {type(sgd).__name__}")
    epochs = sgd.epochs if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    first = data[0] if len(data) else None
    if isinstance(first, dict):  # {"image", "label"} items: the data layer's adaptor
        from trustfast.data import as_image_dataset

        data = as_image_dataset(data, "data")
    opt = MaskedSGD(model.parameters(), lr=sgd.lr, momentum=sgd.momentum,
                    weight_decay=sgd.weight_decay, l1=l1, masks=masks,
                    module=model if masks else None)
    loader = DataLoader(data, batch_size=sgd.batch_size, shuffle=True,
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
        for x, y in loader:
            x, y = x.to(device), y.to(device)
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
