"""Face datasets on disk: CASIA-WebFace-style identity folders and LFW-style pairs files.

Nothing is downloaded: point these at data you have. Images are read by `trustfast.data`'s
`load_image` (PIL), converted to RGB, resized to `size` x `size` (bilinear) when they differ, and
returned as float32 [3, size, size] in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

from trustfast.data import images as _images
from trustfast.data.images import ImageFolder

# The extensions face folders are read with (a subset of trustfast.data.IMAGE_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")


def load_image(path: str, size: int | None = 112) -> torch.Tensor:
    """One image file as float32 [3, size, size] in [0, 1] (size None: as stored)."""
    if size is not None:
        _check_size(size)
    return _images.load_image(path, size, mode="RGB")


class ImageFolderFaces(ImageFolder):
    """Faces laid out as `root/<identity>/<image>` (CASIA-WebFace, VGGFace2, MS1M exports).

    A `trustfast.data.ImageFolder` in RGB at `size` x `size`. Labels are the index of the
    identity folder in sorted order (`classes[label]` is its name); `samples` lists
    (path, label) sorted by identity then file name. Items are
    (image float32 [3, size, size] in [0, 1], label), passed through `transform` if given.
    Files with other extensions than `IMAGE_EXTENSIONS` are ignored.
    """

    def __init__(self, root: str, size: int = 112,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        _check_size(size)
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {type(transform).__name__}")
        super().__init__(root, size=size, mode="RGB", transform=transform,
                         extensions=IMAGE_EXTENSIONS)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All items stacked: (images [N, 3, size, size], labels int64 [N]) for small sets."""
        xs = [self[i][0] for i in range(len(self))]
        return torch.stack(xs), torch.tensor(self.targets, dtype=torch.int64)


def read_pairs(path: str, root: str, ext: str = "jpg") -> list[tuple[str, str, bool]]:
    """Parse an LFW-style pairs file into (path_a, path_b, same) in file order.

    Lines "name n1 n2" are genuine pairs (two images of `name`), lines "name1 n1 name2 n2"
    impostor pairs; image n of `name` is `root/name/name_%04d.<ext>`. A first line of integers
    only (LFW's "10 300": folds and pairs per fold) is a header and skipped; blank lines are
    skipped. Fields may be separated by tabs or spaces.
    """
    if not os.path.isfile(path):
        raise ValueError(f"path must be a pairs file, got {path!r}")
    pairs = []

    def image(name: str, number: str, lineno: int) -> str:
        if not number.isdigit():
            raise ValueError(f"{path}:{lineno}: image number must be a non-negative integer, "
                             f"got {number!r}")
        return os.path.join(root, name, f"{name}_{int(number):04d}.{ext}")

    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if lineno == 1 and all(t.isdigit() for t in fields):
                continue
            if len(fields) == 3:
                name, n1, n2 = fields
                pairs.append((image(name, n1, lineno), image(name, n2, lineno), True))
            elif len(fields) == 4:
                name1, n1, name2, n2 = fields
                pairs.append((image(name1, n1, lineno), image(name2, n2, lineno), False))
            else:
                raise ValueError(f"{path}:{lineno}: expected 'name n1 n2' or "
                                 f"'name1 n1 name2 n2', got {line.strip()!r}")
    return pairs


def load_pairs(pairs: Sequence[tuple[str, str, bool]],
               size: int = 112) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images_a, images_b [P, 3, size, size], same bool [P]) for pairs from `read_pairs`."""
    if not pairs:
        raise ValueError("pairs must not be empty")
    a = torch.stack([load_image(p[0], size) for p in pairs])
    b = torch.stack([load_image(p[1], size) for p in pairs])
    return a, b, torch.tensor([bool(p[2]) for p in pairs])
