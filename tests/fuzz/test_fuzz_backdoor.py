"""T3 fuzz (hypothesis) of the public entry points of trustfast.backdoor and trustfast.watermark:
wrong types, dtypes, shapes, ranges and NaN/Inf must end in a TypeError / ValueError that names
the argument, never in a crash, an unrelated exception or a silent acceptance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import trustfast.backdoor as bd
import trustfast.watermark as wm
from fuzz.refusal import refused

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FUZZ = settings(max_examples=20, deadline=None)




def clean_images(n: int = 6, c: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


# A bad image batch and the exception it must raise.
BAD_IMAGES = st.one_of(
    st.sampled_from([
        ("list", TypeError), ("numpy", TypeError), ("none", TypeError), ("str", TypeError),
        ("uint8", TypeError), ("int64", TypeError), ("bool", TypeError), ("complex", TypeError),
        ("chw", ValueError), ("hw", ValueError), ("5d", ValueError), ("x255", ValueError),
    ]).map(lambda kind: (kind, 0.0)),
    st.tuples(st.sampled_from([("nan", ValueError), ("inf", ValueError), ("-inf", ValueError)]),
              st.just(0.0)),
    st.tuples(st.just(("shift", ValueError)),
              st.floats(-3, 3).filter(lambda s: abs(s) > 1e-3)),
)


def make_bad(kind: str, amount: float, base: torch.Tensor):
    x = base.clone()
    return {
        "list": lambda: x.tolist(), "numpy": lambda: x.numpy(), "none": lambda: None,
        "str": lambda: "images.png", "uint8": lambda: (x * 255).to(torch.uint8),
        "int64": lambda: (x * 255).long(), "bool": lambda: x > 0.5,
        "complex": lambda: x.to(torch.complex64), "chw": lambda: x[0], "hw": lambda: x[0, 0],
        "5d": lambda: x[None], "x255": lambda: x * 255,
        "nan": lambda: x.index_put_((torch.tensor([0]),), torch.tensor(math.nan)),
        "inf": lambda: x.index_put_((torch.tensor([1]),), torch.tensor(math.inf)),
        "-inf": lambda: x.index_put_((torch.tensor([0]),), torch.tensor(-math.inf)),
        "shift": lambda: x + amount,  # a normalized batch: mean/std not undone
    }[kind]()


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 4))


MODEL = tiny_cnn()
LABELS = torch.arange(6) % 4
TINY_MSPC = bd.MSPCConfig(inner_epochs=1, outer_rounds=1, batch_size=8, scales=[2.0, 3.0])
_TROJAN = bd.Trojan(size=3, steps=1).fit(MODEL, MODEL[0], (3, 8, 8))

IMAGE_ENTRY_POINTS = {
    "spc": lambda x: bd.scaled_prediction_consistency(MODEL, x, scales=[2, 3]),
    "spc_loop": lambda x: bd.scaled_prediction_consistency_loop(MODEL, x, scales=[2, 3]),
    "mspc": lambda x: bd.masked_scaled_prediction_consistency(MODEL, x, None, 0.1, [2, 3]),
    "strip": lambda x: bd.strip_scores(MODEL, x, overlays=2),
    "identify": lambda x: bd.identify_mspc(MODEL, x, TINY_MSPC, progress=False),
    "accuracy": lambda x: bd.accuracy(MODEL, x, LABELS),
    "badnets": lambda x: bd.BadNets().apply(x),
    "blend": lambda x: bd.Blend().apply(x),
    "wanet": lambda x: bd.WaNet().apply(x),
    "wanet_noise": lambda x: bd.WaNet().apply_noise(x),
    "trojan": lambda x: _TROJAN.apply(x),
    "adaptive_blend": lambda x: bd.AdaptiveBlend().apply(x),
    "label_consistent": lambda x: bd.LabelConsistent().apply(x, train=False),
}


@pytest.mark.parametrize("entry", sorted(IMAGE_ENTRY_POINTS))
@FUZZ
@given(bad=BAD_IMAGES)
def test_backdoor_image_entry_points_refuse_bad_images(entry, bad):
    (kind, error), amount = bad
    x = make_bad(kind, amount, clean_images())
    refused(lambda: IMAGE_ENTRY_POINTS[entry](x), "images", error)


@FUZZ
@given(bad=BAD_IMAGES)
def test_poison_refuses_bad_dataset_images(bad):
    (kind, error), amount = bad
    if kind in ("list", "numpy", "none", "str", "chw", "hw", "5d"):
        return  # no TensorDataset of 6 samples can hold these
    data = TensorDataset(make_bad(kind, amount, clean_images()), LABELS)
    if kind == "uint8":  # documented: the dataset adapter divides uint8 by 255, with a warning
        with pytest.warns(UserWarning, match="divided by 255"):
            out = bd.poison(data, bd.BadNets(), 0.3, 1)
        assert float(out.images.max()) <= 1.0
        return
    refused(lambda: bd.poison(data, bd.BadNets(), 0.3, 1), "dataset[", error)


@pytest.mark.parametrize("entry", sorted(IMAGE_ENTRY_POINTS))
def test_backdoor_image_entry_points_take_clean_images(entry):
    IMAGE_ENTRY_POINTS[entry](clean_images())  # the refusals above are not blanket


INDICATOR_DTYPES = [torch.bool, torch.uint8, torch.int32, torch.int64]
ANY_DTYPES = INDICATOR_DTYPES + [torch.float16, torch.float32, torch.float64]


@FUZZ
@given(n=st.integers(1, 6), m=st.integers(1, 6), extra_dim=st.booleans(),
       f_dtype=st.sampled_from(ANY_DTYPES), p_dtype=st.sampled_from(ANY_DTYPES),
       seed=st.integers(0, 3))
def test_split_rates_fuzz(n, m, extra_dim, f_dtype, p_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    flagged = torch.randint(0, 2, (n, 1) if extra_dim else (n,), generator=gen).to(f_dtype)
    poisoned = torch.tensor([True, False] * m)[:max(m, 2)].to(p_dtype)
    ok = (f_dtype in INDICATOR_DTYPES and p_dtype in INDICATOR_DTYPES and not extra_dim
          and n == len(poisoned))
    if ok:
        tpr, fpr = bd.split_rates(flagged, poisoned)
        assert 0 <= tpr <= 1 and 0 <= fpr <= 1
    elif f_dtype not in INDICATOR_DTYPES or extra_dim:
        refused(lambda: bd.split_rates(flagged, poisoned), "flagged")
    elif p_dtype not in INDICATOR_DTYPES:
        refused(lambda: bd.split_rates(flagged, poisoned), "poisoned", TypeError)
    else:  # lengths differ: never broadcast
        refused(lambda: bd.split_rates(flagged, poisoned), "flagged", ValueError)


@FUZZ
@given(n=st.integers(2, 6), poison_value=st.sampled_from([math.nan, math.inf, -math.inf, None]),
       s_dtype=st.sampled_from(ANY_DTYPES[1:]), wrong_len=st.booleans())
def test_auroc_fuzz(n, poison_value, s_dtype, wrong_len):
    poisoned = torch.tensor([True, False] * n)
    scores = torch.linspace(0, 1, len(poisoned) + (1 if wrong_len else 0), dtype=torch.float64)
    if poison_value is not None and s_dtype.is_floating_point:
        scores[0] = poison_value
    scores = scores.to(s_dtype) if s_dtype.is_floating_point else (scores * 10).to(s_dtype)
    bad_value = poison_value is not None and s_dtype.is_floating_point
    if wrong_len or bad_value:
        refused(lambda: bd.auroc(scores, poisoned), "scores", ValueError)
    else:
        assert 0.0 <= bd.auroc(scores, poisoned) <= 1.0


ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-5, 50),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                     st.lists(st.integers(0, 3), max_size=2))


@FUZZ
@given(ratio=ANYTHING, target=ANYTHING, seed=ANYTHING)
def test_poison_numbers_fuzz(ratio, target, seed):
    data = TensorDataset(clean_images(8), torch.arange(8) % 4)
    try:
        out = bd.poison(data, bd.BadNets(), ratio, target, seed)
    except (TypeError, ValueError) as err:
        assert any(name in str(err) for name in ("ratio", "target", "seed")), err
        return
    # accepted: then every value was a valid one
    assert isinstance(ratio, (int, float)) and 0 < ratio < 1 and not isinstance(ratio, bool)
    assert isinstance(target, int) and 0 <= target < 4 and not isinstance(target, bool)
    assert seed >= 0 and float(seed).is_integer() and not isinstance(seed, bool)
    assert bool(out.poisoned.any()) and float(out.images.max()) <= 1.0


TRIGGER_ARGS = {
    bd.BadNets: ["size", "margin"], bd.Blend: ["alpha", "pattern_seed"],
    bd.WaNet: ["k", "s", "grid_rescale", "cross_ratio"], bd.Trojan: ["size", "steps", "lr"],
    bd.LabelConsistent: ["eps", "steps", "amplitude"],
    bd.AdaptiveBlend: ["pieces", "piece_ratio", "train_alpha", "test_alpha", "cover_ratio"],
}


@pytest.mark.parametrize("cls", list(TRIGGER_ARGS), ids=lambda c: c.__name__)
@FUZZ
@given(value=ANYTHING, which=st.integers(0, 4))
def test_trigger_parameters_fuzz(cls, value, which):
    name = TRIGGER_ARGS[cls][which % len(TRIGGER_ARGS[cls])]
    try:
        trigger = cls(**{name: value})
    except (TypeError, ValueError) as err:
        assert name in str(err), err
        return
    got = getattr(trigger, name)
    assert got is None or (isinstance(got, (int, float)) and math.isfinite(got)), got
    trigger_ok = not isinstance(trigger, bd.Trojan) and not (
        isinstance(trigger, bd.LabelConsistent))
    if trigger_ok:  # an accepted parameter gives a working trigger
        try:
            out = trigger.apply(clean_images(2), torch.Generator().manual_seed(0))
        except ValueError as err:  # e.g. a patch larger than the image: named and explained
            assert "fit" in str(err) or "size" in str(err), err
            return
        assert out.shape == (2, 3, 8, 8) and bool(torch.isfinite(out).all())


@FUZZ
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=5).map(tuple),
       value=st.sampled_from([0.5, 1.5, -0.5, math.nan]))
def test_mspc_mask_fuzz(shape, value):
    x = clean_images()
    mask = torch.full(shape, value)
    allowed = {(8, 8), (1, 8, 8), (3, 8, 8), (1, 1, 8, 8), (1, 3, 8, 8)}
    call = lambda: bd.masked_scaled_prediction_consistency(MODEL, x, mask, 0.1, [2, 3])  # noqa: E731
    if shape in allowed and 0 <= value <= 1:
        assert call().shape == (6,)
    else:
        refused(call, "mask", ValueError)


# ---------------------------------------------------------------- watermark

HIDDEN = wm.HiddenConfig(message_bits=4, channels=4, encoder_blocks=1, decoder_blocks=1,
                         message_tile=0, discriminator_blocks=1)
WM = wm.WatermarkModel(HIDDEN)
BITS = torch.randint(0, 2, (6, 4), generator=torch.Generator().manual_seed(0)).float()

WATERMARK_IMAGE_ENTRY_POINTS = {
    "embed": lambda x: WM.embed(x, BITS),
    "decode": lambda x: WM.decode(x),
    "psnr_a": lambda x: wm.psnr(x, clean_images()),
    "ssim_b": lambda x: wm.ssim(clean_images(size=12), x if not torch.is_tensor(x) or x.dim() != 4
                                or x.shape[-1] != 8 else torch.nn.functional.pad(x, (2, 2, 2, 2))),
}


@pytest.mark.parametrize("entry", sorted(WATERMARK_IMAGE_ENTRY_POINTS))
@FUZZ
@given(bad=BAD_IMAGES)
def test_watermark_image_entry_points_refuse_bad_images(entry, bad):
    (kind, error), amount = bad
    x = make_bad(kind, amount, clean_images())
    name = {"psnr_a": "a", "ssim_b": "b"}.get(entry, "images")
    if entry.startswith(("psnr", "ssim")) and kind in ("x255", "shift"):
        # PSNR / SSIM take any data_range: a [0, 255] image is valid input there
        return
    refused(lambda: WATERMARK_IMAGE_ENTRY_POINTS[entry](x), name, error)


@FUZZ
@given(kind=st.sampled_from(["float", "list", "shape", "values", "nan", "none"]))
def test_watermark_bits_fuzz(kind):
    bits = {"float": BITS, "list": BITS.tolist(), "shape": BITS[:, :3], "values": BITS * 2,
            "nan": BITS.masked_fill(BITS > 0, math.nan), "none": None}[kind]
    if kind == "float":
        assert WM.embed(clean_images(), bits).shape == (6, 3, 8, 8)
        assert 0.0 <= wm.bit_accuracy(bits, BITS) <= 1.0
        return
    error = TypeError if kind in ("list", "none") else ValueError
    refused(lambda: WM.embed(clean_images(), bits), "bits", error)
    refused(lambda: wm.bit_accuracy(bits, BITS), "decoded", error)


@FUZZ
@given(value=ANYTHING)
def test_watermark_metric_numbers_fuzz(value):
    a, b = clean_images(2, size=12), clean_images(2, size=12, seed=1)
    try:
        wm.psnr(a, b, data_range=value)
    except (TypeError, ValueError) as err:
        assert "data_range" in str(err), err
    else:
        assert isinstance(value, (int, float)) and value > 0 and math.isfinite(value)
    refused(lambda: wm.psnr(a, b, reduction=value), "reduction")


NOISE_CLASSES = {wm.Dropout: "p", wm.Cropout: "area_ratio", wm.Crop: "area_ratio",
                 wm.Resize: "scale", wm.GaussianBlur: "sigma", wm.RealJpeg: "quality"}


@pytest.mark.parametrize("cls", list(NOISE_CLASSES), ids=lambda c: c.__name__)
@FUZZ
@given(value=ANYTHING)
def test_noise_layer_parameters_fuzz(cls, value):
    name = NOISE_CLASSES[cls]
    try:
        layer = cls(value)
    except (TypeError, ValueError) as err:
        assert name in str(err), err
        return
    x = clean_images(2, size=16)
    out = layer(x, x.clone(), torch.Generator().manual_seed(0))
    assert out.dim() == 4 and bool(torch.isfinite(out).all())


@FUZZ
@given(bad=BAD_IMAGES, which=st.sampled_from(["encoded", "cover"]))
def test_noise_layers_refuse_bad_pairs(bad, which):
    (kind, _), amount = bad
    if kind in ("x255", "shift", "nan", "inf", "-inf"):
        return  # values: noise layers run inside the training loop and do not read them
    x = clean_images(2, size=16)
    bad_x = make_bad(kind, amount, x)
    for layer in (wm.Identity(), wm.Dropout(0.5), wm.JpegMask(), wm.Resize(0.5)):
        args = (bad_x, x) if which == "encoded" else (x, bad_x)
        refused(lambda layer=layer, args=args: layer(*args), which)


@FUZZ
@given(spec=st.one_of(st.text(max_size=12), st.none(), st.integers(), st.sampled_from([
    "dropout(", "dropout(2)", "jpeg(0)", "jpeg(50.5)", "blur(-1)", "combined()", "crop(0)",
    "resize(nan)", "combined(dropout(0.3)+nope)", "dropout(0.3", "dropout)0.3(",
])))
def test_make_noise_fuzz(spec):
    try:
        layer = wm.make_noise(spec)
    except (TypeError, ValueError) as err:
        assert "noise spec" in str(err) or "spec" in str(err), err
        return
    assert isinstance(layer, wm.NoiseLayer)


def test_numpy_images_are_refused_not_converted():
    x = clean_images().numpy()
    assert isinstance(x, np.ndarray)
    refused(lambda: bd.scaled_prediction_consistency(MODEL, x), "images", TypeError)
    refused(lambda: WM.decode(x), "images", TypeError)
