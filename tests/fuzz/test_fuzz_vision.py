"""T3 fuzz (hypothesis) of the public entry points of trustfast.unlearn, trustfast.sparsity,
trustfast.attacks and trustfast.faces: wrong types, dtypes, shapes, ranges and NaN/Inf must end
in a TypeError / ValueError that names the argument, never in an unrelated exception or a silent
acceptance (and a refused call leaves the model's weights as they were)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trustfast.attacks as attacks
import trustfast.faces as faces
import trustfast.sparsity as sparsity
import trustfast.unlearn as unlearn
from fuzz.refusal import refused
from trustfast.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FUZZ = settings(max_examples=20, deadline=None)




def images(n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 4))


def face_model() -> nn.Module:
    torch.manual_seed(0)
    return faces.iresnet([1, 1, 1, 1], embedding_dim=8, width=4, input_size=16).eval()


# A bad image batch: its kind and the exception it must raise.
BAD_IMAGES = st.one_of(
    st.sampled_from([
        ("list", TypeError), ("none", TypeError), ("str", TypeError), ("uint8", TypeError),
        ("int64", TypeError), ("bool", TypeError), ("chw", ValueError), ("5d", ValueError),
        ("x255", ValueError), ("nan", ValueError), ("inf", ValueError), ("-inf", ValueError),
    ]).map(lambda kind: (kind, 0.0)),
    st.tuples(st.just(("shift", ValueError)), st.floats(-3, 3).filter(lambda s: abs(s) > 0.05)),
)


def make_bad(kind: str, amount: float, base: torch.Tensor):
    x = base.clone()
    if kind in ("nan", "inf", "-inf"):
        x[0, 0, 1, 2] = float(kind)
        return x
    return {
        "list": lambda: x.tolist(), "none": lambda: None, "str": lambda: "faces.png",
        "uint8": lambda: (x * 255).to(torch.uint8), "int64": lambda: (x * 255).long(),
        "bool": lambda: x > 0.5, "chw": lambda: x[0], "5d": lambda: x[None],
        "x255": lambda: x * 255, "shift": lambda: x + amount,
    }[kind]()


# A bad number: (value, exception) for an argument that wants a number in [low, high].
NOT_NUMBERS = st.sampled_from(["0.5", None, True, [0.1], {"v": 1}, torch.ones(2)])


def bad_numbers(low: float, high: float | None = None, integer: bool = False):
    below = st.floats(-1e6, low, exclude_max=True).filter(lambda v: v < low)
    out = [st.tuples(NOT_NUMBERS, st.just(TypeError)),
           st.tuples(st.sampled_from([math.nan, math.inf, -math.inf]), st.just((ValueError,
                                                                                TypeError))),
           st.tuples(below, st.just((ValueError, TypeError) if integer else ValueError))]
    if high is not None:
        above = st.floats(high, 1e6, exclude_min=True).filter(lambda v: v > high)
        out.append(st.tuples(above, st.just((ValueError, TypeError) if integer else ValueError)))
    if integer:
        out.append(st.tuples(st.floats(0.1, 50).filter(lambda v: not v.is_integer()),
                             st.just(TypeError)))
    return st.one_of(*out)


def kinds(expected) -> tuple:
    return expected if isinstance(expected, tuple) else (expected,)


# ---------------------------------------------------------------------- trustfast.attacks

@FUZZ
@given(bad=BAD_IMAGES)
def test_pgd_refuses_bad_images(bad):
    (kind, error), amount = bad
    x, y = images(), torch.arange(4) % 4
    refused(lambda: attacks.PGD(classifier(), steps=1)(make_bad(kind, amount, x), y), "images",
            (error,))


@FUZZ
@given(name=st.sampled_from(["eps", "alpha"]), bad=bad_numbers(0.0, 1.0))
def test_pgd_refuses_bad_budgets(name, bad):
    value, error = bad
    if isinstance(value, list):
        return  # a list of budgets is allowed (each one is checked)
    refused(lambda: attacks.PGD(classifier(), **{name: value}), name, kinds(error))


@FUZZ
@given(name=st.sampled_from(["steps", "restarts"]), bad=bad_numbers(1.0, integer=True))
def test_pgd_refuses_bad_counts(name, bad):
    value, error = bad
    if name == "steps" and isinstance(value, float) and 0 <= value < 1:
        return  # steps=0 is meaningful for PGD (the best random start)
    refused(lambda: attacks.PGD(classifier(), **{name: value}), name, kinds(error))


@FUZZ
@given(case=st.sampled_from(["dataset", "int", "str", "tensor", "eps_pixels", "eps_scalar",
                             "eps_nan", "norm", "steps0", "bad_batch", "bad_images"]))
def test_robust_accuracy_refuses_bad_input(case):
    x, y = images(), torch.arange(4) % 4
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    name, kwargs = {
        "dataset": ("loader", dict(loader=TensorDataset(x, y))),
        "int": ("loader", dict(loader=3)), "str": ("loader", dict(loader=object())),
        "tensor": ("loader", dict(loader=x)),
        "eps_pixels": ("eps", dict(eps=[8])), "eps_scalar": ("eps", dict(eps=8 / 255)),
        "eps_nan": ("eps", dict(eps=[math.nan])), "norm": ("norm", dict(norm="L_inf")),
        "steps0": ("steps", dict(steps=0)),
        "bad_batch": ("loader", dict(loader=[(x, y.tolist())])),
        "bad_images": ("images", dict(loader=[(x * 4 - 2, y)])),
    }[case]
    args = {"loader": loader, "eps": [4 / 255], "steps": 1, "progress": False, **kwargs}
    refused(lambda: attacks.robust_accuracy(classifier(), **args), name)


@FUZZ
@given(bad=BAD_IMAGES, which=st.sampled_from(["images", "references"]))
def test_watermark_attack_refuses_bad_images(bad, which):
    (kind, error), amount = bad
    verifier = faces.FaceVerifier(face_model(), 1.0)
    atk = attacks.AdversarialWatermarkAttack(verifier, lambda im, bits: im, steps=1,
                                             message_bits=4)
    a, b = images(2, 16, 0), images(2, 16, 1)
    args = {"images": a, "references": b}
    args[which] = make_bad(kind, amount, args[which])
    if which == "references" and kind in ("chw", "5d"):
        error = ValueError  # a shape unlike images'
    refused(lambda: atk(args["images"], args["references"], torch.tensor([True, False])), which,
            (error,))


@FUZZ
@given(name=st.sampled_from(["eps", "kappa", "stealth_weight", "steps", "num_messages"]),
       data=st.data())
def test_watermark_attack_refuses_bad_numbers(name, data):
    bounds = {"eps": (0.0, 1.0, False), "kappa": (0.0, None, False),
              "stealth_weight": (0.0, None, False), "steps": (1.0, None, True),
              "num_messages": (1.0, None, True)}[name]
    value, error = data.draw(bad_numbers(bounds[0], bounds[1], integer=bounds[2]))
    if name == "eps" and isinstance(value, list):
        return  # a list of budgets is allowed (each one is checked)
    verifier = faces.FaceVerifier(face_model(), 1.0)
    refused(lambda: attacks.AdversarialWatermarkAttack(
        verifier, lambda im, bits: im, message_bits=4, **{name: value}), name, kinds(error))


# ---------------------------------------------------------------------- trustfast.faces

@FUZZ
@given(bad=BAD_IMAGES, entry=st.sampled_from(["embed", "verifier", "verify", "evaluate"]))
def test_face_entry_points_refuse_bad_images(bad, entry):
    (kind, error), amount = bad
    model = face_model()
    x = make_bad(kind, amount, images(4, 16))
    good = images(4, 16, seed=1)
    same = torch.tensor([True, False, True, False])
    call, name = {
        "embed": (lambda: faces.embed(model, x), "images"),
        "verifier": (lambda: faces.FaceVerifier(model, 1.0).embed(x), "x"),
        "verify": (lambda: faces.verify(model, good, x, 1.0), "images_b"),
        "evaluate": (lambda: faces.evaluate_pairs(model, x, good, same, folds=2), "images_a"),
    }[entry]
    refused(call, name, (error,))


@FUZZ
@given(bad=bad_numbers(0.0, 4.0))
def test_face_threshold_is_checked(bad):
    value, error = bad
    refused(lambda: faces.FaceVerifier(face_model(), value), "threshold", kinds(error))


# ---------------------------------------------------------------------- trustfast.sparsity

def _mask_cases():
    shape = (3, 4)
    return st.sampled_from([
        (torch.full(shape, 0.5), ValueError), (torch.ones(4, 3, dtype=torch.bool), ValueError),
        (torch.ones(4, dtype=torch.bool), ValueError), (torch.ones(shape, dtype=torch.long),
                                                        TypeError),
        (torch.full(shape, math.nan), ValueError), (torch.full(shape, 2.0), ValueError),
        (torch.full(shape, -1.0), ValueError), ([[True] * 4] * 3, TypeError),
        (None, TypeError), ("mask", TypeError),
    ])


@FUZZ
@given(case=_mask_cases())
def test_apply_masks_refuses_bad_masks_and_writes_nothing(case):
    mask, error = case
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    refused(lambda: unlearn.apply_masks(model, {"weight": mask}), "masks", (error,))
    assert torch.equal(model.weight.detach(), before)


@FUZZ
@given(bad=bad_numbers(0.0, 1.0))
def test_pruning_sparsity_is_checked(bad):
    value, error = bad
    if isinstance(value, float) and value == 1.0:
        return
    model = classifier()
    refused(lambda: sparsity.global_magnitude_masks(model, value), "sparsity", kinds(error))
    refused(lambda: unlearn.synflow(model, value, (3, 8, 8), rounds=1), "sparsity",
            kinds(error))


# ---------------------------------------------------------------------- trustfast.unlearn

def _splits():
    gen = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.rand(10, 3, 8, 8, generator=gen), torch.arange(10) % 4)
    test = TensorDataset(torch.rand(4, 3, 8, 8, generator=gen), torch.arange(4) % 4)
    return unlearn.from_indices(train, test, [0, 1, 2])


CONFIG_FIELDS = [
    ("ft", "epochs", 1, None, True), ("ft", "lr", 0.0, None, False),
    ("ga", "epochs", 1, None, True), ("rl", "batch_size", 1, None, True),
    ("retrain", "momentum", 0.0, 1.0, False), ("l1_sparse", "l1", 0.0, None, False),
    ("salun", "saliency", 0.0, 1.0, False), ("ff", "alpha", 0.0, None, False),
    ("ff", "max_variance", 0.0, None, False), ("iu", "damping", 0.0, None, False),
    ("iu", "samples", 1, None, True),
]


@FUZZ
@given(field=st.sampled_from(CONFIG_FIELDS), data=st.data())
def test_method_configs_refuse_bad_values(field, data):
    method, key, low, high, integer = field
    value, _ = data.draw(bad_numbers(low, high, integer=integer))
    if isinstance(value, str):
        return  # YAML / --set give numbers as text: "0.5" is coerced on purpose
    cls = unlearn.CONFIGS[method]
    try:
        cfg = cls(**{key: value})
    except ConfigError as err:
        assert key in str(err)
        return
    # only values the coercion reads as valid numbers may pass (e.g. a 1-element tensor)
    pytest.fail(f"{cls.__name__}({key}={value!r}) was accepted: {getattr(cfg, key)!r}")


@FUZZ
@given(case=st.sampled_from(["model", "splits", "method", "method_type", "config", "mask_value",
                             "mask_shape", "mask_name", "nan_model"]))
def test_unlearn_refuses_bad_arguments_and_leaves_the_model(case):
    model = classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = {"model": model, "splits": _splits(), "method": "ff", "mask": None,
            "config": unlearn.FFConfig(samples=4)}
    name = case
    if case == "model":
        args["model"] = "resnet18"
    elif case == "splits":
        args["splits"] = (_splits().forget, _splits().retain)
    elif case in ("method", "method_type"):
        args["method"], name = ("gradient_ascent" if case == "method" else 2), "method"
    elif case == "config":
        args["config"] = unlearn.IUConfig()
    elif case.startswith("mask"):
        args["mask"] = {"mask_value": {"2.weight": torch.full((4, 72), 0.5)},
                        "mask_shape": {"2.weight": torch.ones(72, 4, dtype=torch.bool)},
                        "mask_name": {"fc.weight": torch.ones(4, 72, dtype=torch.bool)}}[case]
        name = "mask"
    elif case == "nan_model":
        with torch.no_grad():
            model[2].bias[0] = math.nan
        before = {k: v.clone() for k, v in model.state_dict().items()}
        name = "model"
    refused(lambda: unlearn.unlearn(**args), name)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) or (torch.isnan(v) == torch.isnan(before[k])).all(), k


@FUZZ
@given(bad=bad_numbers(0.0, 1.0))
def test_split_and_saliency_fractions_are_checked(bad):
    value, error = bad
    splits = _splits()
    train = splits.retain
    refused(lambda: unlearn.random_fraction(train, splits.test, value), "fraction",
            kinds(error))
    if not (isinstance(value, float) and value == 1.0):
        refused(lambda: unlearn.saliency_mask(classifier(), splits.forget, value), "fraction",
                kinds(error))


@FUZZ
@given(which=st.sampled_from(["accuracy", "true_label_probs"]),
       bad=st.sampled_from(["loader", "tensor", "int"]))
def test_metrics_want_a_dataset(which, bad):
    data = _splits().retain
    value = {"loader": DataLoader(data), "tensor": torch.rand(3, 3, 8, 8), "int": 5}[bad]
    fn = getattr(unlearn, which)
    refused(lambda: fn(classifier(), value), "dataset", (TypeError,))
