"""Robust accuracy over a DataLoader: accuracy under PGD at several budgets, in one pass."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from trustfast.attacks.pgd import PGD, budget_list
from trustfast.checks import check_choice, check_loader, check_number, shown
from trustfast.ops.pgd_step import NORMS
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
    batch of `loader` (which yields (images in [0, 1], labels)).

    Refused (TypeError / ValueError naming the argument): a Dataset instead of a DataLoader (wrap
    it: DataLoader(data, batch_size=128)); eps empty, not numbers, or above 1 for L-inf (8/255,
    not 8); alpha_ratio <= 0 or giving alpha = alpha_ratio * eps above 1; steps < 1; an unknown
    norm; batches that are not (images, labels) tensors, or images outside [0, 1] / NaN.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {shown(model)}")
    loader = check_loader("loader", loader)
    if not isinstance(eps, (list, tuple)):
        raise TypeError(f"eps must be a list of budgets (e.g. [0, 4/255, 8/255]), got "
                        f"{shown(eps)}")
    if not eps:
        raise ValueError("eps must list at least one budget")
    check_choice("norm", norm, NORMS)
    eps = budget_list("eps", eps, norm)
    alpha_ratio = float(check_number("alpha_ratio", alpha_ratio, low=0.0, low_open=True))
    if norm == "linf" and alpha_ratio * max(eps) > 1:
        raise ValueError(f"alpha_ratio * eps must be <= 1 (alpha is in the [0, 1] image scale), "
                         f"got alpha_ratio {alpha_ratio} * eps {max(eps)}")
    steps = check_number("steps", steps, low=1, integer=True)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {shown(progress)}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {shown(device)}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must name a torch device ('cpu', 'cuda:0'), got "
                         f"{device!r}") from None
    atk = PGD(model, eps=list(eps), alpha=[alpha_ratio * e for e in eps], steps=steps,
              norm=norm, restarts=restarts, seed=seed, **pgd_kwargs)
    correct = torch.zeros(len(eps), dtype=torch.long)
    total = 0
    for i, batch in enumerate(tqdm(loader, desc="robust accuracy", **progress_kwargs(progress),
                                   leave=False)):
        if not isinstance(batch, (list, tuple)) or len(batch) != 2 or \
                not all(isinstance(t, torch.Tensor) for t in batch):
            raise TypeError(f"loader must yield (images, labels) pairs of tensors, got "
                            f"{shown(batch)} at batch {i}")
        images, labels = batch[0].to(device), batch[1].to(device)
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
