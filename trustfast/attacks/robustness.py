"""Robust accuracy over a DataLoader: accuracy under PGD at several budgets, in one pass."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from trustfast.attacks.pgd import PGD
from trustfast.utils import eval_mode, progress_kwargs


@dataclass
class RobustAccuracy:
    """Accuracy (%) under attack per eps (eps = 0 is clean accuracy), over `n` examples."""

    eps: list[float]
    accuracy: list[float]
    n: int
    attack: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        rows = [{"eps": e, "robust_acc": a} for e, a in zip(self.eps, self.accuracy)]
        with open(path, "w") as f:
            json.dump({"config": {"n": self.n, **self.attack}, "rows": rows}, f, indent=1)


def _predict_eval_mode(atk: PGD, images: torch.Tensor) -> torch.Tensor:
    """Class predictions with dropout off and BatchNorm running statistics untouched."""
    with eval_mode(atk.model), torch.no_grad():
        return atk.logits(images).argmax(1)


def robust_accuracy(model: nn.Module, loader: Iterable, eps: list[float], *, steps: int = 10,
                    alpha_ratio: float = 0.25, norm: str = "linf", restarts: int = 1,
                    device: str | torch.device | None = None, seed: int = 0,
                    progress: bool = True, **pgd_kwargs) -> RobustAccuracy:
    """Accuracy of `model` under PGD at every eps in `eps` (alpha = alpha_ratio * eps; torch-
    attacks' 2/255 for 8/255 is alpha_ratio 0.25), all budgets attacked in one batched call per
    batch of `loader` (which yields (images in [0, 1], labels))."""
    if not eps:
        raise ValueError("eps must list at least one budget")
    if not alpha_ratio > 0:
        raise ValueError(f"alpha_ratio must be > 0, got {alpha_ratio}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    atk = PGD(model, eps=list(eps), alpha=[alpha_ratio * e for e in eps], steps=steps,
              norm=norm, restarts=restarts, seed=seed, **pgd_kwargs)
    correct = torch.zeros(len(eps), dtype=torch.long)
    total = 0
    for images, labels in tqdm(loader, desc="robust accuracy", **progress_kwargs(progress),
                               leave=False):
        images, labels = images.to(device), labels.to(device)
        adv = atk(images, labels)  # (len(eps), N, ...)
        preds = _predict_eval_mode(atk, adv.flatten(0, 1)).view(len(eps), -1)
        correct += (preds == labels.unsqueeze(0)).sum(1).cpu()
        total += len(labels)
    if total == 0:
        raise ValueError("loader yielded no examples")
    config = {"steps": steps, "alpha_ratio": alpha_ratio, "norm": norm, "restarts": restarts,
              "seed": seed}
    return RobustAccuracy(list(map(float, eps)), (100.0 * correct / total).tolist(), total,
                          config)
