"""Any map-style dataset of images as trustfast's images: float32 [C, H, W] in [0, 1] with
int64 labels (`as_image_dataset`), and all of it as two tensors (`dataset_tensors`).

Items may be `(image, label)` pairs or mappings `{"image": ..., "label": ...}` (Hugging Face
datasets, custom dicts); an image may be a torch tensor, a numpy array or a PIL image:
  - float images must already lie in [0, 1]; anything else is refused with the range seen and
    the index of the item (no silent rescaling or clipping). float16/64 become float32.
  - uint8 tensors and arrays are divided by 255, with a one-time note (a UserWarning).
  - PIL images are 8-bit by nature and divided by 255 without a note; modes "L" and "RGB" are
    kept, "1" and "LA" become "L", palette / alpha / CMYK / YCbCr modes become "RGB", and 16-bit
    or float modes ("I", "I;16", "F") are refused.
  - a 2-D image is [H, W] (one channel); a 3-D image is [H, W, C] (and is transposed) when its
    last axis has 1, 3 or 4 entries and its first does not, [C, H, W] in the opposite case or
    when neither does; when both do, numpy arrays are read as [H, W, C] (PIL's, OpenCV's and
    Hugging Face's layout) and tensors as [C, H, W] (torch's).
Labels must be integers >= 0 (Python ints, numpy integers, one-element integer tensors).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

CHANNEL_COUNTS = (1, 3, 4)
_PIL_AS_IS = ("L", "RGB")
_PIL_TO_GRAY = ("1", "LA", "La")
_PIL_REFUSED = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_hwc(shape: tuple[int, ...], channels_last: bool) -> bool:
    """Whether a 3-D image shape is [H, W, C] rather than [C, H, W]: decided by which end axis
    has 1, 3 or 4 entries; when both or neither do, `channels_last` (True for numpy arrays, as
    PIL, OpenCV and Hugging Face datasets give them; False for torch tensors) when both, and
    [C, H, W] when neither."""
    first, last = shape[0] in CHANNEL_COUNTS, shape[-1] in CHANNEL_COUNTS
    return channels_last if first and last else last and not first


def _pil_image_class():
    module = sys.modules.get("PIL.Image")  # a PIL image exists only if PIL was imported
    return None if module is None else module.Image


def _from_pil(image, where: str) -> torch.Tensor:
    mode = image.mode
    if mode in _PIL_REFUSED:
        raise ValueError(f"{where}: PIL images of mode {mode!r} (16-bit or float) are not "
                         f"converted; give a float tensor in [0, 1] instead")
    target = mode if mode in _PIL_AS_IS else "L" if mode in _PIL_TO_GRAY else "RGB"
    if mode != target:
        image = image.convert(target)
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    return x.float().div(255.0)


def _check_range(x: torch.Tensor, where: str) -> None:
    lo, hi = torch.aminmax(x.detach())
    lo, hi = float(lo), float(hi)
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise ValueError(f"{where}: image values must lie in [0, 1], saw range "
                         f"[{lo:g}, {hi:g}]; scale float images to [0, 1] (uint8 images are "
                         f"divided by 255 for you)")


def image_tensor(image, where: str = "image") -> tuple[torch.Tensor, bool]:
    """(float32 [C, H, W] in [0, 1], whether it was converted from uint8) for one image given
    as a tensor, numpy array or PIL image (rules in the module docstring). `where` names the
    item in errors."""
    pil = _pil_image_class()
    if pil is not None and isinstance(image, pil):
        return _from_pil(image, where), False
    channels_last = isinstance(image, np.ndarray)
    if channels_last:
        if image.dtype != np.uint8 and image.dtype.kind != "f":
            raise TypeError(f"{where}: expected a float image in [0, 1] or uint8, got a numpy "
                            f"array of dtype {image.dtype}")
        image = np.ascontiguousarray(image)
        if not image.flags.writeable:  # torch.from_numpy warns on read-only memory
            image = image.copy()
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{where}: expected an image as a torch tensor, numpy array or PIL "
                        f"image, got {type(image).__name__}")
    if image.dtype != torch.uint8 and image.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{where}: expected a float image in [0, 1] or uint8, got dtype "
                        f"{image.dtype}")
    if image.dim() == 2:
        image = image[None]
    elif image.dim() == 3:
        if is_hwc(tuple(image.shape), channels_last):
            image = image.permute(2, 0, 1)
    else:
        raise ValueError(f"{where}: expected an image of shape [C, H, W], [H, W, C] or [H, W], "
                         f"got {tuple(image.shape)}")
    if image.numel() == 0:
        raise ValueError(f"{where}: the image is empty (shape {tuple(image.shape)})")
    if image.dtype == torch.uint8:
        return image.float().div(255.0).contiguous(), True
    _check_range(image, where)
    return image.to(torch.float32).contiguous(), False


def label_index(label, where: str = "label") -> int:
    """A class label as an int >= 0: Python ints, numpy integers and one-element integer
    tensors or arrays; bools, floats and anything else are refused."""
    if isinstance(label, (torch.Tensor, np.ndarray)):
        if isinstance(label, torch.Tensor):
            is_int = not (label.dtype.is_floating_point or label.dtype.is_complex
                          or label.dtype == torch.bool)
        else:
            is_int = label.dtype.kind in "iu"
        if not is_int or label.reshape(-1).shape[0] != 1:
            raise TypeError(f"{where}: expected an integer class index, got a "
                            f"{type(label).__name__} of dtype {label.dtype} and shape "
                            f"{tuple(label.shape)}")
        value = int(label.reshape(-1)[0])
    elif isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
        value = int(label)
    else:
        raise TypeError(f"{where}: expected an integer class index, got "
                        f"{type(label).__name__} {label!r:.60}")
    if value < 0:
        raise ValueError(f"{where}: class labels must be >= 0, got {value}")
    return value


def _uint8_note(name: str) -> None:
    warnings.warn(f"{name}: uint8 images converted to float32 in [0, 1] (divided by 255)",
                  UserWarning, stacklevel=3)


class ImageDataset(Dataset):
    """A view of a map-style `dataset` whose items are (float32 [C, H, W] in [0, 1], int64
    label): see `as_image_dataset`. `targets` and `classes` are those of `dataset` when it has
    them."""

    def __init__(self, dataset: Dataset, name: str = "dataset", image_key: str = "image",
                 label_key: str = "label"):
        if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__getitem__")
                                                        and hasattr(dataset, "__len__")):
            raise TypeError(f"{name} must be a map-style dataset (with __len__ and "
                            f"__getitem__), got {type(dataset).__name__}")
        for key_name, key in (("image_key", image_key), ("label_key", label_key)):
            if not isinstance(key, str):
                raise TypeError(f"{key_name} must be a str, got {type(key).__name__}")
        self.dataset, self.name = dataset, name
        self.image_key, self.label_key = image_key, label_key
        self._noted = False
        if len(dataset) == 0:
            raise ValueError(f"{name} is empty")
        self[0]  # a bad dataset fails here, not an epoch later

    @property
    def targets(self):
        targets = getattr(self.dataset, "targets", None)
        if targets is None:
            raise AttributeError(f"{type(self.dataset).__name__} has no targets")
        return targets

    @property
    def classes(self):
        classes = getattr(self.dataset, "classes", None)
        if classes is None:
            raise AttributeError(f"{type(self.dataset).__name__} has no classes")
        return classes

    def __len__(self) -> int:
        return len(self.dataset)

    def _unpack(self, item, where: str):
        if isinstance(item, Mapping):
            missing = [k for k in (self.image_key, self.label_key) if k not in item]
            if missing:
                raise ValueError(f"{where}: the item has no key {missing[0]!r}; its keys are "
                                 f"{sorted(map(str, item))} (pass image_key= / label_key=)")
            return item[self.image_key], item[self.label_key]
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return item[0], item[1]
        what = (f"a {type(item).__name__} of length {len(item)}"
                if isinstance(item, (tuple, list)) else type(item).__name__)
        raise TypeError(f"{where}: expected an (image, label) pair or a mapping with keys "
                        f"{self.image_key!r} and {self.label_key!r}, got {what}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        where = f"{self.name}[{index}]"
        image, label = self._unpack(self.dataset[index], where)
        x, was_uint8 = image_tensor(image, where)
        if was_uint8 and not self._noted:
            self._noted = True
            _uint8_note(self.name)
        return x, torch.tensor(label_index(label, f"{where} label"), dtype=torch.int64)


def as_image_dataset(dataset: Dataset, name: str = "dataset", *, image_key: str = "image",
                     label_key: str = "label") -> ImageDataset:
    """`dataset` (map-style; items `(image, label)` or `{image_key: ..., label_key: ...}`, the
    image a tensor, numpy array or PIL image) as items (float32 [C, H, W] in [0, 1], int64
    label). uint8 images are divided by 255 with a one-time note; float images outside [0, 1]
    are refused with the range seen and the index. The first item is checked now, every other
    one as it is read; `name` names the dataset in errors."""
    if (isinstance(dataset, ImageDataset) and dataset.image_key == image_key
            and dataset.label_key == label_key):
        return dataset
    return ImageDataset(dataset, name, image_key, label_key)


def _tensor_pair(dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images [N, C, H, W], labels [N]) held by a TensorDataset-like `dataset.tensors`
    attribute (not a method, as `ImageFolderFaces.tensors()` is), else None."""
    pair = getattr(dataset, "tensors", None)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(t, torch.Tensor) for t in pair)):
        return None
    images, labels = pair
    if (images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels)
            or labels.dtype.is_floating_point or labels.dtype == torch.bool
            or (images.dtype != torch.uint8 and images.dtype not in _FLOAT_DTYPES)):
        return None  # the item-by-item path gives the precise error or layout
    return images, labels


def _tensors_directly(images: torch.Tensor, labels: torch.Tensor,
                      name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if len(labels) == 0:
        raise ValueError(f"{name} is empty")
    if is_hwc(tuple(images.shape[1:]), channels_last=False):
        images = images.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        _uint8_note(name)
        images = images.float().div(255.0)
    else:
        lo, hi = torch.aminmax(images.detach())
        if not (float(lo) >= 0.0 and float(hi) <= 1.0):
            flat = images.detach().flatten(1)
            bad = ((flat < 0) | (flat > 1) | flat.isnan()).any(1).nonzero()
            _check_range(images[int(bad[0])], f"{name}[{int(bad[0])}]")
        images = images.to(torch.float32)
    if int(labels.min()) < 0:
        index = int((labels < 0).nonzero()[0])
        raise ValueError(f"{name}[{index}] label: class labels must be >= 0, "
                         f"got {int(labels[index])}")
    return images.contiguous(), labels.to(torch.int64)


def dataset_tensors(dataset: Dataset, name: str = "dataset") -> tuple[torch.Tensor,
                                                                     torch.Tensor]:
    """All (images float32 [N, C, H, W] in [0, 1], labels int64 [N]) of a map-style dataset.

    TensorDataset-like datasets (a `.tensors` attribute holding (images, labels)) are checked
    as a whole and returned without a copy when already float32 NCHW with int64 labels; any
    other dataset is read item by item through `as_image_dataset` (so dict items, PIL images,
    uint8 arrays and `ImageFolderFaces` work), and all images must have one shape.
    """
    pair = _tensor_pair(dataset)
    if pair is not None:
        return _tensors_directly(*pair, name)
    data = as_image_dataset(dataset, name)
    first, label = data[0]
    images = torch.empty((len(data), *first.shape), dtype=torch.float32, device=first.device)
    labels = torch.empty(len(data), dtype=torch.int64)
    images[0], labels[0] = first, label
    for i in range(1, len(data)):
        x, y = data[i]
        if x.shape != first.shape:
            raise ValueError(f"{name}[{i}] has image shape {tuple(x.shape)}, {name}[0] has "
                             f"{tuple(first.shape)}: all images must have one shape (resize "
                             f"them, e.g. ImageFolder(root, size=...))")
        images[i], labels[i] = x, y
    return images, labels
