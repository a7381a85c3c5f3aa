"""Image datasets saved as numpy `.npz` archives (read with `allow_pickle=False`).

Keys: `x_train`, `y_train`, `x_test`, `y_test` (Keras' layout, two splits), or one split as
`x` / `y` or `images` / `labels`. Images are [N, C, H, W] or [N, H, W, C] or [N, H, W] (one
channel), uint8 (divided by 255) or float already in [0, 1]; labels are N integers >= 0.
`layout=None` decides by the channel axis: NHWC when the last axis has 1, 3 or 4 entries and
axis 1 does not, NCHW in the opposite case or when neither does, NHWC (numpy's usual layout)
when both do, e.g. [N, 3, 32, 3]; pass `layout="NCHW"` or `"NHWC"` to say it.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch
from torch.utils.data import Dataset

from trustfast.data.adapt import is_hwc
from trustfast.data.images import ImageSize, image_size, resize_image

SPLIT_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
SINGLE_SPLIT_KEYS = (("x", "y"), ("images", "labels"))
LAYOUTS = ("NCHW", "NHWC")


def _open(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"path must be an .npz file, got {path!r} (no such file)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npz archive ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected an .npz archive (np.savez), got a single .npy array")
    return archive


def _split_keys(keys, path: str) -> dict[str, tuple[str, str]]:
    if "x_train" in keys or "x_test" in keys:
        found = {s: k for s, k in SPLIT_KEYS.items() if k[0] in keys and k[1] in keys}
        if "train" in found:
            return found
    for pair in SINGLE_SPLIT_KEYS:
        if pair[0] in keys and pair[1] in keys:
            return {"train": pair}
    raise ValueError(f"{path}: expected keys x_train/y_train (and x_test/y_test), x/y or "
                     f"images/labels; the file has {sorted(keys)}")


def npz_splits(path: str | os.PathLike) -> tuple[str, ...]:
    """The splits an .npz file holds: ("train", "test") or ("train",) for a single split."""
    path = os.fspath(path)
    with _open(path) as archive:
        return tuple(_split_keys(archive.files, path))


def _read(archive, key: str, path: str) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot read {key!r} ({err})") from err


def _images(x: np.ndarray, key: str, path: str, layout: str | None) -> torch.Tensor:
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise TypeError(f"{path}: {key} must be uint8 or float images in [0, 1], got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        hwc = is_hwc(x.shape[1:], channels_last=True) if layout is None else layout == "NHWC"
        if hwc:
            x = x.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{path}: {key} must be [N, C, H, W], [N, H, W, C] or [N, H, W], "
                         f"got shape {x.shape}")
    if x.dtype != np.uint8:
        x = x.astype(np.float32, copy=False)
        bad = ~((x >= 0) & (x <= 1)).reshape(len(x), -1).all(1)  # NaN counts as bad
        if bad.any():
            i = int(bad.argmax())
            raise ValueError(f"{path}: {key}[{i}] has values in [{np.nanmin(x[i]):g}, "
                             f"{np.nanmax(x[i]):g}]{' and NaN' if np.isnan(x[i]).any() else ''}"
                             f"; float images must lie in [0, 1] (uint8 ones are divided by 255)")
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(y: np.ndarray, key: str, path: str, n: int) -> torch.Tensor:
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise TypeError(f"{path}: {key} must be a 1-D array of integer class indices, got "
                        f"{y.dtype} of shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"{path}: {key} holds {len(y)} labels for {n} images")
    if n and y.min() < 0:
        raise ValueError(f"{path}: {key} has negative labels (min {y.min()})")
    return torch.from_numpy(y.astype(np.int64))


class NpzDataset(Dataset):
    """One split ("train" or "test") of an .npz image dataset (layout in the module docstring;
    a single-split file is its "train" split). `images` holds them as uint8 or float32
    [N, C, H, W], `targets` the labels (int64 tensor). Items are (float32 [C, H, W] in [0, 1],
    int label), resized bilinearly to `size` when given."""

    def __init__(self, path: str | os.PathLike, split: str = "train", *,
                 size: ImageSize | None = None, layout: str | None = None):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a path (str or os.PathLike), got {type(path).__name__}")
        if split not in SPLIT_KEYS:
            raise ValueError(f"split must be one of {sorted(SPLIT_KEYS)}, got {split!r}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be None, 'NCHW' or 'NHWC', got {layout!r}")
        path = os.fspath(path)
        self._hw = image_size(size)
        self.path, self.split, self.size, self.layout = path, split, size, layout
        with _open(path) as archive:
            splits = _split_keys(archive.files, path)
            if split not in splits:
                raise ValueError(f"split {split!r}: {path} holds only {sorted(splits)} (keys "
                                 f"{sorted(archive.files)})")
            x_key, y_key = splits[split]
            self.images = _images(_read(archive, x_key, path), x_key, path, layout)
            self.targets = _labels(_read(archive, y_key, path), y_key, path, len(self.images))
        if len(self.images) == 0:
            raise ValueError(f"{path}: {x_key} holds no images")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x
        if self._hw is not None:
            x = resize_image(x, self._hw)
        return x, int(self.targets[index])
