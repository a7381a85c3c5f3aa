"""Image files on disk: `load_image` and `ImageFolder` (torchvision's `root/<class>/<image>`
layout, without torchvision).

Images are read with PIL (installed with matplotlib), converted to `mode` ("RGB": 3 channels,
"L": 1 channel), resized with PIL's bilinear filter when `size` is given and differs, and
returned as float32 [C, H, W] in [0, 1] (the stored 8-bit values divided by 255).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as fn
from torch.utils.data import Dataset

# torchvision's IMG_EXTENSIONS (lower case; matched case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGE_MODES = {"RGB": 3, "L": 1}

ImageSize = int | tuple[int, int]


def image_size(size, name: str = "size") -> tuple[int, int] | None:
    """`size` as (height, width): None stays None, an int s is (s, s), a pair is checked."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
        return size, size
    if (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        return int(size[0]), int(size[1])
    raise ValueError(f"{name} must be a positive int or (height, width) of positive ints, "
                     f"got {size!r}")


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] in [0, 1] resized to `size` = (height, width): bilinear, antialiased when it
    shrinks (as PIL's bilinear filter), clamped back to [0, 1]. Unchanged when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = fn.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]
    return out.clamp(0.0, 1.0)


def _check_mode(mode) -> None:
    if mode not in IMAGE_MODES:
        raise ValueError(f"mode must be one of {sorted(IMAGE_MODES)}, got {mode!r}")


def load_image(path: str | os.PathLike, size: ImageSize | None = None,
               mode: str = "RGB") -> torch.Tensor:
    """One image file as float32 [C, H, W] in [0, 1]: C = 3 for mode "RGB", 1 for "L".

    `size` (an int for square images, or (height, width)) resizes with PIL's bilinear filter
    when the stored size differs; None keeps the stored size. An unreadable file is a
    ValueError naming it.
    """
    from PIL import Image, UnidentifiedImageError

    hw = image_size(size)
    _check_mode(mode)
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if hw is not None and im.size != (hw[1], hw[0]):
                im = im.resize((hw[1], hw[0]), Image.BILINEAR)
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            x = data.view(im.size[1], im.size[0], IMAGE_MODES[mode])
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read the image {os.fspath(path)!r}: {err}") from err
    return x.permute(2, 0, 1).float().div(255.0)


class ImageFolder(Dataset):
    """Images laid out as `root/<class>/<image>` (torchvision's ImageFolder layout).

    `classes` are the sub-folder names in sorted order (folders whose name starts with "." are
    skipped), `class_to_idx` maps a name to its label, `samples` lists (path, label) sorted by
    class then file name (files directly inside each class folder whose extension is in
    `extensions`, case-insensitively), `targets` the labels. Items are
    (float32 [C, H, W] in [0, 1], int label), C = 3 for mode "RGB" and 1 for "L", resized to
    `size` (int or (height, width)) when given, passed through `transform` when given.
    """

    def __init__(self, root: str | os.PathLike, size: ImageSize | None = None,
                 mode: str = "RGB",
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
        root = os.fspath(root)
        self._hw = image_size(size)
        _check_mode(mode)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        if isinstance(extensions, str) or not all(isinstance(e, str) for e in extensions):
            raise TypeError(f"extensions must be a sequence of suffixes such as ('.png',), "
                            f"got {extensions!r}")
        if not os.path.isdir(root):
            raise ValueError(f"root must be a folder of class folders (root/<class>/<image>), "
                             f"got {root!r}")
        self.root, self.size, self.mode, self.transform = root, size, mode, transform
        self.extensions = tuple(e.lower() for e in extensions)
        self.classes = sorted(e.name for e in os.scandir(root)
                              if e.is_dir() and not e.name.startswith("."))
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            files = sorted(f for f in os.listdir(folder)
                           if f.lower().endswith(self.extensions)
                           and os.path.isfile(os.path.join(folder, f)))
            self.samples += [(os.path.join(folder, f), label) for f in files]
        if not self.samples:
            loose = [f for f in os.listdir(root) if f.lower().endswith(self.extensions)]
            hint = (f"; it holds {len(loose)} images directly: put them in one folder per class"
                    if loose else "")
            raise ValueError(f"root {root!r} holds no images in class folders "
                             f"(root/<class>/<image>, extensions {self.extensions}){hint}")
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        x = load_image(path, self._hw, self.mode)
        return (self.transform(x) if self.transform is not None else x), label
