"""Skin-lesion images by skin tone: a procedural generator (`synthetic_skin`) and a loader for
the users' own data in Fitzpatrick17k's layout (`skin_folder`), both as a `SkinDataset`.

`synthetic_skin` renders a patch of skin with one lesion per image, vectorised over images:

- skin: six tones of a Fitzpatrick-like I-VI scale, a base colour per tone from light pinkish
  beige (I) to deep brown (VI), each image's tone drawn continuously within +-0.3 of a step
  of its group's, plus low-frequency mottling, pores, a lighting gradient, a colour cast and
  pixel noise;
- lesions (signed distance fields, soft coverage about a pixel wide, per-image position,
  rotation, size, shape and colour parameters): 0 "nevus" (dark round-oval, smooth border,
  darker centre), 1 "irregular" (asymmetric blotchy outline, brown / blue-grey / red-brown
  within), 2 "ring" (annular red-brown band, clear centre), 3 "papules" (a cluster of 4-9
  small dome-shaded bumps), 4 "plaque" (a large salmon-red patch with flaky grey-white
  scales) and, with `num_classes=6`, 5 "depigmented" (a pale irregular patch). With
  `num_classes=4` the plaque is left out.
- colour: pigment and erythema multiply the skin's reflectance by a transmittance (as light
  through an absorbing layer), `lesion = skin * lerp(1, T, strength * visibility)`, so a
  lesion's absolute contrast scales with the skin's brightness, and `visibility` falls
  linearly from 1 (tone I) to `1 - dark_fade` (tone VI, default DARK_FADE = 0.4): melanin
  masks erythema and pigment on dark skin. A nevus's centre-to-skin colour distance is then
  about 0.61 on tone I and 0.11 on tone VI (0.18 with dark_fade=0): this is what makes the
  dark groups harder, as in clinical photographs.

Groups are drawn with `group_freqs` (default 0.40/0.25/0.15/0.10/0.06/0.04, light tones
commonest, as in dermatology atlases), then each image's class from its group's row of
`class_freqs` (default `default_class_freqs`: pigmented lesions commoner on light skin,
papules and plaques on dark skin). Everything comes from one seeded generator: same
arguments, same tensors. 5,000 images take about 0.15 s at 16 px, 0.5 s at 32 px and 2.2 s
at 64 px on one CPU thread.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import warnings
from collections.abc import Sequence

import torch
from torch.nn import functional as fn
from torch.utils.data import Dataset

from trustfast.checks import check_images, check_number, check_tensor, describe, shown
from trustfast.data.images import IMAGE_EXTENSIONS, ImageSize, image_size, load_image

SKIN_TONES = ("I", "II", "III", "IV", "V", "VI")
LESION_CLASSES = ("nevus", "irregular", "ring", "papules", "plaque")
# the sixth class, used with num_classes=6
EXTRA_LESION_CLASS = "depigmented"
DEFAULT_GROUP_FREQS = (0.40, 0.25, 0.15, 0.10, 0.06, 0.04)
# visibility of a lesion on tone VI is 1 - DARK_FADE (1 on tone I, linear in between)
DARK_FADE = 0.4

# sRGB-ish base colour per tone, I (light pinkish beige) .. VI (deep brown)
_TONE_RGB = torch.tensor([[0.96, 0.83, 0.77], [0.92, 0.76, 0.64], [0.83, 0.64, 0.49],
                          [0.68, 0.49, 0.34], [0.51, 0.35, 0.23], [0.34, 0.22, 0.15]])
# (6 classes) class frequencies on tone I and on tone VI; rows in between interpolate linearly
_CLASS_FREQS_LIGHT = torch.tensor([0.30, 0.26, 0.14, 0.10, 0.14, 0.06], dtype=torch.float64)
_CLASS_FREQS_DARK = torch.tensor([0.12, 0.10, 0.18, 0.26, 0.22, 0.12], dtype=torch.float64)

# transmittances: pigment (brown), melanoma-like mixture, erythema, papules, plaque
_T_NEVUS = torch.tensor([0.42, 0.33, 0.31])
_T_MIX = torch.tensor([[0.30, 0.23, 0.22], [0.50, 0.50, 0.66], [0.78, 0.47, 0.42]])
_T_RING = torch.tensor([0.84, 0.52, 0.52])
_T_PAPULE = torch.tensor([0.82, 0.50, 0.52])
_T_PLAQUE = torch.tensor([0.86, 0.56, 0.52])
_SCALE_RGB = torch.tensor([0.88, 0.86, 0.84])
_PALE_RGB = torch.tensor([0.97, 0.90, 0.86])

_MAX_PAPULES = 9
# columns of the per-image uniform parameters
(_SHADE, _HUE, _MOTTLE, _PORES, _CX, _CY, _ROT, _R1, _R2, _R3, _STRENGTH, _PH1, _PH2, _PH3,
 _COUNT, _LIGHT, _LIGHT_ANG, _LIGHT_GRAD, _CAST, _NOISE) = (
    0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 23)
_N_PARAMS = 24
_N_LOW = 4  # low-frequency fields: skin mottling, two colour-mix fields, outline wobble
_LOW_RES = 5


# ----------------------------------------------------------------------------- the dataset

def _names(name: str, value) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, got {shown(value)}")
    out = tuple(value)
    if not out or not all(isinstance(v, str) for v in out):
        raise TypeError(f"{name} must be a non-empty sequence of strings, got {shown(value)}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a name, got {out!r}")
    return out


def _index_tensor(name: str, x, n: int, count: int, what: str) -> torch.Tensor:
    check_tensor(name, x, dtypes=(torch.int64,), ndim=1, hint=f"int64 {what} indices")
    if len(x) != n:
        raise ValueError(f"{name} must have one entry per image ({n}), got {describe(x)}")
    if n and (int(x.min()) < 0 or int(x.max()) >= count):
        raise ValueError(f"{name} must lie in 0..{count - 1} (one index per {what}), got "
                         f"values in [{int(x.min())}, {int(x.max())}]")
    return x


class SkinDataset(Dataset):
    """Images of skin lesions with a disease class and a skin-tone group per image.

    `images` float32 (N, C, H, W) in [0, 1], `labels` int64 (N,) in 0..num_classes-1 (the
    disease, named by `class_names`), `groups` int64 (N,) in 0..num_groups-1 (the skin tone,
    named by `group_names`, by default SKIN_TONES: 0..5 = I..VI). Items are
    `(image, label, group)` with Python ints; `tensors` is (images, labels) as a
    TensorDataset's, so `trustfast.data.dataset_tensors` reads it without a copy.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                 class_names: Sequence[str], group_names: Sequence[str] = SKIN_TONES):
        check_images("images", images)
        if images.dtype != torch.float32:
            raise TypeError(f"images must be float32, got {describe(images)} (use .float())")
        self.class_names = _names("class_names", class_names)
        self.group_names = _names("group_names", group_names)
        n = len(images)
        self.images = images
        self.labels = _index_tensor("labels", labels, n, len(self.class_names), "class")
        self.groups = _index_tensor("groups", groups, n, len(self.group_names), "group")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.images[index], int(self.labels[index]), int(self.groups[index])

    def subset(self, indices) -> SkinDataset:
        """The images at `indices` (ints, a 1-D int64 tensor, or a bool mask of length N), in
        that order, with the same class and group names."""
        if isinstance(indices, torch.Tensor):
            idx = indices
        else:
            if isinstance(indices, (str, bytes)) or not isinstance(indices, (Sequence, range)):
                raise TypeError(f"indices must be a sequence of ints or a 1-D tensor, got "
                                f"{shown(indices)}")
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
                raise TypeError(f"indices must hold ints, got {shown(indices)}")
            idx = torch.tensor(list(indices), dtype=torch.int64)
        if idx.dtype == torch.bool:
            check_tensor("indices", idx, shape=(len(self),), hint="a bool mask over the images")
            idx = torch.nonzero(idx).flatten()
        check_tensor("indices", idx, dtypes=(torch.int64,), ndim=1)
        if len(idx) and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise ValueError(f"indices must lie in [-{len(self)}, {len(self) - 1}], got values "
                             f"in [{int(idx.min())}, {int(idx.max())}]")
        idx = idx.to(self.images.device)
        return SkinDataset(self.images[idx], self.labels[idx.to(self.labels.device)],
                           self.groups[idx.to(self.groups.device)], self.class_names,
                           self.group_names)

    def cell_counts(self) -> torch.Tensor:
        """int64 (num_groups, num_classes): how many images each (group, class) cell holds."""
        cells = self.groups.cpu() * self.num_classes + self.labels.cpu()
        counts = torch.bincount(cells, minlength=self.num_groups * self.num_classes)
        return counts.view(self.num_groups, self.num_classes)

    def group_counts(self) -> torch.Tensor:
        """int64 (num_groups,): images per skin-tone group."""
        return torch.bincount(self.groups.cpu(), minlength=self.num_groups)

    def class_counts(self) -> torch.Tensor:
        """int64 (num_classes,): images per disease class."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes)

    def __repr__(self) -> str:
        h, w = self.images.shape[-2:]
        groups = ", ".join(f"{g}: {c}" for g, c in zip(self.group_names,
                                                       self.group_counts().tolist()))
        classes = ", ".join(f"{k}: {c}" for k, c in zip(self.class_names,
                                                        self.class_counts().tolist()))
        return (f"SkinDataset(N={len(self)}, size={h}x{w}, groups={{{groups}}}, "
                f"classes={{{classes}}})")


# ------------------------------------------------------------------------ the generator

def default_class_freqs(num_classes: int = 5) -> torch.Tensor:
    """float64 (6, num_classes) row-stochastic: row t is the class distribution on tone t,
    interpolated linearly from tone I (nevus 0.30, irregular 0.26, ring 0.14, papules 0.10,
    plaque 0.14, depigmented 0.06) to tone VI (0.12, 0.10, 0.18, 0.26, 0.22, 0.12), keeping
    the first `num_classes` classes and renormalising each row."""
    num_classes = _num_classes(num_classes)
    t = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)[:, None]
    rows = torch.lerp(_CLASS_FREQS_LIGHT, _CLASS_FREQS_DARK, t)[:, _class_columns(num_classes)]
    return rows / rows.sum(1, keepdim=True)


def _num_classes(num_classes) -> int:
    return check_number("num_classes", num_classes, low=4, high=6, integer=True)


def _class_columns(num_classes: int) -> list[int]:
    # which of the six renderable lesions the classes 0..num_classes-1 are
    return [0, 1, 2, 3] if num_classes == 4 else list(range(num_classes))


def class_names_for(num_classes: int = 5) -> tuple[str, ...]:
    """The names of `synthetic_skin`'s classes for `num_classes` in 4..6."""
    every = (*LESION_CLASSES, EXTRA_LESION_CLASS)
    return tuple(every[c] for c in _class_columns(_num_classes(num_classes)))


def _frequencies(name: str, value, shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be numbers of shape {shape}, got {shown(value)}")
    try:
        freqs = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be numbers of shape {shape}, got {shown(value)}") from err
    if tuple(freqs.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got shape {tuple(freqs.shape)}")
    if not bool(torch.isfinite(freqs).all()) or bool((freqs < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got {freqs.tolist()}")
    sums = freqs.sum(-1)
    if bool((sums <= 0).any()):
        raise ValueError(f"{name} must have a positive sum" + (" in every row" if len(shape) > 1
                                                                else "") + f", got {value!r}")
    return freqs / sums.unsqueeze(-1)


def _draw_categories(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws: probs (n, k) rows, u (n,) uniforms -> (n,) int64 categories."""
    cdf = probs.cumsum(-1)
    cdf[:, -1] = 1.0  # rounding must not leave u above the last bin
    return (u[:, None] >= cdf).sum(-1).clamp_max(probs.shape[-1] - 1)


def _lerp(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


def _coverage(sdf: torch.Tensor, width: float) -> torch.Tensor:
    """Soft inside-mask of a signed distance (negative inside), `width` wide at the edge."""
    return torch.sigmoid(-sdf / width)


@functools.lru_cache(maxsize=16)
def _upsampler(res: int, size: int) -> torch.Tensor:
    """(size, res) bicubic interpolation matrix M: M @ F @ M.T upsamples F (res, res) as
    `interpolate(mode="bicubic")` does, as two small matmuls (5x faster on the CPU)."""
    impulses = torch.eye(res).view(res, 1, res, 1)
    return fn.interpolate(impulses, size=(size, 1), mode="bicubic",
                          align_corners=False)[:, 0, :, 0].T.contiguous()


def _upsample(field: torch.Tensor, size: int) -> torch.Tensor:
    m = _upsampler(field.shape[-1], size)
    return m @ field @ m.T


def _render(tone: torch.Tensor, kind: torch.Tensor, p: torch.Tensor, low: torch.Tensor,
            med: torch.Tensor, fine: torch.Tensor, papules: torch.Tensor, size: int,
            dark_fade: float) -> torch.Tensor:
    """One chunk: tone (m,) group, kind (m,) lesion 0..5, p (m, _N_PARAMS) uniforms,
    low (m, _N_LOW, 5, 5) and med (m, s, s) standard normals, fine (m, 2, S, S) uniforms
    (pores, pixel noise), papules (m, _MAX_PAPULES, 3) uniforms -> images (m, 3, S, S)."""
    m = len(tone)
    px = 2.0 / size
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) * px - 1.0
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    gx, gy = gx.unsqueeze(0), gy.unsqueeze(0)  # (1, S, S), y grows downwards

    def q(col):  # one parameter per image, broadcastable over (m, S, S)
        return p[:, col].view(m, 1, 1)

    # ---- skin: a continuous tone near the group's, mottling, pores ----
    shade = (tone.float() + (p[:, _SHADE] - 0.5) * 0.6).clamp(0.0, 5.0)
    lo_idx = shade.floor().long().clamp_max(4)
    frac = (shade - lo_idx.float()).unsqueeze(1)
    base = torch.lerp(_TONE_RGB[lo_idx], _TONE_RGB[lo_idx + 1], frac)
    base = (base * (1.0 + (p[:, _HUE:_HUE + 3] - 0.5) * 0.06)).clamp(0.0, 1.0)
    lowf = _upsample(low, size)  # (m, _N_LOW, S, S), smooth, about unit variance
    # pores are far below a pixel: their darkening is averaged over the pixel's area
    pore_depth = 0.12 * min(1.0, size / 64) ** 1.5
    texture = (1.0 + _lerp(q(_MOTTLE), 0.015, 0.045) * lowf[:, 0]
               - pore_depth * (fine[:, 0] < _lerp(q(_PORES), 0.01, 0.05)))
    img = base.view(m, 3, 1, 1) * texture.unsqueeze(1)  # (m, 3, S, S)

    # ---- lesion frame: centre, rotation, visibility by tone ----
    cx, cy = _lerp(q(_CX), -0.14, 0.14), _lerp(q(_CY), -0.14, 0.14)
    rot = q(_ROT) * (2 * math.pi)
    dx, dy = gx - cx, gy - cy
    cr, sr = torch.cos(rot), torch.sin(rot)
    lx, ly = cr * dx + sr * dy, -sr * dx + cr * dy  # lesion's own axes
    visibility = (1.0 - dark_fade * shade / 5.0).view(m, 1, 1)
    strength = _lerp(q(_STRENGTH), 0.8, 1.0) * visibility
    edge = 0.6 * px  # soft edge: anti-aliasing about a pixel wide

    def transmit(sel, mask, trans):
        # skin reflectance times lerp(1, T, a): mask (k, S, S) in [0, 1], trans (k|1, 3[, S, S])
        t = trans if trans.dim() == 4 else trans.view(-1, 3, 1, 1)
        a = (mask * strength[sel]).unsqueeze(1)
        img[sel] = img[sel] * (1.0 + a * (t - 1.0))

    def ellipse(sel, lo, hi, ratio_lo, ratio_hi):
        # (rho, b): normalised radius in the lesion's axes and the short semi-axis
        a = _lerp(q(_R1)[sel], lo, hi)
        b = a * _lerp(q(_R2)[sel], ratio_lo, ratio_hi)
        return torch.sqrt((lx[sel] / a) ** 2 + (ly[sel] / b) ** 2 + 1e-12), b

    sel = torch.nonzero(kind == 0).flatten()  # nevus: dark oval, smooth border, darker centre
    if len(sel):
        rho, b = ellipse(sel, 0.18, 0.32, 0.78, 1.0)
        mask = _coverage((rho - 1.0) * b, 1.5 * edge) * (0.85 + 0.15 * (1 - rho).clamp(0, 1))
        transmit(sel, mask, _T_NEVUS * _lerp(p[sel, _R3:_R3 + 1], 0.85, 1.1))

    sel = torch.nonzero(kind == 1).flatten()  # irregular: asymmetric blotch, mixed colours
    if len(sel):
        x, y = lx[sel], ly[sel]
        theta = torch.atan2(y, x)
        big = _lerp(q(_R1)[sel], 0.26, 0.40)
        wobble = (_lerp(q(_R2)[sel], 0.12, 0.25) * torch.sin(2 * theta + 6.3 * q(_PH1)[sel])
                  + _lerp(q(_R3)[sel], 0.08, 0.18) * torch.sin(3 * theta + 6.3 * q(_PH2)[sel])
                  + 0.08 * torch.sin(5 * theta + 6.3 * q(_PH3)[sel]))
        radius = big * (1.0 + wobble + 0.12 * lowf[sel, 3])
        mask = _coverage(torch.sqrt(x * x + y * y + 1e-12) - radius, edge)
        mix = torch.softmax(torch.stack([2.5 * lowf[sel, 1], 2.5 * lowf[sel, 2],
                                         torch.zeros_like(x)], 1), 1)  # (k, 3, S, S)
        trans = torch.einsum("kcij,cr->krij", mix, _T_MIX)
        transmit(sel, mask * (0.75 + 0.25 * torch.sigmoid(2 * lowf[sel, 0])), trans)

    sel = torch.nonzero(kind == 2).flatten()  # ring: annulus, clear centre
    if len(sel):
        rho, b = ellipse(sel, 0.30, 0.48, 0.82, 1.0)
        width = torch.clamp(_lerp(q(_R3)[sel], 0.05, 0.09), min=0.8 * px)
        transmit(sel, _coverage(((rho - 1.0) * b).abs() - width, edge), _T_RING)

    sel = torch.nonzero(kind == 3).flatten()  # papules: a cluster of small dome-shaded bumps
    if len(sel):
        k = len(sel)
        count = 4 + (p[sel, _COUNT] * (_MAX_PAPULES - 3)).long()  # 4..9
        pp = papules[sel]
        ang, dist = pp[..., 0] * (2 * math.pi), 0.32 * pp[..., 1].sqrt()
        bxs, bys = dist * torch.cos(ang), dist * torch.sin(ang)
        radii = torch.clamp(_lerp(pp[..., 2], 0.06, 0.10), min=0.6 * px)
        x, y = lx[sel], ly[sel]
        best = torch.full_like(x, 1e3)  # distance to the nearest bump, in its radii
        nx, ny, rn = torch.zeros_like(x), torch.zeros_like(x), torch.ones_like(x)
        for i in range(_MAX_PAPULES):
            r = radii[:, i].view(k, 1, 1)
            ox, oy = (x - bxs[:, i].view(k, 1, 1)) / r, (y - bys[:, i].view(k, 1, 1)) / r
            d = torch.sqrt(ox * ox + oy * oy + 1e-12)
            closer = (d < best) & (i < count).view(k, 1, 1)
            best = torch.where(closer, d, best)
            nx, ny = torch.where(closer, ox, nx), torch.where(closer, oy, ny)
            rn = torch.where(closer, r, rn)
        mask = _coverage((best - 1.0) * rn, edge)
        # light from the upper left: the lit side of each dome is paler
        transmit(sel, (0.8 + 0.2 * (nx + ny).clamp(-1, 1)) * mask, _T_PAPULE)

    sel = torch.nonzero(kind == 4).flatten()  # plaque: large patch with flaky scales
    if len(sel):
        rho, b = ellipse(sel, 0.42, 0.62, 0.62, 0.9)
        mask = _coverage((rho - 1.0 + 0.10 * lowf[sel, 3]) * b, edge)
        transmit(sel, mask, _T_PLAQUE)
        flakes = torch.sigmoid(4.0 * (_upsample(med[sel], size) - 0.6))
        cover = (0.6 * mask * flakes * strength[sel]).unsqueeze(1)
        # grey-white scale on top of the red patch, dimmed with the skin (ashy on dark skin)
        scale = _SCALE_RGB.view(1, 3, 1, 1) * (0.45 + 0.55 * visibility[sel]).unsqueeze(1)
        img[sel] = torch.lerp(img[sel], scale, cover)

    sel = torch.nonzero(kind == 5).flatten()  # depigmented: pale irregular patch
    if len(sel):
        rho, b = ellipse(sel, 0.25, 0.45, 0.7, 1.0)
        mask = _coverage((rho - 1.0 + 0.25 * lowf[sel, 3]) * b, 2 * edge)
        pale = _PALE_RGB.view(1, 3, 1, 1) * texture[sel].unsqueeze(1)
        img[sel] = torch.lerp(img[sel], pale, (0.75 * mask).unsqueeze(1))

    # ---- lighting: brightness, a directional gradient, a colour cast; then noise ----
    ang = q(_LIGHT_ANG) * (2 * math.pi)
    light = _lerp(q(_LIGHT), 0.9, 1.08) * (
        1.0 + _lerp(q(_LIGHT_GRAD), 0.0, 0.15) * (torch.cos(ang) * gx + torch.sin(ang) * gy))
    img.mul_(light.unsqueeze(1)).mul_(_lerp(p[:, _CAST:_CAST + 3], 0.96, 1.04).view(m, 3, 1, 1))
    # uniform noise of standard deviation sigma (sqrt(12) * (u - 1/2) has variance 1)
    sigma = _lerp(p[:, _NOISE], 0.006, 0.018).view(m, 1, 1, 1)
    img.add_(sigma * math.sqrt(12.0) * (fine[:, 1:2] - 0.5))
    return img.clamp_(0.0, 1.0)


def synthetic_skin(n: int, size: int = 32, seed: int = 0,
                   group_freqs: Sequence[float] | torch.Tensor = DEFAULT_GROUP_FREQS,
                   class_freqs: Sequence[Sequence[float]] | torch.Tensor | None = None,
                   num_classes: int = 5, *, dark_fade: float = DARK_FADE) -> SkinDataset:
    """`n` procedural skin-lesion images of `size` x `size` (module docstring) as a SkinDataset
    with groups 0..5 = tones I..VI and classes `class_names_for(num_classes)`.

    group_i ~ Categorical(group_freqs), label_i ~ Categorical(class_freqs[group_i]), drawn per
    image from one generator seeded by `seed` (so counts vary around n * freqs; use
    `SkinDataset.cell_counts()` for the exact ones). `group_freqs` (6,) and `class_freqs`
    (6, num_classes) are relative frequencies >= 0, normalised to sum 1 (per row);
    `class_freqs=None` is `default_class_freqs(num_classes)`. Any `size` >= 8 works; shapes
    are laid out in units of the image, so 16, 32 and 64 px show the same lesions.
    `dark_fade` in [0, 1) sets how much a lesion fades on dark skin: visibility
    1 - dark_fade * tone / 5 for tones 0..5 (on top of the multiplicative colour model, which
    alone leaves a lesion on tone VI about 0.3 times as contrasted as on tone I); 0 turns the
    extra fading off.

    Refused with an error naming the argument: n < 1, size < 8, a negative seed, num_classes
    outside 4..6, frequencies of the wrong shape, negative, non-finite or summing to 0,
    dark_fade outside [0, 1).
    """
    n = check_number("n", n, low=1, integer=True)
    size = check_number("size", size, low=8, integer=True)
    seed = check_number("seed", seed, low=0, integer=True)
    num_classes = _num_classes(num_classes)
    dark_fade = check_number("dark_fade", dark_fade, low=0.0, high=1.0, high_open=True)
    gf = _frequencies("group_freqs", group_freqs, (6,))
    cf = (default_class_freqs(num_classes) if class_freqs is None
          else _frequencies("class_freqs", class_freqs, (6, num_classes)))

    g = torch.Generator().manual_seed(seed)
    groups = _draw_categories(gf.expand(n, 6), torch.rand(n, generator=g, dtype=torch.float64))
    labels = _draw_categories(cf[groups], torch.rand(n, generator=g, dtype=torch.float64))
    kinds = torch.tensor(_class_columns(num_classes))[labels]
    params = torch.rand(n, _N_PARAMS, generator=g)
    papules = torch.rand(n, _MAX_PAPULES, 3, generator=g)
    low = torch.randn(n, _N_LOW, _LOW_RES, _LOW_RES, generator=g)
    med = torch.randn(n, max(4, size // 3), max(4, size // 3), generator=g)
    # Rendered in chunks of about 2**14 pixels (16 images at 32 px), in class order so that a
    # chunk takes one or two lesion branches: 3x faster than 512-image chunks, whose
    # temporaries fall out of the cache. The per-pixel draws (pores, noise) come chunk by
    # chunk from the same generator, so memory stays bounded and the result depends on the
    # arguments only.
    chunk = max(1, 2**14 // (size * size))
    order = torch.sort(kinds, stable=True).indices
    images = torch.empty(n, 3, size, size)
    for i in range(0, n, chunk):
        idx = order[i:i + chunk]
        fine = torch.rand(len(idx), 2, size, size, generator=g)
        images[idx] = _render(groups[idx], kinds[idx], params[idx], low[idx], med[idx], fine,
                              papules[idx], size, float(dark_fade))
    return SkinDataset(images, labels, groups, class_names_for(num_classes), SKIN_TONES)


# ---------------------------------------------------------------------- the users' data

def _default_image_dir(csv_path: str) -> str:
    folder = os.path.dirname(os.path.abspath(csv_path))
    images = os.path.join(folder, "images")
    return images if os.path.isdir(images) else folder


def _parse_scale(text: str) -> int | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return int(value) if value.is_integer() and 1 <= value <= 6 else None


def skin_folder(csv_path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                size: ImageSize = 32, *, image_column: str = "md5hash",
                label_column: str = "label", group_column: str = "fitzpatrick_scale",
                class_names: Sequence[str] | None = None,
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> SkinDataset:
    """A SkinDataset from a CSV in Fitzpatrick17k's layout (Groh et al., 2021) and its images.

    Columns: `image_column` (default "md5hash") names each image file, with or without its
    extension (without one, the first of `extensions` that exists is taken, matched
    case-insensitively); `group_column` (default "fitzpatrick_scale") is the Fitzpatrick type
    1..6, group index = type - 1 (names SKIN_TONES); `label_column` (default "label") is the
    disease name. Rows whose type is not an integer in 1..6 (Fitzpatrick17k writes -1 for
    unknown) are dropped, and a UserWarning says how many. Class indices follow the sorted
    disease names of the kept rows, or the order of `class_names` when given (then a label
    outside it is an error), so that two CSVs can share one indexing.

    `image_dir` defaults to a folder named "images" next to the CSV when there is one, else
    the CSV's own folder. Images are read with `trustfast.data.load_image` (PIL, RGB) and
    resized to `size` (an int or (height, width)), and all of them are held in memory:
    N x 3 x 32 x 32 float32 is 12 KB per image. A missing file or column is a ValueError
    naming it.
    """
    if not isinstance(csv_path, (str, os.PathLike)):
        raise TypeError(f"csv_path must be a path (str or os.PathLike), got {shown(csv_path)}")
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise ValueError(f"csv_path must be a CSV file, got {csv_path!r} (no such file)")
    if image_dir is None:
        image_dir = _default_image_dir(csv_path)
    elif not isinstance(image_dir, (str, os.PathLike)):
        raise TypeError(f"image_dir must be a path or None, got {shown(image_dir)}")
    image_dir = os.fspath(image_dir)
    if not os.path.isdir(image_dir):
        raise ValueError(f"image_dir must be a folder of images, got {image_dir!r} (no such "
                         f"folder)")
    if size is None:
        raise ValueError("size must be a positive int or (height, width): every image is "
                         "resized to it, got None")
    hw = image_size(size)
    for name, column in (("image_column", image_column), ("label_column", label_column),
                         ("group_column", group_column)):
        if not isinstance(column, str):
            raise TypeError(f"{name} must be a column name (str), got {shown(column)}")
    if isinstance(extensions, str) or not all(isinstance(e, str) for e in extensions):
        raise TypeError(f"extensions must be a sequence of suffixes such as ('.png',), got "
                        f"{extensions!r}")
    extensions = tuple(e.lower() for e in extensions)
    if class_names is not None:
        class_names = _names("class_names", class_names)

    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for name, column in (("image_column", image_column), ("label_column", label_column),
                             ("group_column", group_column)):
            if column not in header:
                raise ValueError(f"{csv_path}: no column {column!r} ({name}); the header has "
                                 f"{header}")
        rows = [(line, row) for line, row in enumerate(reader, start=2)]
    if not rows:
        raise ValueError(f"{csv_path}: the CSV has a header but no rows")

    # one listing of the folder: file stems without an extension are looked up here
    by_stem: dict[str, dict[str, str]] = {}
    for entry in os.scandir(image_dir):
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() in extensions and entry.is_file():
            by_stem.setdefault(stem, {})[ext.lower()] = entry.path

    kept: list[tuple[str, str, int]] = []
    dropped, example = 0, None
    for line, row in rows:
        group = _parse_scale(row[group_column] or "")
        if group is None:
            dropped += 1
            example = row[group_column] if example is None else example
            continue
        label = (row[label_column] or "").strip()
        if not label:
            raise ValueError(f"{csv_path}, line {line}: empty {label_column!r} (label_column)")
        name = (row[image_column] or "").strip()
        if not name:
            raise ValueError(f"{csv_path}, line {line}: empty {image_column!r} (image_column)")
        path = os.path.join(image_dir, name)
        if not (name.lower().endswith(extensions) and os.path.isfile(path)):
            found = by_stem.get(name, {})
            path = next((found[e] for e in extensions if e in found), None)
            if path is None:
                raise ValueError(f"{csv_path}, line {line}: no image file for {name!r} in "
                                 f"{image_dir!r} (tried {name!r} and {name!r} + one of "
                                 f"{extensions})")
        kept.append((path, label, group - 1))
    if dropped:
        warnings.warn(f"skin_folder: dropped {dropped} of {len(rows)} rows of {csv_path} whose "
                      f"{group_column!r} is not a Fitzpatrick type 1..6 (e.g. {example!r})",
                      UserWarning, stacklevel=2)
    if not kept:
        raise ValueError(f"{csv_path}: no row has a {group_column!r} in 1..6")

    names = class_names or tuple(sorted({label for _, label, _ in kept}))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({label for _, label, _ in kept if label not in index})
    if unknown:
        raise ValueError(f"{csv_path}: labels {unknown[:5]} are not in class_names {names}")
    first = load_image(kept[0][0], hw)
    images = torch.empty(len(kept), *first.shape)
    images[0] = first
    for i, (path, _, _) in enumerate(kept[1:], start=1):
        images[i] = load_image(path, hw)
    labels = torch.tensor([index[label] for _, label, _ in kept], dtype=torch.int64)
    groups = torch.tensor([group for _, _, group in kept], dtype=torch.int64)
    return SkinDataset(images, labels, groups, names, SKIN_TONES)
