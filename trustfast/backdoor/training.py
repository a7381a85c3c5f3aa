"""Training a (poisoned) classifier and measuring clean accuracy and attack success rate."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from trustfast.backdoor.poison import Attack, dataset_tensors, triggered_test_set
from trustfast.optim import MaskedSGD
from trustfast.utils import eval_mode


def train_classifier(model: nn.Module, data: Dataset, epochs: int = 30, lr: float = 0.05,
                     batch_size: int = 64, seed: int = 0, desc: str = "train") -> nn.Module:
    """SGD (momentum 0.9, weight decay 5e-4, cosine learning rate) with cross-entropy; seeded."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    torch.manual_seed(seed)
    opt = MaskedSGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    device = next(model.parameters()).device
    model.train()
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            fn.cross_entropy(model(x.to(device)), y.to(device)).backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 512) -> float:
    """Top-1 accuracy in percent."""
    device = next(model.parameters()).device
    hits = 0
    with eval_mode(model):
        for i in range(0, len(labels), batch_size):
            pred = model(images[i:i + batch_size].to(device)).argmax(1).cpu()
            hits += int((pred == labels[i:i + batch_size]).sum())
    return 100.0 * hits / len(labels)


def backdoor_report(model: nn.Module, test: Dataset, attack: Attack, target: int) -> dict:
    """{"clean_acc": % on the clean test set, "ASR": % of triggered non-target test images
    classified as `target`}."""
    x, y = dataset_tensors(test)
    tx, ty = triggered_test_set(test, attack, target)
    return {"clean_acc": accuracy(model, x, y), "ASR": accuracy(model, tx, ty)}
