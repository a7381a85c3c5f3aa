"""Watermark quality metrics: bit accuracy of the decoded message, and PSNR / SSIM of the
watermarked image against its cover (the numbers HiDDeN's tables report)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trustfast.checks import FLOATING, check_choice, check_number, check_same_shape, check_tensor
from trustfast.watermark.models import _BIT_DTYPES
from trustfast.watermark.noise import gaussian_kernel1d

_REDUCTIONS = ("mean", "none")


def _check_images(a: torch.Tensor, b: torch.Tensor) -> None:
    """Float NCHW `a` and `b` of one shape, without NaN/Inf (any range: see data_range)."""
    for name, x in (("a", a), ("b", b)):
        check_tensor(name, x, dtypes=FLOATING, ndim=4, finite=True)
    check_same_shape("b", b, "a", a)


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    check_choice("reduction", reduction, _REDUCTIONS)
    return per_image.mean() if reduction == "mean" else per_image


def _check_bits(name: str, x: torch.Tensor) -> None:
    check_tensor(name, x, dtypes=_BIT_DTYPES, ndim=2)
    check_tensor(name, x, binary=True, hint="decode logits with > 0 first")


def _check_range(data_range: float) -> float:
    return check_number("data_range", data_range, low=0.0, low_open=True,
                        hint="the span of the pixel values: 1.0 for [0, 1], 255 for [0, 255]")


def bit_accuracy(decoded: torch.Tensor, bits: torch.Tensor) -> float:
    """Fraction of bits with decoded == sent, over all images and bits (1 - HiDDeN's bit error
    rate). Both are (N, L) tensors of 0/1 (int, bool or float)."""
    _check_bits("decoded", decoded)
    _check_bits("bits", bits)
    check_same_shape("decoded", decoded, "bits", bits)
    return float((decoded.to(torch.int64) == bits.to(torch.int64)).double().mean())


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0,
         reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image: 10 log10(data_range^2 / MSE), the MSE over
    C x H x W; `reduction="mean"` averages the per-image values (inf for identical images),
    "none" returns the (N,) tensor. a, b: float NCHW of one shape, finite; data_range > 0."""
    _check_images(a, b)
    data_range = _check_range(data_range)
    check_choice("reduction", reduction, _REDUCTIONS)
    mse = (a - b).double().pow(2).flatten(1).mean(1)
    return _reduce((10.0 * torch.log10(data_range ** 2 / mse)).to(a.dtype), reduction)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0,
         reduction: str = "mean") -> torch.Tensor:
    """Structural similarity (Wang et al., IEEE TIP 2004), as their reference code computes it:
    11x11 Gaussian window with sigma 1.5 over 'valid' positions only, C1 = (0.01 L)^2,
    C2 = (0.03 L)^2 with L = data_range,
    SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)),
    averaged over positions and channels of each image. Images need sides >= 11."""
    _check_images(a, b)
    data_range = _check_range(data_range)
    check_choice("reduction", reduction, _REDUCTIONS)
    n, c, h, w = a.shape
    if h < 11 or w < 11:
        raise ValueError(f"a and b must have sides >= 11 (the window), got {h}x{w}")
    k1 = gaussian_kernel1d(1.5, 11, torch.float64, a.device)
    window = (k1[:, None] * k1[None, :]).expand(c, 1, 11, 11)
    x, y = a.double(), b.double()

    def filt(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, window, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
         / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return _reduce(s.flatten(1).mean(1).to(a.dtype), reduction)
