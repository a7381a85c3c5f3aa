"""Training a (poisoned) classifier and measuring clean accuracy and attack success rate."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from trustfast.backdoor.poison import _INT_DTYPES, Trigger, triggered_test_set
from trustfast.backdoor.scores import check_count, model_device
from trustfast.checks import check_images, check_tensor, shown
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
    """Top-1 accuracy in percent: 100 mean_i 1[argmax f(x_i) = y_i].

    images: float (N, C, H, W) in [0, 1]; labels: (N,) integer class indices (a float or
    mismatched-length tensor is refused, never compared after a cast or broadcast).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {shown(model)}")
    check_images("images", images)
    check_tensor("labels", labels, dtypes=_INT_DTYPES, shape=(len(images),), nonempty=True,
                 low=0, hint="integer class indices, one per image")
    batch_size = check_count("batch_size", batch_size)
    device = model_device(model, images.device)
    hits = 0
    with eval_mode(model):
        for i in range(0, len(labels), batch_size):
            pred = model(images[i:i + batch_size].to(device)).argmax(1).cpu()
            hits += int((pred == labels[i:i + batch_size].cpu()).sum())
    return 100.0 * hits / len(labels)


def backdoor_report(model: nn.Module, test: Dataset, attack: Trigger, target: int) -> dict:
    """{"clean_acc": % on the clean test set, "ASR": % of triggered non-target test images
    classified as `target`}."""
    x, y = dataset_tensors(test)
    tx, ty = triggered_test_set(test, attack, target)
    return {"clean_acc": accuracy(model, x, y), "ASR": accuracy(model, tx, ty)}
