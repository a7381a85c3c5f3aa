"""Train an IResNet face embedder with an ArcFace or CosFace head (insightface's recipe, small).

`train_face_model(images, labels, FaceTrainConfig(...))` runs SGD (momentum, weight decay; or
AdamW) with a warmup and a polynomial / cosine / constant learning-rate schedule, gradient-norm
clipping, random horizontal flips, and a margin head over the identities. With `checkpoint_dir`
it saves model, head and optimizer atomically after every epoch; `resume=True` continues from
the last one and gives the same weights as an uninterrupted run (the data order, flips and
dropout of each epoch come from generators seeded by (seed, epoch), not from global state).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as fn
from tqdm.auto import tqdm

from trustfast._meta import TrustfastWarning
from trustfast.checkpoint import (
    load_checkpoint,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    save_checkpoint,
)
from trustfast.checks import FLOATING, IMAGE_HINT, check_images, check_tensor
from trustfast.config import Config
from trustfast.faces.models import HEADS, IResNet, iresnet
from trustfast.utils import progress_kwargs

_CHECKPOINT = "face_model"


@dataclass
class FaceTrainConfig(Config):
    """One training run; defaults follow insightface's arcface_torch where they apply."""

    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw"
    lr: float = 0.1  # peak learning rate (after warmup)
    momentum: float = 0.9  # SGD momentum (ignored by AdamW)
    weight_decay: float = 5e-4
    schedule: str = "poly"  # "poly" (lr * (1 - t)^2, insightface), "cosine" or "constant"
    warmup_epochs: float = 0.0  # linear warmup from 0, in (possibly fractional) epochs
    head: str = "arcface"  # "arcface" or "cosface"
    s: float = 64.0  # logit scale
    m: float | None = None  # margin; None: the head's paper default (0.5 ArcFace, 0.35 CosFace)
    easy_margin: bool = False  # ArcFace only: margin only where cos theta > 0
    flip: bool = True  # random horizontal flips of training images
    grad_clip: float | None = 5.0  # max global gradient norm (insightface: 5); None: no clipping
    seed: int = 0

    def check(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("poly", "cosine", "constant"):
            raise ValueError(f"schedule must be 'poly', 'cosine' or 'constant', "
                             f"got {self.schedule!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)}, got {self.head!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (self.s > 0 and math.isfinite(self.s)):
            raise ValueError(f"s (the logit scale) must be a finite number > 0, got {self.s!r}")
        if self.m is not None and not (0 <= self.m < math.pi / 2):
            raise ValueError(f"m (the margin) must be None or in [0, pi/2), got {self.m!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.easy_margin and self.head != "arcface":
            raise ValueError("easy_margin applies to head='arcface' only")

    def build_head(self, embedding_dim: int, num_classes: int) -> nn.Module:
        kwargs: dict[str, Any] = {"s": self.s}
        if self.m is not None:
            kwargs["m"] = self.m
        if self.head == "arcface":
            kwargs["easy_margin"] = self.easy_margin
        return HEADS[self.head](embedding_dim, num_classes, **kwargs)


def _lr_at(cfg: FaceTrainConfig, step: int, total: int, per_epoch: int) -> float:
    warmup = int(round(cfg.warmup_epochs * per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    if cfg.schedule == "poly":
        return cfg.lr * (1.0 - t) ** 2
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    return cfg.lr


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_data(images, labels, input_size: int) -> None:
    """images: float [N, C, H, W], finite, in [0, 1], at the model's size; labels: int [N]."""
    check_tensor("images", images, dtypes=FLOATING, ndim=4, hint=IMAGE_HINT)
    if images.shape[-2:] != (input_size, input_size):
        raise ValueError(f"images must be {input_size}x{input_size} (the model's input_size), "
                         f"got {tuple(images.shape[-2:])}")
    check_tensor("labels", labels, dtypes=_INT_DTYPES, ndim=1, hint="integer identity ids")
    if len(labels) != len(images):
        raise ValueError(f"labels must have one entry per image: {len(labels)} labels, "
                         f"{len(images)} images")
    if len(images) < 2:
        raise ValueError(f"images must hold at least 2 images (batch norm), got {len(images)}")
    check_images("images", images)


def train_face_model(images: torch.Tensor, labels: torch.Tensor, cfg: FaceTrainConfig,
                     model_cfg: dict | None = None, checkpoint_dir: str | None = None,
                     resume: bool = False, device: str | torch.device | None = None,
                     progress: bool = True) -> tuple[IResNet, list[dict]]:
    """Train `iresnet(**model_cfg)` (None: the tiny test model at the images' size) on
    `images` [N, 3, H, W] in [0, 1] with identity `labels` [N] (any integer ids: they are mapped
    to classes 0..C-1 in sorted order) by minimizing cross-entropy over the margin head's logits.

    Returns the model in eval mode and one dict per epoch (mean `loss`, train `accuracy` of the
    margin-free logits, last `lr`, `skipped` steps with a non-finite loss or gradient: those
    are not applied (weights, optimizer state and batch-norm statistics stay as they were) and
    raise a TrustfastWarning). `device` defaults to that of `images`; batches
    are moved there one at a time.
    """
    if not isinstance(cfg, FaceTrainConfig):
        raise TypeError(f"cfg must be a FaceTrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    check_tensor("images", images, dtypes=FLOATING, ndim=4, hint=IMAGE_HINT)
    if model_cfg is None:
        model_cfg = {"depth": "tiny", "input_size": images.shape[-1]}
    if not isinstance(model_cfg, dict):
        raise ValueError(f"model_cfg must be a dict of iresnet() arguments or None, "
                         f"got {type(model_cfg).__name__}")
    if resume and not checkpoint_dir:
        raise ValueError("resume=True needs checkpoint_dir")
    device = torch.device(device) if device is not None else images.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = iresnet(**model_cfg)
        _check_data(images, labels, model.input_size)
        classes, targets = torch.unique(labels.cpu(), return_inverse=True)
        head = cfg.build_head(model.embedding_dim, len(classes))
    model.to(device)
    head.to(device)
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(images)
    batch = min(cfg.batch_size, n)
    per_epoch = n // batch  # drop the last partial batch (insightface's drop_last)
    total = per_epoch * cfg.epochs
    try:  # as the checkpoint will hold it (tuples become lists), to compare on resume
        run = json.loads(json.dumps({"config": asdict(cfg), "model_cfg": model_cfg,
                                     "classes": classes.tolist(), "num_images": n}))
    except TypeError as err:
        raise ValueError(f"model_cfg must be JSON-serializable: {err}") from None
    start, history = 0, []
    if resume:
        done = load_checkpoint(checkpoint_dir, _CHECKPOINT)
        if done is not None:
            tensors, state = done
            for key, value in run.items():
                if state[key] != value:
                    raise ValueError(f"resume: {checkpoint_dir} holds a run with another "
                                     f"{key} ({state[key]!r:.200} vs {value!r:.200})")
            _load(tensors, state, model, head, opt)
            start, history = state["epoch"], state["history"]
    # dropout draws from the global generator of the device it runs on: fork and seed that one
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    model.train()
    head.train()
    for epoch in tqdm(range(start, cfg.epochs), desc=f"face {cfg.head}", leave=False,
                      **progress_kwargs(progress)):
        g = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        order = torch.randperm(n, generator=g)
        flips = torch.rand(n, generator=g) < 0.5 if cfg.flip else None
        loss_sum, correct, seen, skipped, lr = 0.0, 0, 0, 0, cfg.lr
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(_epoch_seed(cfg.seed, epoch) + 1)  # dropout
            for i in range(per_epoch):
                idx = order[i * batch:(i + 1) * batch]
                x = images[idx].to(device)
                if flips is not None:
                    f = flips[idx].to(device).view(-1, 1, 1, 1)
                    x = torch.where(f, x.flip(-1), x)
                y = targets[idx].to(device)
                lr = _lr_at(cfg, epoch * per_epoch + i, total, per_epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                # a skipped step must not leave NaN in the batch-norm running statistics either
                buffers = [b.clone() for b in model.buffers()]
                emb = model(x)
                logits = head(emb, y)
                loss = fn.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                norm = nn.utils.clip_grad_norm_(
                    params, cfg.grad_clip if cfg.grad_clip is not None else math.inf)
                if not (torch.isfinite(loss) and torch.isfinite(norm)):
                    skipped += 1
                    with torch.no_grad():
                        for b, saved in zip(model.buffers(), buffers):
                            b.copy_(saved)
                    warnings.warn(f"face training: non-finite loss or gradient at epoch "
                                  f"{epoch + 1} step {i + 1}; step skipped", TrustfastWarning,
                                  stacklevel=2)
                    continue
                opt.step()
                loss_sum += float(loss.detach()) * len(y)
                with torch.no_grad():  # accuracy of the margin-free logits
                    correct += int((head.cosine(emb.detach()).argmax(1) == y).sum())
                seen += len(y)
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                        "accuracy": correct / max(seen, 1), "lr": lr, "skipped": skipped})
        if checkpoint_dir:
            _save(checkpoint_dir, model, head, opt, run | {"epoch": epoch + 1,
                                                         "history": history})
    model.eval()
    head.eval()
    return model, history


def load_face_model(checkpoint_dir: str) -> tuple[IResNet, nn.Module, dict]:
    """(model, head, state) from the last checkpoint `train_face_model` wrote, in eval mode."""
    done = load_checkpoint(checkpoint_dir, _CHECKPOINT)
    if done is None:
        raise ValueError(f"checkpoint_dir {checkpoint_dir!r} holds no face-model checkpoint")
    tensors, state = done
    cfg = FaceTrainConfig(**state["config"])
    model = iresnet(**state["model_cfg"])
    head = cfg.build_head(model.embedding_dim, len(state["classes"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    return model.eval(), head.eval(), state


def _save(folder: str, model: nn.Module, head: nn.Module, opt: torch.optim.Optimizer,
          state: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"head.{k}": v for k, v in head.state_dict().items()}
    save_checkpoint(folder, _CHECKPOINT, tensors,
                    state | {"optimizer": optimizer_to_checkpoint(opt, tensors)})


def _load(tensors: dict, state: dict, model: nn.Module, head: nn.Module,
          opt: torch.optim.Optimizer) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    optimizer_from_checkpoint(opt, state["optimizer"], tensors)
