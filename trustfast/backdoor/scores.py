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

from collections.abc import Sequence

import torch
from torch import nn

from trustfast.utils import eval_mode

DEFAULT_SCALES = tuple(range(2, 13))


def _check(model: nn.Module, images: torch.Tensor, scales: Sequence[float]) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise TypeError("images must be a float tensor (N, C, H, W) in [0, 1], got "
                        f"{getattr(images, 'shape', type(images).__name__)}")
    if len(scales) == 0 or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")


def scale_inputs(x: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor | None = None,
                 tau: float | torch.Tensor = 0.0) -> torch.Tensor:
    """clip(s (x - tau) m, 0, 1) for every scale, stacked scale-major: (S * N, C, H, W)."""
    shifted = x - tau
    if mask is not None:
        shifted = shifted * mask
    scaled = scales.to(x).view(-1, 1, 1, 1, 1) * shifted.unsqueeze(0)
    return scaled.clamp(0, 1).flatten(0, 1)


@torch.no_grad()
def _consistency(model, images, scales, mask, tau, batch_size) -> torch.Tensor:
    """(N,) share of scales whose prediction equals f(x).

    Each forward holds a chunk of images at scale 1 (f(x) itself) and at every scale, about
    `batch_size` inputs in all: on the CPU 256 inputs per forward ran 1.4x faster than 2,816
    (SmallCNN, 16x16, one thread: larger activations fall out of cache and are mmapped afresh);
    on a GPU pass a larger batch_size.
    """
    _check(model, images, scales)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device = next(model.parameters()).device
    s = torch.tensor([1.0] + [float(v) for v in scales], device=device)
    chunk = max(1, batch_size // len(s))
    out = torch.empty(len(images))
    with eval_mode(model):
        for start in range(0, len(images), chunk):
            x = images[start:start + chunk].to(device)
            if mask is None and tau == 0:
                inputs = scale_inputs(x, s)
            else:  # f(x) on the unmasked image, the scales on the masked, shifted one
                inputs = torch.cat([x, scale_inputs(x, s[1:], mask, tau)])
            pred = model(inputs).argmax(1).view(len(s), len(x))
            out[start:start + len(x)] = (pred[1:] == pred[0]).float().mean(0).cpu()
    return out


def scaled_prediction_consistency(model: nn.Module, images: torch.Tensor,
                                  scales: Sequence[float] = DEFAULT_SCALES,
                                  batch_size: int = 256) -> torch.Tensor:
    """SPC score per image in [0, 1] (SCALE-UP); all scales of a chunk of images in one forward
    of about `batch_size` inputs."""
    return _consistency(model, images, scales, None, 0.0, batch_size)


def masked_scaled_prediction_consistency(model: nn.Module, images: torch.Tensor,
                                         mask: torch.Tensor | None = None, tau: float = 0.0,
                                         scales: Sequence[float] = DEFAULT_SCALES,
                                         batch_size: int = 256) -> torch.Tensor:
    """MSPC score per image in [-1, 1]; > 0 flags a poisoned sample (the threshold-free rule)."""
    if mask is not None:
        device = next(model.parameters()).device
        mask = mask.to(device)
    return 2 * _consistency(model, images, scales, mask, tau, batch_size) - 1


@torch.no_grad()
def scaled_prediction_consistency_loop(model: nn.Module, images: torch.Tensor,
                                       scales: Sequence[float] = DEFAULT_SCALES,
                                       batch_size: int = 256) -> torch.Tensor:
    """SPC computed the straightforward way, one forward per scale: the benchmark's peer."""
    _check(model, images, scales)
    device = next(model.parameters()).device
    out = torch.empty(len(images))
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            base = model(x).argmax(1)
            hits = torch.zeros(len(x), device=device)
            for s in scales:
                hits += (model((s * x).clamp(0, 1)).argmax(1) == base).float()
            out[start:start + len(x)] = (hits / len(scales)).cpu()
    return out


@torch.no_grad()
def strip_scores(model: nn.Module, images: torch.Tensor, overlays: int = 100,
                 pool: torch.Tensor | None = None, seed: int = 0,
                 batch_size: int = 64) -> torch.Tensor:
    """STRIP suspicion score per image: -(mean entropy of softmax(f(clip(x + x_j)))) over
    `overlays` random images x_j from `pool` (default: `images` itself). N = 100 as the paper."""
    _check(model, images, [1.0])
    if not isinstance(overlays, int) or overlays < 1:
        raise ValueError(f"overlays must be an int >= 1, got {overlays!r}")
    pool = images if pool is None else pool
    if pool.shape[1:] != images.shape[1:]:
        raise ValueError(f"pool images have shape {tuple(pool.shape[1:])}, images "
                         f"{tuple(images.shape[1:])}")
    device = next(model.parameters()).device
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
    return out
