"""HiDDeN's noise layers: what happens to a watermarked image between embedding and decoding.

Every layer is an `nn.Module` called as `layer(encoded, cover, generator=None)` on NCHW images in
[0, 1] and returns the noised image, differentiable with respect to `encoded` (RealJpeg by a
straight-through gradient). Random choices (which pixels, where to crop, which layer of a
`Combined`) are drawn from `generator` when one is given (on any device; draws are moved to the
images' device), else from torch's global generator. `make_noise("jpeg(50)")` builds a layer from
a spec string; each layer's `spec` is the string that builds it.

JPEG colour handling follows JFIF: RGB -> YCbCr (ITU-R BT.601, full range), no chroma
subsampling (4:4:4, as PIL's `subsampling=0`), images whose sides are not multiples of 8 are
padded by repeating the last row/column (as libjpeg does) and cropped back.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from trustfast.checks import FLOATING, check_number, check_same_shape, check_tensor

MAX_RESIZE = 4.0  # Resize's largest scale factor
MAX_BLUR_SIGMA = 100.0  # GaussianBlur's largest sigma, in pixels
MAX_BLUR_KERNEL = 601  # and its largest kernel: the default 2 ceil(3 sigma) + 1 at that sigma

__all__ = [
    "Combined", "Crop", "Cropout", "Dropout", "GaussianBlur", "Identity", "JpegMask", "NoiseLayer",
    "RealJpeg", "Resize", "block_dct", "block_idct", "dct_matrix", "gaussian_kernel1d",
    "jpeg_quantization_tables", "jpeg_roundtrip", "make_noise", "rgb_to_ycbcr", "ycbcr_to_rgb",
]


def _check_pair(encoded: torch.Tensor, cover: torch.Tensor) -> None:
    """Float NCHW `encoded` and a `cover` of its shape (TypeError for another kind of value).
    The values are not read: the layers run inside the training loop on images it made."""
    check_tensor("encoded", encoded, dtypes=FLOATING, ndim=4)
    check_tensor("cover", cover, dtypes=FLOATING)
    check_same_shape("cover", cover, "encoded", encoded)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None,
          like: torch.Tensor) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, device=like.device)
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Integers in [0, high) on the CPU (they index or choose; they are tiny)."""
    if generator is None:
        return torch.randint(high, shape)
    return torch.randint(high, shape, generator=generator, device=generator.device).cpu()


def _side(size: int, area_ratio: float) -> int:
    """Side of a crop holding `area_ratio` of the area when both sides shrink alike."""
    return min(size, max(1, round(size * math.sqrt(area_ratio))))


def _random_boxes(images: torch.Tensor, area_ratio: float, generator):
    """(height, width, top (n,), left (n,)) of one rectangle per image holding `area_ratio` of
    its area (each side scaled by sqrt(area_ratio)), at a uniform random position."""
    n, _, h, w = images.shape
    ch, cw = _side(h, area_ratio), _side(w, area_ratio)
    top = _randint(h - ch + 1, (n,), generator).to(images.device)
    left = _randint(w - cw + 1, (n,), generator).to(images.device)
    return ch, cw, top, left


def _check_ratio(name: str, value: float, low_open: bool) -> float:
    return float(check_number(name, value, low=0.0, high=1.0, low_open=low_open))


class NoiseLayer(nn.Module):
    """Base class: `forward(encoded, cover, generator=None) -> noised`."""

    @property
    def spec(self) -> str:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.spec


class Identity(NoiseLayer):
    """No noise: returns `encoded`."""

    spec = "identity"

    def forward(self, encoded, cover, generator=None):
        _check_pair(encoded, cover)
        return encoded


class Dropout(NoiseLayer):
    """Each pixel (all channels together) is kept from `encoded` with probability `p` and taken
    from `cover` otherwise (HiDDeN's Dropout; its keep ratio). p=0 gives the cover, p=1 the
    encoded image."""

    def __init__(self, p: float):
        super().__init__()
        self.p = _check_ratio("p", p, low_open=False)

    @property
    def spec(self) -> str:
        return f"dropout({self.p:g})"

    def forward(self, encoded, cover, generator=None):
        _check_pair(encoded, cover)
        n, _, h, w = encoded.shape
        keep = _rand((n, 1, h, w), generator, encoded) < self.p
        return torch.where(keep, encoded, cover)


class Cropout(NoiseLayer):
    """A random rectangle holding `area_ratio` of the image (each side scaled by
    sqrt(area_ratio)), at its own position in each image, is kept from `encoded`; everything
    outside it comes from `cover` (HiDDeN's Cropout, p = area ratio)."""

    def __init__(self, area_ratio: float):
        super().__init__()
        self.area_ratio = _check_ratio("area_ratio", area_ratio, low_open=True)

    @property
    def spec(self) -> str:
        return f"cropout({self.area_ratio:g})"

    def forward(self, encoded, cover, generator=None):
        _check_pair(encoded, cover)
        n, _, h, w = encoded.shape
        ch, cw, top, left = _random_boxes(encoded, self.area_ratio, generator)
        rows = torch.arange(h, device=encoded.device)
        cols = torch.arange(w, device=encoded.device)
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + ch)  # (n, h)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + cw)  # (n, w)
        keep = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
        return torch.where(keep, encoded, cover)


class Crop(NoiseLayer):
    """Keep a random rectangle holding `area_ratio` of `encoded` (each side scaled by
    sqrt(area_ratio)), at its own position in each image; the result is smaller than the input
    (HiDDeN's Crop, p = area ratio). The cover is not used."""

    def __init__(self, area_ratio: float):
        super().__init__()
        self.area_ratio = _check_ratio("area_ratio", area_ratio, low_open=True)

    @property
    def spec(self) -> str:
        return f"crop({self.area_ratio:g})"

    def forward(self, encoded, cover, generator=None):
        _check_pair(encoded, cover)
        n = encoded.shape[0]
        ch, cw, top, left = _random_boxes(encoded, self.area_ratio, generator)
        rows = top[:, None] + torch.arange(ch, device=encoded.device)  # (n, ch)
        cols = left[:, None] + torch.arange(cw, device=encoded.device)  # (n, cw)
        batch = torch.arange(n, device=encoded.device)[:, None, None]
        out = encoded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()


class Resize(NoiseLayer):
    """Bilinear resize of `encoded` by `scale` (output sides round(scale * side), at least 1;
    align_corners=False, no antialiasing). The result has another size than the input."""

    def __init__(self, scale: float):
        super().__init__()
        # at most 4x: a larger factor models no channel distortion, and an unbounded one (1e300)
        # would allocate without limit
        self.scale = float(check_number("scale", scale, low=0.0, high=MAX_RESIZE, low_open=True))

    @property
    def spec(self) -> str:
        return f"resize({self.scale:g})"

    def forward(self, encoded, cover, generator=None):
        _check_pair(encoded, cover)
        h, w = encoded.shape[-2:]
        size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        if size == (h, w):
            return encoded
        return F.interpolate(encoded, size=size, mode="bilinear", align_corners=False)


def gaussian_kernel1d(sigma: float, kernel_size: int, dtype=torch.float64,
                      device=None) -> torch.Tensor:
    """exp(-x^2 / (2 sigma^2)) on x = -(k-1)/2 .. (k-1)/2, normalized to sum 1."""
    x = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    # (x / sigma)^2, not x^2 / sigma^2: a denormal sigma made 0 / 0 = NaN at the centre
    z = x / sigma
    k = torch.exp(-0.5 * z * z)
    return k / k.sum()


class GaussianBlur(NoiseLayer):
    """Separable Gaussian blur of `encoded` with std `sigma` (pixels) and an odd `kernel_size`
    (default 2 * ceil(3 sigma) + 1), edges padded by replication so a constant image stays
    constant."""

    def __init__(self, sigma: float, kernel_size: int | None = None):
        super().__init__()
        # sigma <= 100 px (a 601-tap kernel): beyond it every image is a flat colour, and an
        # unbounded sigma would make an unbounded kernel
        sigma = check_number("sigma", sigma, low=0.0, high=MAX_BLUR_SIGMA, low_open=True)
        if kernel_size is None:
            kernel_size = 2 * math.ceil(3.0 * sigma) + 1
        if (isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1
                or kernel_size % 2 == 0 or kernel_size > MAX_BLUR_KERNEL):
            raise ValueError(f"kernel_size must be an odd int in [1, {MAX_BLUR_KERNEL}], "
                             f"got {kernel_size!r}")
        self.sigma, self.kernel_size = float(sigma), kernel_size

    @property
    def spec(self) -> str:
        return f"blur({self.sigma:g},{self.kernel_size})"

    def forward(self, encoded, cover, generator=None):
        _check_pair(encoded, cover)
        c = encoded.shape[1]
        k = gaussian_kernel1d(self.sigma, self.kernel_size, encoded.dtype, encoded.device)
        r = self.kernel_size // 2
        x = F.pad(encoded, (r, r, r, r), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# ---- JPEG building blocks ---------------------------------------------------------------------

def dct_matrix(n: int = 8, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (D @ D.T = I): D[k, i] = a_k cos(pi (2i + 1) k / (2n)),
    a_0 = sqrt(1/n), a_k = sqrt(2/n)."""
    i = torch.arange(n, dtype=torch.float64)
    k = i[:, None]
    d = torch.cos(math.pi * (2.0 * i[None, :] + 1.0) * k / (2.0 * n)) * math.sqrt(2.0 / n)
    d[0] = math.sqrt(1.0 / n)
    return d.to(dtype=dtype, device=device)


def _pad8(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def block_dct(x: torch.Tensor) -> torch.Tensor:
    """2-D DCT-II of every 8x8 block: (N, C, H, W) with H, W multiples of 8 ->
    (N, C, H/8, W/8, 8, 8) coefficients, D @ block @ D.T."""
    n, c, h, w = x.shape
    if h % 8 or w % 8:
        raise ValueError(f"x must have sides that are multiples of 8, got {h}x{w}")
    d = dct_matrix(8, x.dtype, x.device)
    blocks = x.reshape(n, c, h // 8, 8, w // 8, 8).transpose(3, 4)
    return d @ blocks @ d.T


def block_idct(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of `block_dct`: (N, C, H/8, W/8, 8, 8) -> (N, C, H, W)."""
    n, c, bh, bw = coefficients.shape[:4]
    d = dct_matrix(8, coefficients.dtype, coefficients.device)
    blocks = d.T @ coefficients @ d
    return blocks.transpose(3, 4).reshape(n, c, bh * 8, bw * 8)


# JFIF RGB -> YCbCr (ITU-R BT.601, full range), without the +128 offset of Cb and Cr.
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                              [-0.168736, -0.331264, 0.5],
                              [0.5, -0.418688, -0.081312]], dtype=torch.float64)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def _color(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        raise ValueError(f"images must have 3 (RGB) channels for JPEG, got {x.shape[1]}")
    return torch.einsum("ij,njhw->nihw", matrix.to(x.dtype).to(x.device), x)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """JFIF YCbCr of RGB (same scale; Cb, Cr centred on 0, not on 128)."""
    return _color(x, _RGB_TO_YCBCR)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Exact inverse of `rgb_to_ycbcr`."""
    return _color(x, _YCBCR_TO_RGB)


class JpegMask(NoiseLayer):
    """HiDDeN's JPEG-Mask: 8x8 block DCT of YCbCr, keep the low-frequency 5x5 coefficients of Y
    and 3x3 of Cb/Cr, zero the rest, invert. Linear, so exactly differentiable."""

    spec = "jpeg_mask"

    def __init__(self, keep_y: int = 5, keep_c: int = 3):
        super().__init__()
        mask = torch.zeros(3, 8, 8)
        mask[0, :keep_y, :keep_y] = 1.0
        mask[1:, :keep_c, :keep_c] = 1.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, encoded, cover, generator=None):
        _check_pair(encoded, cover)
        h, w = encoded.shape[-2:]
        coefficients = block_dct(_pad8(rgb_to_ycbcr(encoded)))
        mask = self.mask.to(encoded.dtype)[None, :, None, None]
        return ycbcr_to_rgb(block_idct(coefficients * mask))[..., :h, :w]


_LUMA_TABLE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]
_CHROMA_TABLE = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32


def jpeg_quantization_tables(quality: int) -> torch.Tensor:
    """(2, 8, 8) luma and chroma tables: the JPEG standard's (Annex K) scaled as libjpeg does,
    s = 5000/q for q < 50 else 200 - 2q, table = clamp(floor((base s + 50) / 100), 1, 255)."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in [1, 100], got {quality!r}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor([_LUMA_TABLE, _CHROMA_TABLE], dtype=torch.int64).view(2, 8, 8)
    return ((base * scale + 50) // 100).clamp(1, 255).to(torch.float64)


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """A JPEG encode + decode of images in [0, 1], every rounding of a baseline codec included:
    8-bit RGB, 8-bit YCbCr samples, level shift, 8x8 DCT, quantize (round(coefficient / table)),
    dequantize, inverse DCT to 8-bit samples, 8-bit RGB. Not differentiable (rounding);
    `RealJpeg` wraps it with a straight-through gradient."""
    tables = jpeg_quantization_tables(quality).to(images.device)
    h, w = images.shape[-2:]
    offset = torch.tensor([0.0, 128.0, 128.0], dtype=torch.float64,
                          device=images.device).view(1, 3, 1, 1)
    with torch.no_grad():
        rgb = torch.round(images.double().clamp(0.0, 1.0) * 255.0)
        samples = torch.round(rgb_to_ycbcr(rgb) + offset).clamp(0.0, 255.0)
        coefficients = block_dct(_pad8(samples - 128.0))
        q = tables[[0, 1, 1]][None, :, None, None]
        coefficients = torch.round(coefficients / q) * q
        samples = torch.round(block_idct(coefficients)[..., :h, :w] + 128.0).clamp(0.0, 255.0)
        rgb = torch.round(ycbcr_to_rgb(samples - offset)).clamp(0.0, 255.0) / 255.0
    return rgb.to(images.dtype)


class RealJpeg(NoiseLayer):
    """A real JPEG round-trip at `quality` (see `jpeg_roundtrip`) in the forward pass, identity
    in the backward pass (straight-through: out = encoded + (jpeg(encoded) - encoded).detach())."""

    def __init__(self, quality: int):
        super().__init__()
        jpeg_quantization_tables(quality)  # validates
        self.quality = quality

    @property
    def spec(self) -> str:
        return f"jpeg({self.quality})"

    def forward(self, encoded, cover, generator=None):
        _check_pair(encoded, cover)
        return encoded + (jpeg_roundtrip(encoded, self.quality) - encoded).detach()


class Combined(NoiseLayer):
    """One of `layers`, chosen uniformly at random for each batch (HiDDeN's combined noise)."""

    def __init__(self, layers: list[NoiseLayer]):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("layers must be a non-empty list of NoiseLayer, got []")
        if not all(isinstance(layer, NoiseLayer) for layer in layers):
            raise TypeError(f"layers must be a non-empty list of NoiseLayer, got {layers!r}")
        self.layers = nn.ModuleList(layers)

    @property
    def spec(self) -> str:
        return "combined(" + "+".join(layer.spec for layer in self.layers) + ")"

    def forward(self, encoded, cover, generator=None):
        i = int(_randint(len(self.layers), (1,), generator))
        return self.layers[i](encoded, cover, generator)


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SIMPLE = {
    "identity": (Identity, ()),
    "jpeg_mask": (JpegMask, ()),
    "dropout": (Dropout, (float,)),
    "cropout": (Cropout, (float,)),
    "crop": (Crop, (float,)),
    "resize": (Resize, (float,)),
    "blur": (GaussianBlur, (float, int)),
    "jpeg": (RealJpeg, (int,)),
}


def _split_top_level(text: str, spec: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            raise ValueError(f"noise spec {spec!r}: unbalanced parentheses")
        if ch == "+" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def make_noise(spec: str) -> NoiseLayer:
    """A noise layer from its spec: "identity", "dropout(0.3)", "cropout(0.3)", "crop(0.5)",
    "resize(0.7)", "blur(2.0)" or "blur(2.0,5)" (sigma, kernel size), "jpeg_mask", "jpeg(50)"
    (quality), "combined(dropout(0.3)+jpeg_mask)". Spaces are ignored."""
    if not isinstance(spec, str):
        raise TypeError(f"noise spec must be a str, got {spec!r}")
    text = re.sub(r"\s+", "", spec).lower()
    match = re.fullmatch(r"([a-z_]+)(?:\((.*)\))?", text)
    if match is None:
        raise ValueError(f"noise spec {spec!r} is not of the form name or name(args)")
    name, args = match.group(1), match.group(2)
    if name == "combined":
        if not args:
            raise ValueError(f"noise spec {spec!r}: combined needs layers, e.g. "
                             "combined(dropout(0.3)+jpeg_mask)")
        return Combined([make_noise(part) for part in _split_top_level(args, spec)])
    if name not in _SIMPLE:
        raise ValueError(f"noise spec {spec!r}: unknown layer {name!r}; known: "
                         f"{', '.join(sorted([*_SIMPLE, 'combined']))}")
    cls, types = _SIMPLE[name]
    values = [] if args is None or args == "" else args.split(",")
    required = 1 if name == "blur" else len(types)
    if not required <= len(values) <= len(types):
        raise ValueError(f"noise spec {spec!r}: {name} takes {len(types)} argument(s), "
                         f"got {len(values)}")
    parsed = []
    for value, kind in zip(values, types):
        if not re.fullmatch(_NUMBER, value) or (kind is int and not value.isdigit()):
            raise ValueError(f"noise spec {spec!r}: {value!r} is not a valid {kind.__name__}")
        parsed.append(kind(value))
    try:
        return cls(*parsed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"noise spec {spec!r}: {err}") from None
