"""CIFAR-10 from the files Krizhevsky distributes (nothing is downloaded).

Two formats are read, found in `root` itself or in its `cifar-10-batches-bin` /
`cifar-10-batches-py` sub-folder (the binary one first when both are there):
  - binary: `data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`; records of one label byte
    then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each row-major 32 x 32); class names
    from `batches.meta.txt` (one a line) when present.
  - python: `data_batch_1` .. `data_batch_5`, `test_batch`; pickled dicts with b"data" (N x 3072
    uint8, the same CHW byte order) and b"labels"; class names from `batches.meta`
    (b"label_names"). These are pickles, so they are read only through `SafeArrayUnpickler`,
    which admits numpy arrays and plain containers and refuses every other global (a pickle that
    would call `os.system` is refused before anything runs).
"""

from __future__ import annotations

import codecs
import os
import pickle

import numpy as np
import torch
from torch.utils.data import Dataset

from trustfast.data.images import ImageSize, image_size, resize_image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_RECORD = 1 + 3 * 32 * 32
_FORMATS = (("binary", "cifar-10-batches-bin", ".bin"), ("python", "cifar-10-batches-py", ""))


class UnsafePickleError(ValueError):
    """A pickle asked for a global outside what `SafeArrayUnpickler` admits."""


def _latin1_encode(text, encoding="utf-8"):
    """`_codecs.encode` as Python 3 pickles bytes at protocol 2 (`encode(str, "latin1")`),
    and nothing else."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode is admitted only as encode(str, 'latin1'), "
                                f"got encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The globals numpy's array pickles reference, under the module names of numpy 1.x
    (`numpy.core`, also what CIFAR-10's Python 2 pickles name) and numpy 2.x (`numpy._core`)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    found: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray,
                                            ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        # protocol <= 4: _reconstruct(ndarray, shape, typecode) then ndarray.__setstate__
        found[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # numpy scalars (np.int64 labels, say): scalar(dtype, bytes)
        found[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        # protocol 5: _frombuffer(buffer, dtype, shape, order)
        found[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return found


def _allowed_globals() -> dict[tuple[str, str], object]:
    import builtins

    allowed = _numpy_globals()
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 pickles
        for name in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray"):
            allowed[(module, name)] = getattr(builtins, name)
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class SafeArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, numpy scalars and plain containers (dict, list,
    tuple, set, bytes, str, numbers) and refuses any other global with `UnsafePickleError`
    naming `path` and the global. Bytes of Python 2 pickles are read as bytes
    (`encoding="bytes"`, as CIFAR-10's page says)."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="bytes")
        self.path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"{self.path}: refusing to unpickle {module}.{name}: a CIFAR-10 python batch "
                f"holds only numpy arrays and plain containers, so this file is not one (it "
                f"may run code if loaded with pickle.load); use the binary batches instead")
        return found

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.path}: refusing a persistent id in a CIFAR-10 batch")


def load_python_batch(path: str) -> dict:
    """One CIFAR-10 python batch (or `batches.meta`) through `SafeArrayUnpickler`; str keys
    are turned into bytes keys (b"data"), as in the original files."""
    try:
        with open(path, "rb") as f:
            obj = SafeArrayUnpickler(f, path).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated or not a pickle: only admitted callables ran
        raise ValueError(f"{path}: not a readable CIFAR-10 python batch "
                         f"({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _check_labels(labels: np.ndarray, n: int, path: str, classes: int) -> np.ndarray:
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected {n} integer labels, got {labels.dtype} "
                         f"{labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{path}: labels must be in [0, {classes}), saw "
                         f"[{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def _read_binary(path: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {_RECORD}-byte "
                         f"records (1 label byte + 3072 pixel bytes): the file is truncated or "
                         f"not a CIFAR-10 binary batch")
    records = raw.reshape(-1, _RECORD)
    labels = _check_labels(records[:, 0], len(records), path, classes)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _read_python(path: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_python_batch(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        what = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise ValueError(f"{path}: b'data' must be a uint8 array N x 3072, got {what}")
    if labels is None:
        raise ValueError(f"{path}: no b'labels' entry")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: b'labels' is not a list of ints ({err})") from err
    labels = _check_labels(labels, len(data), path, classes)
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(folder: str, fmt: str) -> list[str]:
    """The names in batches.meta.txt (binary) or batches.meta (python), else CIFAR-10's."""
    n = len(CIFAR10_CLASSES)
    path = os.path.join(folder, "batches.meta.txt" if fmt == "binary" else "batches.meta")
    if not os.path.isfile(path):
        return list(CIFAR10_CLASSES)
    if fmt == "binary":
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = load_python_batch(path).get(b"label_names")
        if isinstance(names, list):
            names = [x.decode("utf-8") if isinstance(x, bytes) else x for x in names]
    if not (isinstance(names, list) and len(names) == n and all(isinstance(x, str) for x in names)):
        raise ValueError(f"{path}: expected the {n} CIFAR-10 class names, got {names!r:.200}")
    return names


def find_cifar10(root: str) -> tuple[str, str]:
    """(format "binary" or "python", folder holding the batches) under `root`."""
    for fmt, sub, ext in _FORMATS:
        for folder in (root, os.path.join(root, sub)):
            names = (*TRAIN_BATCHES, TEST_BATCH)
            if any(os.path.isfile(os.path.join(folder, n + ext)) for n in names):
                return fmt, folder
    raise ValueError(f"root {root!r} holds no CIFAR-10 batches: expected data_batch_1.bin .. "
                     f"test_batch.bin (binary) or data_batch_1 .. test_batch (python), in it or "
                     f"in its cifar-10-batches-bin / cifar-10-batches-py folder")


class CIFAR10(Dataset):
    """CIFAR-10's training (`train=True`: data_batch_1..5, 50,000 images) or test split
    (test_batch, 10,000) from its binary or python batches (see the module docstring).

    `data` holds the images as uint8 [N, 3, 32, 32], `targets` the labels (list of int),
    `classes` the class names, `format` which files were read. Items are
    (float32 [3, 32, 32] in [0, 1], int label), resized bilinearly to `size` when given.
    """

    def __init__(self, root: str | os.PathLike, train: bool = True,
                 size: ImageSize | None = None):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
        if not isinstance(train, bool):
            raise TypeError(f"train must be a bool, got {type(train).__name__}")
        root = os.fspath(root)
        self._hw = image_size(size)
        if not os.path.isdir(root):
            raise ValueError(f"root must be a folder holding CIFAR-10 batches, got {root!r}")
        self.root, self.train, self.size = root, train, size
        self.format, self.folder = find_cifar10(root)
        ext = ".bin" if self.format == "binary" else ""
        files = [os.path.join(self.folder, n + ext)
                 for n in (TRAIN_BATCHES if train else (TEST_BATCH,))]
        missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"root {root!r}: the {self.format} CIFAR-10 batches in "
                             f"{self.folder!r} lack {missing}")
        self.classes = _class_names(self.folder, self.format)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        read = _read_binary if self.format == "binary" else _read_python
        parts = [read(f, len(self.classes)) for f in files]
        self.data = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        self.targets: list[int] = np.concatenate([p[1] for p in parts]).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.data[index].float().div(255.0)
        if self._hw is not None:
            x = resize_image(x, self._hw)
        return x, self.targets[index]
