"""Per-sample backdoor scores (higher = more likely poisoned), batched over scales.

  - SPC (Guo et al., SCALE-UP, ICLR 2023): SPC(x) = mean_{s in S} 1[f(clip(s x)) = f(x)],
    S = {2, ..., 12}. A trigger survives pixel scaling: poisoned samples keep their prediction.
  - MSPC (Pal et al., ICLR 2024): MSPC(x; m, tau) = mean_s (2 1[f(clip(s (x - tau) m)) = f(x)] - 1)
    in [-1, 1], with a mask m shared across the dataset and a shift tau; MSPC(x; 1, 0) = 2 SPC - 1.
  - STRIP (Gao et al., ACSAC 2019): minus the mean entropy of the prediction on x superimposed
    (added, then clipped) with random other images of the same set: a trigger keeps the
    prediction confident whatever it is mixed with.

All scores run every scale (or overlay) of a chunk of images in one forward pass; `*_loop`
twins run one forward per scale and are the peers of the benchmark.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from trustfast._meta import TrustfastWarning
from trustfast.checks import (
    BOOL_OR_FLOAT,
    FLOATING,
    IMAGE_HINT,
    check_images,
    check_number,
    check_tensor,
    describe,
    shown,
)
from trustfast.utils import eval_mode

DEFAULT_SCALES = tuple(range(2, 13))


def _check(model: nn.Module, images: torch.Tensor, scales: Sequence[float],
           validate: bool = True) -> None:
    """The checks shared by every score: an nn.Module, a float NCHW batch in [0, 1] (the range
    only when `validate`), and positive finite scales."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {shown(model)}")
    if validate:
        check_images("images", images)
    else:
        check_tensor("images", images, dtypes=FLOATING, ndim=4, hint=IMAGE_HINT)
    if len(images) == 0:
        raise ValueError(f"images must hold at least one image, got {describe(images)}")
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(f"scales must be a sequence of positive numbers, got {shown(scales)}")
    if len(scales) == 0:
        raise ValueError("scales must be a non-empty list of positive numbers, got []")
    for i, s in enumerate(scales):
        check_number(f"scales[{i}]", s, low=0.0, low_open=True,
                     hint="scales must be a non-empty list of positive numbers")


def model_device(model: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter (or buffer); `fallback` for a model with
    neither (a parameter-free function wrapped in a Module)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(fallback)


def check_mask(mask: torch.Tensor, images: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A mask shared by the whole batch: (H, W), (1 or C, H, W) or (1, 1 or C, H, W), float (or
    bool) with values in [0, 1]; anything else (an (H,) row, a per-sample (N, C, H, W) stack) is
    a ValueError, never broadcast. Returns it as the images' dtype."""
    _, c, h, w = images.shape
    check_tensor(name, mask, dtypes=BOOL_OR_FLOAT, ndim=(2, 3, 4),
                 hint=f"a mask shared by all images: (H, W) = ({h}, {w}), (1 or C, H, W) or "
                      "(1, 1 or C, H, W)")
    lead = tuple(mask.shape[:-2])
    if tuple(mask.shape[-2:]) != (h, w) or any(d != 1 for d in lead[:-1]) \
            or (lead and lead[-1] not in (1, c)):
        raise ValueError(f"{name} must have shape ({h}, {w}), (1 or {c}, {h}, {w}) or "
                         f"(1, 1 or {c}, {h}, {w}) to match images {tuple(images.shape)}, got "
                         f"{describe(mask)} (nothing is broadcast)")
    check_tensor(name, mask, low=0.0, high=1.0)
    return mask.to(images.dtype)


def scale_inputs(x: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor | None = None,
                 tau: float | torch.Tensor = 0.0) -> torch.Tensor:
    """clip(s (x - tau) m, 0, 1) for every scale, stacked scale-major: (S * N, C, H, W)."""
    shifted = x - tau
    if mask is not None:
        shifted = shifted * mask
    scaled = scales.to(x).view(-1, 1, 1, 1, 1) * shifted.unsqueeze(0)
    return scaled.clamp(0, 1).flatten(0, 1)


class CollapsedModelWarning(TrustfastWarning):
    """The model predicts one class for every sample scored: its scores carry no information."""


def warn_if_collapsed(pred: torch.Tensor, where: str, stacklevel: int = 3) -> bool:
    """Warn (CollapsedModelWarning) and return True when every prediction in `pred` (N >= 2)
    is the same class. A model trained on these samples that predicts one class for all of
    them has collapsed: its prediction hardly depends on the input, so (nearly) every sample
    keeps it under scaling, SPC / MSPC flag (nearly) all of them and the scores carry no
    information about which are poisoned."""
    if pred.numel() < 2 or not bool((pred == pred.flatten()[0]).all()):
        return False
    warnings.warn(f"{where}: the model predicts class {int(pred.flatten()[0])} for all "
                  f"{pred.numel()} samples (a collapsed model). Its prediction does not depend "
                  "on the input, so the samples keep it under scaling whether or not they carry "
                  "a trigger: the scores carry no information about which samples are poisoned "
                  "(nearly all are flagged). Check the training run before trusting this split.",
                  CollapsedModelWarning, stacklevel=stacklevel)
    return True


def _warn_if_constant(scores: torch.Tensor, where: str) -> None:
    """STRIP's collapse check: the same score for every sample (a model whose output does not
    depend on its input has the same entropy on every blend)."""
    if scores.numel() < 2 or float(scores.max() - scores.min()) > 1e-6:
        return
    warnings.warn(f"{where}: every one of the {scores.numel()} samples gets the same score "
                  f"{float(scores[0]):.4g}: the model's output does not depend on its input (a "
                  "collapsed model), so the scores carry no information about which samples are "
                  "poisoned.", CollapsedModelWarning, stacklevel=3)


def check_count(name: str, value, low: int = 1) -> int:
    """A count (batch size, steps, overlays, seed): an int >= low. A float is a TypeError even
    when whole (check_number(integer=True) takes 1e300 and a loop over it never ends)."""
    if isinstance(value, float) or (isinstance(value, torch.Tensor) and value.is_floating_point()):
        raise TypeError(f"{name} must be an integer, got {shown(value)}")
    return check_number(name, value, low=low, integer=True)


def _check_batch_size(batch_size) -> int:
    return check_count("batch_size", batch_size)


@torch.no_grad()
def _consistency(model, images, scales, mask, tau, batch_size) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """((N,) share of scales whose prediction equals f(x), (N,) f(x) itself).

    Each forward holds a chunk of images at scale 1 (f(x) itself) and at every scale, about
    `batch_size` inputs in all: on the CPU 256 inputs per forward ran 1.4x faster than 2,816
    (SmallCNN, 16x16, one thread: larger activations fall out of cache and are mmapped afresh);
    on a GPU pass a larger batch_size.
    """
    device = model_device(model, images.device)
    s = torch.tensor([1.0] + [float(v) for v in scales], device=device)
    chunk = max(1, batch_size // len(s))
    out = torch.empty(len(images))
    base = torch.empty(len(images), dtype=torch.long)
    with eval_mode(model):
        for start in range(0, len(images), chunk):
            x = images[start:start + chunk].to(device)
            if mask is None and tau == 0:
                inputs = scale_inputs(x, s)
            else:  # f(x) on the unmasked image, the scales on the masked, shifted one
                inputs = torch.cat([x, scale_inputs(x, s[1:], mask, tau)])
            pred = model(inputs).argmax(1).view(len(s), len(x))
            out[start:start + len(x)] = (pred[1:] == pred[0]).float().mean(0).cpu()
            base[start:start + len(x)] = pred[0].cpu()
    return out, base


def scaled_prediction_consistency(model: nn.Module, images: torch.Tensor,
                                  scales: Sequence[float] = DEFAULT_SCALES,
                                  batch_size: int = 256, validate: bool = True) -> torch.Tensor:
    """SPC score per image in [0, 1] (SCALE-UP); all scales of a chunk of images in one forward
    of about `batch_size` inputs.

    images: float (N, C, H, W) in [0, 1] (a ValueError otherwise: divide uint8 by 255, undo a
    normalization); `validate=False` skips the [0, 1] range check (one read of the images) for
    callers that made the images themselves. A model that predicts one class for every image
    gets a CollapsedModelWarning: its scores are all 1 and mean nothing.
    """
    _check(model, images, scales, validate)
    out, base = _consistency(model, images, scales, None, 0.0, _check_batch_size(batch_size))
    warn_if_collapsed(base, "scaled_prediction_consistency")
    return out


def _mspc(model, images, mask, tau, scales, batch_size) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSPC scores, f(x)) without checks or warnings: identify_mspc's inner call."""
    if mask is not None:
        mask = mask.to(model_device(model, images.device))
    out, base = _consistency(model, images, scales, mask, tau, batch_size)
    return 2 * out - 1, base


def masked_scaled_prediction_consistency(model: nn.Module, images: torch.Tensor,
                                         mask: torch.Tensor | None = None, tau: float = 0.0,
                                         scales: Sequence[float] = DEFAULT_SCALES,
                                         batch_size: int = 256,
                                         validate: bool = True) -> torch.Tensor:
    """MSPC score per image in [-1, 1]; > 0 flags a poisoned sample (the threshold-free rule).

    images: float (N, C, H, W) in [0, 1]; mask: None (m = 1) or one mask for the whole batch,
    (H, W), (1 or C, H, W) or (1, 1 or C, H, W) in [0, 1] (any other shape is a ValueError, never
    broadcast); tau: the shift, a number in [0, 1). `validate=False` skips the value checks
    (image and mask ranges). A collapsed model (one class for every image) gets a
    CollapsedModelWarning: all scores are 1 and mean nothing.
    """
    _check(model, images, scales, validate)
    tau = check_number("tau", tau, low=0.0, high=1.0, high_open=True)
    if mask is not None:
        if validate:
            mask = check_mask(mask, images)
        else:
            mask = mask.to(images.dtype)
    out, base = _mspc(model, images, mask, tau, scales, _check_batch_size(batch_size))
    warn_if_collapsed(base, "masked_scaled_prediction_consistency")
    return out


@torch.no_grad()
def scaled_prediction_consistency_loop(model: nn.Module, images: torch.Tensor,
                                       scales: Sequence[float] = DEFAULT_SCALES,
                                       batch_size: int = 256) -> torch.Tensor:
    """SPC computed the straightforward way, one forward per scale: the benchmark's peer
    (the same checks and collapse warning as `scaled_prediction_consistency`)."""
    _check(model, images, scales)
    batch_size = _check_batch_size(batch_size)
    device = model_device(model, images.device)
    out = torch.empty(len(images))
    bases = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            base = model(x).argmax(1)
            hits = torch.zeros(len(x), device=device)
            for s in scales:
                hits += (model((s * x).clamp(0, 1)).argmax(1) == base).float()
            out[start:start + len(x)] = (hits / len(scales)).cpu()
            bases.append(base.cpu())
    warn_if_collapsed(torch.cat(bases), "scaled_prediction_consistency_loop")
    return out


@torch.no_grad()
def strip_scores(model: nn.Module, images: torch.Tensor, overlays: int = 100,
                 pool: torch.Tensor | None = None, seed: int = 0,
                 batch_size: int = 64) -> torch.Tensor:
    """STRIP suspicion score per image: -(mean entropy of softmax(f(clip(x + x_j)))) over
    `overlays` random images x_j from `pool` (default: `images` itself). N = 100 as the paper.

    images and pool: float NCHW in [0, 1] with the same (C, H, W); when every sample gets the
    same score (a model whose output ignores its input) a CollapsedModelWarning says so.
    """
    _check(model, images, [1.0])
    overlays = check_count("overlays", overlays)
    seed = check_count("seed", seed, low=0)
    batch_size = _check_batch_size(batch_size)
    if pool is None:
        pool = images
    else:
        check_images("pool", pool)
        if pool.shape[1:] != images.shape[1:] or len(pool) == 0:
            raise ValueError(f"pool must hold images of the shape of images' "
                             f"{tuple(images.shape[1:])}, got {describe(pool)}")
    device = model_device(model, images.device)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(pool), (len(images), overlays), generator=gen)
    out = torch.empty(len(images))
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            others = pool[picks[start:start + len(x)].flatten()].to(device)
            mixed = (x.repeat_interleave(overlays, 0) + others).clamp(0, 1)
            logp = torch.log_softmax(model(mixed).float(), dim=1)
            entropy = -(logp.exp() * logp).sum(1).view(len(x), overlays).mean(1)
            out[start:start + len(x)] = -entropy.cpu()
    _warn_if_constant(out, "strip_scores")
    return out
