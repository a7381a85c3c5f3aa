"""trustfast.data.skin: the procedural skin-lesion generator (determinism, frequencies, class
separability, tone ordering, lower lesion contrast on dark skin), SkinDataset, and the
Fitzpatrick17k-layout loader on files written here."""

import csv
import math
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trustfast.data import dataset_tensors
from trustfast.data.skin import (
    DEFAULT_GROUP_FREQS,
    EXTRA_LESION_CLASS,
    LESION_CLASSES,
    SKIN_TONES,
    SkinDataset,
    class_names_for,
    default_class_freqs,
    skin_folder,
    synthetic_skin,
)


@pytest.fixture(scope="module")
def big():
    """5,000 images at 32 px (about 0.6 s on one thread), shared by the statistics tests."""
    return synthetic_skin(5000, size=32, seed=0)


def _frame(images: torch.Tensor, width: int = 3) -> torch.Tensor:
    """(N, 3, P) pixels of the outer frame of each image: skin, away from the lesion."""
    top, bottom = images[:, :, :width].flatten(2), images[:, :, -width:].flatten(2)
    left = images[:, :, width:-width, :width].flatten(2)
    right = images[:, :, width:-width, -width:].flatten(2)
    return torch.cat([top, bottom, left, right], 2)


def _centre(images: torch.Tensor, radius: float) -> torch.Tensor:
    """(N, 3, P) pixels within `radius` pixels of the image centre."""
    size = images.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mid = (size - 1) / 2
    return images[:, :, ((yy - mid) ** 2 + (xx - mid) ** 2) <= radius ** 2]


# ---------------------------------------------------------------- the generator

def test_same_seed_same_tensors_other_seed_differs():
    a, b = synthetic_skin(40, size=16, seed=3), synthetic_skin(40, size=16, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.groups, b.groups)
    c = synthetic_skin(40, size=16, seed=4)
    assert not torch.equal(a.images, c.images)
    assert (a.images - c.images).abs().mean() > 0.02


@pytest.mark.parametrize("size", [16, 32, 64, 8, 23])
def test_shapes_dtypes_and_range(size):
    data = synthetic_skin(30, size=size, seed=1)
    assert data.images.shape == (30, 3, size, size) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64 and data.groups.dtype == torch.int64
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    assert torch.isfinite(data.images).all()
    assert data.class_names == LESION_CLASSES and data.group_names == SKIN_TONES
    assert data.num_classes == 5 and data.num_groups == 6
    # not a flat picture: skin texture, lesion and noise vary within each image
    assert float(data.images.flatten(1).std(1).min()) > 0.005


def test_group_frequencies_follow_the_requested_ones(big):
    share = big.group_counts().double() / len(big)
    assert torch.allclose(share, torch.tensor(DEFAULT_GROUP_FREQS, dtype=torch.float64),
                          atol=0.02), share
    assert int(big.cell_counts().sum()) == 5000


def test_class_frequencies_differ_by_group(big):
    cells = big.cell_counts().double()
    rows = cells / cells.sum(1, keepdim=True)
    want = default_class_freqs(5)
    assert torch.allclose(rows[0], want[0], atol=0.04), rows[0]  # tone I: ~2000 images
    # pigmented lesions commoner on tone I, papules on tone VI; total variation between rows
    assert rows[0, 0] - rows[5, 0] > 0.1 and rows[5, 3] - rows[0, 3] > 0.1
    assert 0.5 * float((rows[0] - rows[5]).abs().sum()) > 0.2
    assert not torch.allclose(want[0], want[5], atol=0.05)
    assert torch.allclose(want.sum(1), torch.ones(6, dtype=torch.float64))


def test_given_frequencies_are_used():
    # one-hot class rows: each group's images all get one class; zero-frequency groups vanish
    freqs = torch.zeros(6, 4, dtype=torch.float64)
    freqs[torch.arange(6), torch.arange(6) % 4] = 1.0
    data = synthetic_skin(300, size=8, group_freqs=(2, 0, 1, 1, 0, 1), class_freqs=freqs,
                          num_classes=4)
    assert torch.equal(data.labels, data.groups % 4)
    counts = data.group_counts()
    assert counts[1] == 0 and counts[4] == 0 and counts[0] > counts[2]
    assert data.class_names == ("nevus", "irregular", "ring", "papules")


def test_six_classes_add_the_depigmented_patch():
    assert class_names_for(6) == (*LESION_CLASSES, EXTRA_LESION_CLASS)
    data = synthetic_skin(400, size=16, num_classes=6)
    assert data.num_classes == 6 and set(data.labels.tolist()) == set(range(6))
    # a pale patch: its centre is lighter than the surrounding skin (on tones III-VI; on the
    # lightest skin depigmentation barely shows, as in clinical photographs)
    sel = (data.labels == 5) & (data.groups >= 2)
    assert (_centre(data.images[sel], 1.5).mean((1, 2))
            > _frame(data.images[sel]).mean((1, 2))).float().mean() > 0.9


def test_classes_are_visibly_distinct():
    from sklearn.linear_model import LogisticRegression

    train, test = synthetic_skin(2000, size=16, seed=0), synthetic_skin(800, size=16, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs may stop at max_iter: the score is what counts
        clf = LogisticRegression(max_iter=200, C=0.1).fit(train.images.flatten(1).numpy(),
                                                          train.labels.numpy())
    accuracy = float((clf.predict(test.images.flatten(1).numpy())
                      == test.labels.numpy()).mean())
    majority = float(test.class_counts().max()) / len(test)
    assert accuracy > 0.65 and accuracy > 2 * majority, (accuracy, majority)


def test_skin_darkens_from_tone_one_to_six(big):
    skin = _frame(big.images).mean((1, 2))
    means = torch.stack([skin[big.groups == g].mean() for g in range(6)])
    assert bool((means[1:] < means[:-1] - 0.04).all()), means
    assert means[0] > 0.75 and means[5] < 0.3


def test_lesions_are_less_contrasted_on_dark_skin(big):
    # centre-minus-skin colour distance for lesions that cover the image centre
    contrast = (_centre(big.images, 2.5).mean(2) - _frame(big.images).mean(2)).norm(dim=1)
    for c in (0, 1, 3, 4):  # nevus, irregular, papules, plaque
        light = contrast[(big.labels == c) & (big.groups == 0)].mean()
        dark = contrast[(big.labels == c) & (big.groups == 5)].mean()
        assert dark < 0.5 * light, (big.class_names[c], float(light), float(dark))
    # the ring leaves its centre clear: compare the spread of brightness within images
    spread = big.images.mean(1).flatten(1).std(1)
    ring = big.labels == 2
    assert spread[ring & (big.groups == 5)].mean() < 0.5 * spread[ring & (big.groups == 0)].mean()
    # and a nevus darkens its centre on every tone: the lesion is still there
    nevus = big.labels == 0
    assert bool((contrast[nevus & (big.groups == 5)] > 0.03).float().mean() > 0.9)


def test_dark_fade_sets_how_much_lesions_fade_on_dark_skin():
    faded, plain = synthetic_skin(1500, size=16), synthetic_skin(1500, size=16, dark_fade=0.0)
    # the same draws: only the lesions' visibility changes, by tone
    assert torch.equal(faded.labels, plain.labels) and torch.equal(faded.groups, plain.groups)
    contrast = {}
    for name, data in (("faded", faded), ("plain", plain)):
        c = (_centre(data.images, 1.5).mean(2) - _frame(data.images, 2).mean(2)).norm(dim=1)
        contrast[name] = [float(c[(data.labels == 0) & (data.groups == g)].mean())
                          for g in (0, 5)]
    assert contrast["faded"][1] < 0.75 * contrast["plain"][1]  # VI: 1 - 0.4 * (5 +- 0.3)/5
    assert contrast["faded"][0] > 0.9 * contrast["plain"][0]  # I: barely changed
    assert contrast["plain"][1] < 0.5 * contrast["plain"][0]  # dark skin absorbs more anyway


def test_ring_has_a_clear_centre_and_nevus_a_dark_one(big):
    centre = _centre(big.images, 1.5).mean((1, 2))
    skin = _frame(big.images).mean((1, 2))
    light = big.groups <= 1
    ring_gap = (skin - centre)[light & (big.labels == 2)].mean()
    nevus_gap = (skin - centre)[light & (big.labels == 0)].mean()
    assert nevus_gap > 0.3 and abs(float(ring_gap)) < 0.08, (float(nevus_gap), float(ring_gap))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"n": 0}, ValueError, "n must"),
    ({"n": 2.5}, TypeError, "n must"),
    ({"n": "10"}, TypeError, "n must"),
    ({"n": 4, "size": 7}, ValueError, "size must"),
    ({"n": 4, "seed": -1}, ValueError, "seed must"),
    ({"n": 4, "num_classes": 3}, ValueError, "num_classes must"),
    ({"n": 4, "num_classes": 7}, ValueError, "num_classes must"),
    ({"n": 4, "dark_fade": 1.0}, ValueError, "dark_fade must"),
    ({"n": 4, "dark_fade": -0.1}, ValueError, "dark_fade must"),
    ({"n": 4, "group_freqs": (0.5, 0.5)}, ValueError, "group_freqs must have shape (6,)"),
    ({"n": 4, "group_freqs": (1, 1, 1, 1, 1, -1)}, ValueError, "group_freqs must be finite"),
    ({"n": 4, "group_freqs": (1, 1, 1, 1, 1, math.nan)}, ValueError, "group_freqs"),
    ({"n": 4, "group_freqs": (0,) * 6}, ValueError, "group_freqs must have a positive sum"),
    ({"n": 4, "group_freqs": "uniform"}, TypeError, "group_freqs"),
    ({"n": 4, "class_freqs": torch.ones(6, 4)}, ValueError, "class_freqs must have shape (6, 5)"),
    ({"n": 4, "class_freqs": torch.ones(6, 5).index_fill(0, torch.tensor([2]), 0)},
     ValueError, "class_freqs must have a positive sum in every row"),
])
def test_bad_arguments_are_refused(kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        synthetic_skin(**kwargs)


ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-3, 12),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                     st.lists(st.floats(-1, 2), max_size=7))


OMIT = object()  # the argument is left at its default


@settings(max_examples=60, deadline=None)
@given(n=ANYTHING, size=st.one_of(st.just(8), ANYTHING),
       **{k: st.one_of(st.just(OMIT), ANYTHING)
          for k in ("seed", "num_classes", "group_freqs", "dark_fade")})
def test_any_argument_is_accepted_correctly_or_refused_by_name(n, size, **rest):
    kwargs = {"n": n, "size": size, **{k: v for k, v in rest.items() if v is not OMIT}}
    try:
        data = synthetic_skin(**kwargs)
    except (TypeError, ValueError) as err:
        assert any(name in str(err) for name in kwargs), err
        return
    assert len(data) == int(n) >= 1 and data.images.shape[-1] == int(size) >= 8
    assert 4 <= data.num_classes <= 6 and bool(torch.isfinite(data.images).all())


# ---------------------------------------------------------------- SkinDataset

def _tiny() -> SkinDataset:
    images = torch.rand(5, 3, 4, 4)
    labels = torch.tensor([0, 1, 1, 2, 0])
    groups = torch.tensor([0, 0, 5, 5, 3])
    return SkinDataset(images, labels, groups, ("a", "b", "c"), SKIN_TONES)


def test_dataset_items_subset_and_counts():
    data = _tiny()
    image, label, group = data[2]
    assert torch.equal(image, data.images[2]) and (label, group) == (1, 5)
    assert type(label) is int and type(group) is int and len(data) == 5
    part = data.subset([3, 0])
    assert part.class_names == ("a", "b", "c") and part.group_names == SKIN_TONES
    assert torch.equal(part.images, data.images[[3, 0]]) and part.labels.tolist() == [2, 0]
    mask = data.subset(data.groups == 5)
    assert mask.labels.tolist() == [1, 2] and mask.groups.tolist() == [5, 5]
    assert len(data.subset(torch.tensor([], dtype=torch.int64))) == 0
    cells = data.cell_counts()
    assert cells.shape == (6, 3) and cells.dtype == torch.int64
    assert cells[0].tolist() == [1, 1, 0] and cells[5].tolist() == [0, 1, 1]
    assert cells[3].tolist() == [1, 0, 0] and int(cells.sum()) == 5
    assert data.group_counts().tolist() == [2, 0, 0, 1, 0, 2]
    assert data.class_counts().tolist() == [2, 2, 1]
    text = repr(data)
    assert "N=5" in text and "size=4x4" in text and "VI: 2" in text and "b: 2" in text
    images, labels = dataset_tensors(data)  # TensorDataset-like: no copy
    assert images is data.images and labels is data.labels


def test_dataset_refuses_inconsistent_tensors():
    images, labels = torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 0])
    groups = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        SkinDataset(images, labels + 1, groups, ("a", "b"))
    with pytest.raises(ValueError, match="groups must lie in 0..5"):
        SkinDataset(images, labels, groups + 6, ("a", "b"))
    with pytest.raises(ValueError, match=r"labels must have one entry per image \(3\)"):
        SkinDataset(images, labels[:2], groups, ("a", "b"))
    with pytest.raises(TypeError, match="labels must be a int64 tensor"):
        SkinDataset(images, labels.int(), groups, ("a", "b"))
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        SkinDataset(images * 2, labels, groups, ("a", "b"))
    with pytest.raises(TypeError, match="images must be float32"):
        SkinDataset(images.double(), labels, groups, ("a", "b"))
    with pytest.raises(ValueError, match="class_names must not repeat"):
        SkinDataset(images, labels, groups, ("a", "a"))
    with pytest.raises(TypeError, match="class_names must be a sequence of strings"):
        SkinDataset(images, labels, groups, "ab")
    data = SkinDataset(images, labels, groups, ("a", "b"))
    with pytest.raises(ValueError, match="indices must lie in"):
        data.subset([0, 3])
    with pytest.raises(TypeError, match="indices must hold ints"):
        data.subset([0.0])
    with pytest.raises(ValueError, match="indices must have shape"):
        data.subset(torch.tensor([True, False]))


# ---------------------------------------------------------------- skin_folder

def _write_csv(path, rows, header=("md5hash", "fitzpatrick_scale", "label", "qc")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _pixels(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _folder(tmp_path, subfolder: str | None = "images"):
    folder = tmp_path / subfolder if subfolder else tmp_path
    folder.mkdir(exist_ok=True)
    pixels = {}
    for k, name in enumerate(("aa11", "bb22", "cc33", "dd44", "ee55")):
        ext = ".jpg" if name == "ee55" else ".png"
        # JPEG is lossy (and subsamples colour): a smooth picture, compared approximately
        ramp = np.linspace(40, 220, 8)
        smooth = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128.0), -1)
        pixels[name] = smooth.astype(np.uint8) if ext == ".jpg" else _pixels(k)
        Image.fromarray(pixels[name]).save(folder / f"{name}{ext}", quality=95)
    rows = [("aa11", "2", "psoriasis", ""), ("bb22.png", "6", "acne", ""),
            ("cc33", "-1", "acne", ""), ("dd44", "1.0", "eczema", ""),
            ("ee55", "", "psoriasis", ""), ("ee55", "4", "psoriasis", "")]
    _write_csv(tmp_path / "meta.csv", rows)
    return tmp_path / "meta.csv", pixels


def test_skin_folder_round_trip(tmp_path):
    csv_path, pixels = _folder(tmp_path)
    with pytest.warns(UserWarning, match=r"dropped 2 of 6 rows .*fitzpatrick_scale.*'-1'"):
        data = skin_folder(csv_path, size=8)  # image_dir: the "images" folder next to the CSV
    assert len(data) == 4 and data.class_names == ("acne", "eczema", "psoriasis")
    assert data.group_names == SKIN_TONES
    assert data.labels.tolist() == [2, 0, 1, 2] and data.groups.tolist() == [1, 5, 0, 3]
    for i, name in enumerate(("aa11", "bb22", "dd44")):
        want = torch.from_numpy(pixels[name]).permute(2, 0, 1).float() / 255
        assert torch.equal(data.images[i], want)
    jpeg = torch.from_numpy(pixels["ee55"]).permute(2, 0, 1).float() / 255
    assert (data.images[3] - jpeg).abs().mean() < 0.03
    assert data.cell_counts()[5].tolist() == [1, 0, 0]
    with pytest.warns(UserWarning, match="dropped 2"):
        small = skin_folder(csv_path, size=4, class_names=("psoriasis", "eczema", "acne"))
    assert small.images.shape == (4, 3, 4, 4) and small.labels.tolist() == [0, 2, 1, 0]


def test_skin_folder_finds_images_next_to_the_csv_and_other_columns(tmp_path):
    csv_path, _ = _folder(tmp_path, subfolder=None)
    with pytest.warns(UserWarning):
        assert len(skin_folder(csv_path, size=8)) == 4
    _write_csv(tmp_path / "other.csv", [("aa11", "acne", "3")], header=("file", "dx", "fst"))
    data = skin_folder(tmp_path / "other.csv", tmp_path, size=8, image_column="file",
                       label_column="dx", group_column="fst")
    assert data.class_names == ("acne",) and data.groups.tolist() == [2]


def test_skin_folder_errors_name_the_file_or_column(tmp_path):
    csv_path, _ = _folder(tmp_path)
    (tmp_path / "images" / "bb22.png").unlink()
    with pytest.raises(ValueError, match=r"line 3: no image file for 'bb22.png'"):
        skin_folder(csv_path)
    _write_csv(tmp_path / "no_label.csv", [("aa11", "2")], header=("md5hash",
                                                                   "fitzpatrick_scale"))
    with pytest.raises(ValueError, match=r"no column 'label' \(label_column\)"):
        skin_folder(tmp_path / "no_label.csv")
    with pytest.raises(ValueError, match="no column 'image' \\(image_column\\)"):
        skin_folder(csv_path, image_column="image")
    _write_csv(tmp_path / "unknown.csv", [("aa11", "-1", "acne"), ("dd44", "7", "acne")])
    with pytest.raises(ValueError, match="no row has a 'fitzpatrick_scale' in 1..6"), \
            pytest.warns(UserWarning, match="dropped 2 of 2"):
        skin_folder(tmp_path / "unknown.csv")
    _write_csv(tmp_path / "two.csv", [("aa11", "2", "acne"), ("dd44", "3", "eczema")])
    with pytest.raises(ValueError, match=r"labels \['eczema'\] are not in class_names"):
        skin_folder(tmp_path / "two.csv", class_names=("acne",))
    with pytest.raises(ValueError, match="csv_path must be a CSV file"):
        skin_folder(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="image_dir must be a folder"):
        skin_folder(csv_path, tmp_path / "nowhere")
    with pytest.raises(TypeError, match="csv_path must be a path"):
        skin_folder(3)
    with pytest.raises(ValueError, match="size must be"):
        skin_folder(csv_path, size=0)
    with pytest.raises(ValueError, match="size must be"):
        skin_folder(csv_path, size=None)
