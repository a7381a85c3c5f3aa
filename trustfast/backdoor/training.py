"""Training a (poisoned) classifier and measuring clean accuracy and attack success rate."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from trustfast.backdoor.poison import Trigger, triggered_test_set
from trustfast.data import dataset_tensors
from trustfast.utils import eval_mode


def train_classifier(model: nn.Module, data: Dataset, epochs: int = 30, lr: float = 0.05,
                     batch_size: int = 64, seed: int = 0, desc: str = "train") -> nn.Module:
    """SGD (momentum 0.9, weight decay 5e-4, cosine learning rate) with cross-entropy; seeded.
    Returns the model in eval mode."""
    from trustfast.models.fit import SGDConfig, fit_classifier

    torch.manual_seed(seed)
    fit_classifier(model, data, SGDConfig(epochs=epochs, lr=lr, batch_size=batch_size),
                   seed=seed, schedule="cosine", desc=desc)
    return model.eval()


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


def backdoor_report(model: nn.Module, test: Dataset, attack: Trigger, target: int) -> dict:
    """{"clean_acc": % on the clean test set, "ASR": % of triggered non-target test images
    classified as `target`}."""
    x, y = dataset_tensors(test)
    tx, ty = triggered_test_set(test, attack, target)
    return {"clean_acc": accuracy(model, x, y), "ASR": accuracy(model, tx, ty)}
