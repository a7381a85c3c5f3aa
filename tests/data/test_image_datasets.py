"""Loaders for users' own image data: ImageFolder, CIFAR-10 (binary and python batches), npz,
the dataset adaptor, dataset_tensors, data specs; all on files written here in the real
formats."""

import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from trustfast.backdoor import BadNets, poison
from trustfast.backdoor.poison import dataset_tensors as backdoor_dataset_tensors
from trustfast.data import (
    CIFAR10,
    ImageFolder,
    NpzDataset,
    as_image_dataset,
    dataset_info,
    dataset_tensors,
    load_image_data,
    split_dataset,
)
from trustfast.data.cifar import UnsafePickleError
from trustfast.faces import ImageFolderFaces


def _png(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pixels(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


class ListDataset(Dataset):
    """Items given as a list (dicts, PIL images, arrays...): what users' datasets return."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# ---------------------------------------------------------------- ImageFolder

def test_image_folder_gives_the_stored_pixels_and_sorted_labels(tmp_path):
    cat, ant0, ant1 = _pixels(4, 6, 0), _pixels(4, 6, 1), _pixels(4, 6, 2)
    _png(tmp_path / "cat" / "c.png", cat)
    _png(tmp_path / "ant" / "b.png", ant1)
    _png(tmp_path / "ant" / "a.PNG", ant0)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    _png(tmp_path / ".hidden" / "x.png", cat)  # e.g. .ipynb_checkpoints: not a class
    data = ImageFolder(tmp_path)
    assert data.classes == ["ant", "cat"] and data.class_to_idx == {"ant": 0, "cat": 1}
    assert [os.path.basename(p) for p, _ in data.samples] == ["a.PNG", "b.png", "c.png"]
    assert data.targets == [0, 0, 1] and len(data) == 3
    for i, source in enumerate((ant0, ant1, cat)):
        x, label = data[i]
        assert x.dtype == torch.float32 and x.shape == (3, 4, 6) and label == data.targets[i]
        assert torch.equal(x, torch.from_numpy(source).permute(2, 0, 1).float() / 255)


def test_image_folder_grayscale_and_resize(tmp_path):
    gray = _pixels(5, 7, 3, channels=1)
    _png(tmp_path / "a" / "g.png", gray)
    _png(tmp_path / "b" / "flat.png", np.full((6, 6, 3), (10, 200, 30), dtype=np.uint8))
    x, _ = ImageFolder(tmp_path, mode="L")[0]
    assert x.shape == (1, 5, 7) and torch.equal(x[0], torch.from_numpy(gray).float() / 255)
    rgb_as_gray, _ = ImageFolder(tmp_path, mode="L")[1]
    assert rgb_as_gray.shape == (1, 6, 6)
    assert torch.allclose(rgb_as_gray, torch.full((1, 6, 6), (10 * 299 + 200 * 587 + 30 * 114)
                                                  / 1000 / 255), atol=1 / 255)
    resized = ImageFolder(tmp_path, size=(3, 4))
    assert resized[0][0].shape == (3, 3, 4)
    flat, _ = resized[1]  # a flat colour stays exactly that colour under bilinear resizing
    assert torch.equal(flat, torch.tensor([10, 200, 30.0]).div(255).view(3, 1, 1).expand(3, 3, 4))
    assert ImageFolder(tmp_path, size=2)[0][0].shape == (3, 2, 2)


def test_image_folder_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="root must be a folder"):
        ImageFolder(tmp_path / "missing")
    _png(tmp_path / "loose.png", _pixels(2, 2, 0))
    with pytest.raises(ValueError, match="no images in class folders.*1 images directly"):
        ImageFolder(tmp_path)
    _png(tmp_path / "a" / "x.png", _pixels(2, 2, 0))
    with pytest.raises(ValueError, match="mode"):
        ImageFolder(tmp_path, mode="RGBA")
    with pytest.raises(ValueError, match="size"):
        ImageFolder(tmp_path, size=(0, 3))
    with pytest.raises(TypeError, match="transform"):
        ImageFolder(tmp_path, transform="flip")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        ImageFolder(tmp_path)[0]


def test_image_folder_faces_keeps_its_behaviour(tmp_path):
    _png(tmp_path / "bob" / "b.png", _pixels(10, 10, 0))
    _png(tmp_path / "al" / "a.tif", _pixels(10, 10, 1))  # not a face extension: ignored
    faces = ImageFolderFaces(str(tmp_path), size=8)
    assert isinstance(faces, ImageFolder) and faces.size == 8 and len(faces) == 1
    assert faces.classes == ["al", "bob"] and faces.targets == [1]
    assert faces[0][0].shape == (3, 8, 8)
    images, labels = faces.tensors()
    assert torch.equal(images[0], faces[0][0]) and labels.tolist() == [1]
    assert len(ImageFolder(tmp_path)) == 2  # the generic loader reads .tif too
    with pytest.raises(ValueError, match="size"):
        ImageFolderFaces(str(tmp_path), size=(8, 8))


# ---------------------------------------------------------------- CIFAR-10

CLASS_NAMES = [f"class{i}" for i in range(10)]


def _cifar_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.int64))


def _short(b: bytes) -> bytes:  # SHORT_BINSTRING: a Python 2 str
    return b"U" + bytes([len(b)]) + b


def _py2_batch(data: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch pickled as CIFAR-10's own files are (cPickle, protocol 2, Python 2 numpy): str
    keys and array bytes as Python 2 strings, numpy.core.multiarray._reconstruct."""
    i32 = lambda v: b"J" + struct.pack("<i", v)
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i32(0) + b"\x85"
             + _short(b"b") + b"\x87R(" + i32(1) + b"(" + i32(data.shape[0]) + i32(3072)
             + b"tcnumpy\ndtype\n" + _short(b"u1") + i32(0) + i32(1) + b"\x87R(" + i32(3)
             + _short(b"|") + b"NNN" + i32(-1) + i32(-1) + i32(0) + b"tb\x89T"
             + struct.pack("<i", data.size) + data.tobytes() + b"tb")
    label_list = b"](" + b"".join(i32(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + _short(b"batch_label") + _short(b"training batch")
            + _short(b"data") + array + _short(b"labels") + label_list + b"u.")


def _py3_batch(data: np.ndarray, labels: np.ndarray, protocol: int) -> bytes:
    """A batch as a Python 3 user would pickle it: str keys at protocol 4/5 (numpy._core's
    names, _frombuffer at 5), bytes keys at protocol 2 (_codecs.encode for bytes)."""
    if protocol == 2:
        return pickle.dumps({b"data": data, b"labels": labels.tolist()}, protocol=2)
    return pickle.dumps({"data": data, "labels": [np.int64(v) for v in labels]},
                        protocol=protocol)


def _write_cifar(root, train_batches, test_batch, fmt: str) -> None:
    os.makedirs(root, exist_ok=True)
    named = [(f"data_batch_{i + 1}", b) for i, b in enumerate(train_batches)]
    named.append(("test_batch", test_batch))
    if fmt == "binary":
        for name, (data, labels) in named:
            records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
            (root / f"{name}.bin").write_bytes(records.tobytes())
        (root / "batches.meta.txt").write_text("\n".join(CLASS_NAMES) + "\n\n")
        return
    writers = [_py2_batch, lambda d, y: _py3_batch(d, y, 2), lambda d, y: _py3_batch(d, y, 4),
               lambda d, y: _py3_batch(d, y, 5), _py2_batch, lambda d, y: _py3_batch(d, y, 5)]
    for (name, (data, labels)), write in zip(named, writers):
        (root / name).write_bytes(write(data, labels))
    meta = {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


@pytest.fixture
def cifar_parts():
    return [_cifar_split(2, seed) for seed in range(5)], _cifar_split(3, 99)


def test_cifar10_binary_and_python_batches_give_identical_tensors(tmp_path, cifar_parts):
    train_batches, test_batch = cifar_parts
    _write_cifar(tmp_path / "bin" / "cifar-10-batches-bin", train_batches, test_batch, "binary")
    _write_cifar(tmp_path / "py", train_batches, test_batch, "python")
    expected_x = np.concatenate([d for d, _ in train_batches]).reshape(-1, 3, 32, 32)
    expected_y = np.concatenate([y for _, y in train_batches]).tolist()
    for train in (True, False):
        binary = CIFAR10(tmp_path / "bin", train=train)
        python = CIFAR10(str(tmp_path / "py"), train=train)
        assert (binary.format, python.format) == ("binary", "python")
        assert binary.classes == python.classes == CLASS_NAMES
        assert torch.equal(binary.data, python.data) and binary.targets == python.targets
        assert len(binary) == (10 if train else 3)
    train = CIFAR10(tmp_path / "py")
    assert torch.equal(train.data, torch.from_numpy(expected_x)) and train.targets == expected_y
    x, label = train[3]  # batch 2, image 1: channel-major bytes, 32 x 32 row-major
    assert x.dtype == torch.float32 and label == expected_y[3]
    assert torch.equal(x, torch.from_numpy(train_batches[1][0][1]).view(3, 32, 32).float() / 255)
    assert CIFAR10(tmp_path / "py", size=8)[0][0].shape == (3, 8, 8)
    spec_train, spec_test = load_image_data(f"cifar10:{tmp_path / 'bin'}")
    assert torch.equal(spec_train.data, train.data) and len(spec_test) == 3
    assert dataset_info(spec_test) == {"n": 3, "num_classes": 10, "image_shape": (3, 32, 32)}


class _RunsCode:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evaluates:
    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return eval, (self.source,)


@pytest.mark.parametrize("where", ["test_batch", "nested", "meta", "eval"])
def test_cifar10_python_batch_with_a_code_running_pickle_is_refused(tmp_path, cifar_parts,
                                                                   where):
    train_batches, test_batch = cifar_parts
    _write_cifar(tmp_path, train_batches, test_batch, "python")
    marker = tmp_path / "ran"
    payload = _RunsCode(f"touch {marker}")
    if where == "eval":
        payload = _Evaluates(f"open({str(marker)!r}, 'w')")
    data, labels = test_batch
    if where == "nested":
        evil = pickle.dumps({b"data": data, b"labels": [payload] * len(labels)}, protocol=2)
    else:
        evil = pickle.dumps(payload, protocol=2)
    target = "batches.meta" if where == "meta" else "test_batch"
    (tmp_path / target).write_bytes(evil)
    with pytest.raises(UnsafePickleError, match=f"{target}.*refusing.*(system|eval)"):
        CIFAR10(tmp_path, train=False)
    with pytest.raises(ValueError, match="data .*refusing"):
        load_image_data(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_cifar10_refuses_truncated_or_missing_batches(tmp_path, cifar_parts):
    train_batches, test_batch = cifar_parts
    _write_cifar(tmp_path, train_batches, test_batch, "binary")
    raw = (tmp_path / "test_batch.bin").read_bytes()
    (tmp_path / "test_batch.bin").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="test_batch.bin.*truncated"):
        CIFAR10(tmp_path, train=False)
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(ValueError, match="data_batch_4"):
        CIFAR10(tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="no CIFAR-10 batches"):
        CIFAR10(tmp_path / "other")
    with pytest.raises(TypeError, match="train"):
        CIFAR10(tmp_path, train="yes")


# ---------------------------------------------------------------- npz

def test_npz_nhwc_uint8_and_nchw_float_give_the_same_images(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (6, 5, 6, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)
    np.savez(tmp_path / "keras.npz", x_train=nhwc[:4], y_train=labels[:4], x_test=nhwc[4:],
             y_test=labels[4:])
    nchw = nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 255
    np.savez(tmp_path / "single.npz", x=nchw, y=labels.astype(np.int64))
    train, test = NpzDataset(tmp_path / "keras.npz"), NpzDataset(tmp_path / "keras.npz", "test")
    single = NpzDataset(tmp_path / "single.npz")
    assert (len(train), len(test), len(single)) == (4, 2, 6)
    for i in range(6):
        x, label = (train[i] if i < 4 else test[i - 4])
        y, same_label = single[i]
        assert x.shape == (3, 5, 6) and x.dtype == torch.float32
        assert torch.equal(x, y) and label == same_label == labels[i]
    assert torch.equal(single.targets, torch.from_numpy(labels.astype(np.int64)))
    np.savez(tmp_path / "gray.npz", images=nhwc[..., 0], labels=labels)
    assert NpzDataset(tmp_path / "gray.npz")[0][0].shape == (1, 5, 6)
    # [N, 3, 3, 3]: both end axes could be channels; numpy's NHWC unless told
    cube = rng.integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "cube.npz", x=cube, y=np.zeros(2, dtype=np.int64))
    as_nchw = NpzDataset(tmp_path / "cube.npz", layout="NCHW")[1][0]
    assert torch.equal(as_nchw, torch.from_numpy(cube[1]).float() / 255)
    assert torch.equal(NpzDataset(tmp_path / "cube.npz")[1][0],
                       torch.from_numpy(cube[1]).permute(2, 0, 1).float() / 255)


def test_npz_refuses_bad_files_without_unpickling(tmp_path):
    labels = np.zeros(3, dtype=np.int64)
    x = np.full((3, 1, 2, 2), 0.5, np.float32)
    x[2] = 2.5
    np.savez(tmp_path / "range.npz", x=x, y=labels)
    with pytest.raises(ValueError, match=r"x\[2\] has values in \[2.5, 2.5\]"):
        NpzDataset(tmp_path / "range.npz")
    marker = tmp_path / "ran"
    evil = np.empty(3, dtype=object)
    evil[:] = [_RunsCode(f"touch {marker}")] * 3
    np.savez(tmp_path / "objects.npz", x=evil, y=labels)  # np.savez pickles object arrays
    with pytest.raises(ValueError, match="objects.npz.*cannot read 'x'"):
        NpzDataset(tmp_path / "objects.npz")
    assert not marker.exists()
    np.savez(tmp_path / "single.npz", x=np.zeros((3, 1, 2, 2), np.uint8), y=labels)
    with pytest.raises(ValueError, match="holds only"):
        NpzDataset(tmp_path / "single.npz", split="test")
    np.savez(tmp_path / "keys.npz", a=np.zeros(3), b=labels)
    with pytest.raises(ValueError, match=r"x_train.*\['a', 'b'\]"):
        NpzDataset(tmp_path / "keys.npz")
    np.savez(tmp_path / "floaty.npz", x=np.zeros((3, 1, 2, 2), np.uint8), y=labels + 0.5)
    with pytest.raises(TypeError, match="integer class"):
        NpzDataset(tmp_path / "floaty.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="junk.npz"):
        NpzDataset(tmp_path / "junk.npz")


# ---------------------------------------------------------------- the adaptor

def test_as_image_dataset_converts_uint8_once_and_reads_dicts_and_pil():
    arrays = [_pixels(4, 5, seed) for seed in range(3)]
    items = [{"image": a, "label": np.int64(i), "id": f"img{i}"} for i, a in enumerate(arrays)]
    with pytest.warns(UserWarning, match="photos: uint8 images converted to float32") as seen:
        data = as_image_dataset(ListDataset(items), "photos")
        got = [data[i] for i in range(3)]
    assert len([w for w in seen if "uint8" in str(w.message)]) == 1
    for (x, label), a, i in zip(got, arrays, range(3)):
        assert x.shape == (3, 4, 5) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(a).permute(2, 0, 1).float() / 255)
        assert label.dtype == torch.int64 and int(label) == i
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL images are 8-bit by nature: no note
        pil = as_image_dataset(ListDataset([(Image.fromarray(arrays[0]), 1),
                                            (Image.fromarray(arrays[1][..., 0]), 0)]))
        assert torch.equal(pil[0][0], got[0][0]) and pil[1][0].shape == (1, 4, 5)
    keyed = as_image_dataset(ListDataset([{"img": torch.rand(3, 4, 4), "y": 2}]),
                             image_key="img", label_key="y")
    assert int(keyed[0][1]) == 2


def test_as_image_dataset_refuses_out_of_range_floats_with_the_range_and_index():
    items = [(torch.rand(3, 4, 4), 0), (torch.rand(3, 4, 4), 1),
             (torch.linspace(-0.5, 1.5, 48).view(3, 4, 4), 0)]
    data = as_image_dataset(ListDataset(items), "train")  # item 0 is fine
    with pytest.raises(ValueError, match=r"train\[2\].*range \[-0.5, 1.5\]"):
        data[2]
    with pytest.raises(ValueError, match=r"dataset\[0\].*range \[0, 255\]"):
        as_image_dataset(ListDataset([(torch.arange(256.0).view(1, 16, 16), 0)]))
    with pytest.raises(ValueError, match=r"range \[nan, nan\]"):
        as_image_dataset(ListDataset([(torch.full((1, 2, 2), float("nan")), 0)]))
    with pytest.raises(ValueError, match="no key 'label'.*'target'"):
        as_image_dataset(ListDataset([{"image": torch.rand(1, 2, 2), "target": 0}]))
    with pytest.raises(TypeError, match="integer class index"):
        as_image_dataset(ListDataset([(torch.rand(1, 2, 2), 0.0)]))
    with pytest.raises(TypeError, match="int64"):
        as_image_dataset(ListDataset([(torch.zeros(1, 2, 2, dtype=torch.int64), 0)]))
    with pytest.raises(ValueError, match="empty"):
        as_image_dataset(ListDataset([]))


# ---------------------------------------------------------------- dataset_tensors, poison

def _face_tree(root, n: int = 10) -> list[np.ndarray]:
    arrays = [_pixels(8, 8, seed) for seed in range(n)]
    for i, a in enumerate(arrays):
        _png(root / f"person{i % 2}" / f"{i:02d}.png", a)
    return arrays


def test_dataset_tensors_on_tensor_folder_and_dict_datasets(tmp_path):
    assert backdoor_dataset_tensors is dataset_tensors
    arrays = _face_tree(tmp_path)
    faces = ImageFolderFaces(str(tmp_path), size=8)
    images, labels = dataset_tensors(faces)
    order = [int(os.path.basename(p)[:2]) for p, _ in faces.samples]
    expected = torch.stack([torch.from_numpy(arrays[i]).permute(2, 0, 1) for i in order]) / 255
    assert torch.equal(images, expected) and labels.tolist() == faces.targets
    dicts = ListDataset([{"image": x, "label": y} for x, y in zip(images, labels)])
    again = dataset_tensors(dicts)
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)
    tensors = TensorDataset(images, labels)
    assert dataset_tensors(tensors)[0] is images  # no copy of a TensorDataset
    with pytest.warns(UserWarning, match="uint8"):
        converted = dataset_tensors(TensorDataset((images * 255).round().to(torch.uint8), labels))
    assert torch.equal(converted[0], images)
    bad = images.clone()
    bad[7, 1, 2, 3] = 1.25
    with pytest.raises(ValueError, match=r"dataset\[7\].*1.25"):
        dataset_tensors(TensorDataset(bad, labels))
    mixed = ListDataset([(torch.rand(3, 4, 4), 0), (torch.rand(3, 5, 4), 1)])
    with pytest.raises(ValueError, match=r"dataset\[1\] has image shape \(3, 5, 4\)"):
        dataset_tensors(mixed)


def test_poison_gives_the_same_result_on_folder_dict_and_tensor_datasets(tmp_path):
    _face_tree(tmp_path)
    faces = ImageFolderFaces(str(tmp_path), size=8)
    images, labels = faces.tensors()
    dicts = ListDataset([{"image": x, "label": int(y)} for x, y in zip(images, labels)])
    reference = poison(TensorDataset(images, labels), BadNets(), 0.2, 0)
    for data in (faces, dicts):
        out = poison(data, BadNets(), 0.2, 0)
        assert torch.equal(out.images, reference.images)
        assert torch.equal(out.labels, reference.labels)
        assert torch.equal(out.poisoned, reference.poisoned) and int(out.poisoned.sum()) == 2


# ---------------------------------------------------------------- specs and dataset_info

def test_load_image_data_specs_and_their_splits(tmp_path):
    train, test = load_image_data("digits", seed=0)
    assert dataset_info(train) == {"n": 1438, "num_classes": 10, "image_shape": (1, 8, 8)}
    assert dataset_info(load_image_data("colored_digits", size=32)[1])["image_shape"] == \
        (3, 32, 32)
    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            for i in range(n):
                _png(tmp_path / "split" / split / c / f"{i}.png", _pixels(6, 6, i))
    train, test = load_image_data(f"imagefolder:{tmp_path / 'split'}", size=4)
    assert (len(train), len(test), train.classes) == (6, 4, ["a", "b"])
    assert train[0][0].shape == (3, 4, 4)
    for i in range(10):
        _png(tmp_path / "flat" / f"c{i % 3}" / f"{i}.png", _pixels(4, 4, i))
    train, test = load_image_data(f"imagefolder:{tmp_path / 'flat'}", test_fraction=0.3, seed=1)
    assert (len(train), len(test)) == (7, 3)
    assert dataset_info(test) == {"n": 3, "num_classes": 3, "image_shape": (3, 4, 4)}
    same = load_image_data(f"imagefolder:{tmp_path / 'flat'}", test_fraction=0.3, seed=1)[1]
    other = load_image_data(f"imagefolder:{tmp_path / 'flat'}", test_fraction=0.3, seed=2)[1]
    assert same.indices == test.indices and other.indices != test.indices
    assert test.targets == [test.dataset.targets[i] for i in test.indices]
    x = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "two.npz", x_train=x[:3], y_train=np.arange(3), x_test=x[3:],
             y_test=np.arange(2))
    np.savez(tmp_path / "one.npz", images=x, labels=np.arange(5))
    train, test = load_image_data(f"npz:{tmp_path / 'two.npz'}")
    assert (len(train), len(test)) == (3, 2) and test[1][1] == 1
    assert torch.equal(test[0][0], torch.from_numpy(x[3]).permute(2, 0, 1).float() / 255)
    train, test = load_image_data(f"npz:{tmp_path / 'one.npz'}", test_fraction=0.4)
    assert (len(train), len(test)) == (3, 2)
    assert dataset_info(train)["num_classes"] == max(train.targets) + 1


def test_dataset_info_without_targets_reads_the_items():
    data = ListDataset([{"image": torch.rand(2, 3, 5), "label": i % 4} for i in range(6)])
    assert dataset_info(data) == {"n": 6, "num_classes": 4, "image_shape": (2, 3, 5)}
    train, test = split_dataset(data, 0.5, seed=0)
    assert len(train) == len(test) == 3 and not hasattr(train, "targets")


@pytest.mark.parametrize("spec, error, pattern", [
    ("mnist", ValueError, "data: unknown data spec 'mnist'.*imagefolder:DIR"),
    ("hf:foo/bar", ValueError, "data: unknown data spec"),
    ("imagefolder:", ValueError, "data 'imagefolder:': no path"),
    ("imagefolder:{tmp}/missing", ValueError, "data .*no such folder"),
    ("imagefolder:{tmp}/empty", ValueError, "data .*holds no images"),
    ("cifar10:{tmp}/empty", ValueError, "data .*no CIFAR-10 batches"),
    ("npz:{tmp}/missing.npz", ValueError, "data .*no such file"),
    ("digits:/some/path", ValueError, "data 'digits:/some/path': digits is built in"),
    (3, TypeError, "data must be a string"),
])
def test_load_image_data_errors_name_data(tmp_path, spec, error, pattern):
    (tmp_path / "empty").mkdir()
    if isinstance(spec, str):
        spec = spec.replace("{tmp}", str(tmp_path))
    with pytest.raises(error, match=pattern):
        load_image_data(spec)


def test_load_image_data_refuses_train_and_test_folders_with_other_classes(tmp_path):
    for split, classes in (("train", "ab"), ("test", "ac")):
        for c in classes:
            _png(tmp_path / split / c / "0.png", _pixels(2, 2, 0))
    with pytest.raises(ValueError, match=r"data .*same class folders.*train: \['b'\].*test: "
                                         r"\['c'\]"):
        load_image_data(f"imagefolder:{tmp_path}")


def test_load_image_data_refuses_bad_options():
    with pytest.raises(ValueError, match="test_fraction"):
        load_image_data("digits", test_fraction=1.0)
    with pytest.raises(ValueError, match="size"):
        load_image_data("digits", size=(8, 16))
    with pytest.raises(ValueError, match="size"):
        load_image_data("digits", size=0)
