"""T3 fuzz of issue 19's entry points (trustfast.diffusion.backdoor): DiffusionClassifier's
arguments, poison_for_diffusion, the trigger detectors, trigger_ratio and audit_generations.
Every bad type or value ends in a TypeError / ValueError naming the argument; every good one
is accepted (the validity of each drawn value is decided here, independently)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from fuzz.refusal import refused
from trustfast.backdoor.poison import BadNets, Blend, LabelConsistent
from trustfast.diffusion.backdoor import (
    DiffusionClassifier,
    LearnedDetector,
    TemplateDetector,
    audit_generations,
    poison_for_diffusion,
    train_trigger_detector,
    trigger_ratio,
)

pytestmark = [pytest.mark.usefixtures("one_intra_op_thread"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

FUZZ = settings(max_examples=25, deadline=None)
ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-3, 300),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))
K = 4  # label_unet(K) has K + 1 class embeddings


@pytest.fixture(scope="module")
def model():
    from trustfast.diffusion import label_unet

    return label_unet(K, sample_size=8, in_channels=1, seed=0)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def rand_images(n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def accepted_or_refused(call, name: str, valid: bool):
    if valid:
        return call()
    refused(call, name)
    return None


# ---------------------------------------------------------------- DiffusionClassifier

COUNT_VALID = {
    "num_classes": lambda v: is_int(v) and 2 <= v <= K + 1,
    "draws": lambda v: is_int(v) and v >= 1,
    "batch_size": lambda v: v is None or (is_int(v) and v >= 1),  # None: per device
    "seed": lambda v: is_int(v) and v >= 0,
}


@pytest.mark.parametrize("name", sorted(COUNT_VALID))
@FUZZ
@given(value=st.one_of(ANYTHING, st.just(2.0), st.just(torch.tensor(3.0))))
def test_classifier_counts(model, name, value):
    kwargs = {"num_classes": K, name: value}
    clf = accepted_or_refused(lambda: DiffusionClassifier(model, **kwargs), name,
                              COUNT_VALID[name](value))
    if clf is not None:
        from trustfast.diffusion.backdoor import CPU_BATCH

        assert getattr(clf, name) == (CPU_BATCH if value is None else value)


@FUZZ
@given(value=st.one_of(ANYTHING, st.sampled_from(["uniform", "edm", "EDM", "", "lognormal"])))
def test_classifier_weighting(model, value):
    valid = isinstance(value, str) and value in ("uniform", "edm")
    accepted_or_refused(lambda: DiffusionClassifier(model, K, weighting=value), "weighting",
                        valid)


@FUZZ
@given(value=st.one_of(ANYTHING, st.floats(-0.5, 1.5), st.sampled_from([0, 1, 0.0, 1.0])))
def test_classifier_trim(model, value):
    valid = value is None or (is_number(value) and 0 < value <= 1)
    clf = accepted_or_refused(lambda: DiffusionClassifier(model, K, trim=value), "trim", valid)
    if clf is not None and value is not None:
        assert clf.trim == float(value)


def schedule_valid(adaptive, draws: int, k: int) -> bool:
    """None, "auto" or (draws, keep) pairs of ints >= 1, keeps never above the classes left
    and at least one draw left to the survivors."""
    if adaptive is None or (isinstance(adaptive, str) and adaptive == "auto"):
        return True
    if not isinstance(adaptive, (list, tuple)):
        return False
    used, alive = 0, k
    for pair in adaptive:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return False
        d, keep = pair
        if not (is_int(d) and is_int(keep) and d >= 1 and keep >= 1 and keep <= alive):
            return False
        used += d
        if used >= draws:
            return False
        alive = keep
    return True


PAIR = st.tuples(st.integers(-1, 20), st.integers(-1, 6))
ADAPTIVE = st.one_of(
    ANYTHING, st.just("auto"),
    st.lists(PAIR, max_size=3), st.lists(PAIR, max_size=3).map(tuple),
    st.lists(st.one_of(ANYTHING, st.tuples(ANYTHING, ANYTHING), st.tuples(st.integers(1, 3))),
             min_size=1, max_size=2),
)


@FUZZ
@given(adaptive=ADAPTIVE)
def test_classifier_adaptive(model, adaptive):
    valid = schedule_valid(adaptive, 16, K)
    clf = accepted_or_refused(lambda: DiffusionClassifier(model, K, draws=16, adaptive=adaptive),
                              "adaptive", valid)
    if clf is not None:
        assert sum(d for d, _ in clf.schedule) == 16
        assert all(keep <= K for _, keep in clf.schedule)


@pytest.mark.parametrize("name,bad", [
    ("p_mean", math.nan), ("p_mean", "0"), ("p_std", 0.0), ("p_std", -1.0),
    ("sigma_data", 0.0), ("sigma_data", math.inf), ("prediction_type", "sample"),
    ("prediction_type", 3), ("scheduler", "ddpm"), ("scheduler", 1.0),
])
def test_classifier_other_arguments(model, name, bad):
    refused(lambda: DiffusionClassifier(model, K, **{name: bad}), name)


def test_classifier_model_and_conditions(model):
    refused(lambda: DiffusionClassifier(nn.Conv2d(1, 1, 1), K), "model")
    refused(lambda: DiffusionClassifier("unet", K), "model")
    refused(lambda: DiffusionClassifier(model, K, class_conditions=torch.zeros(K, 2, 8)),
            "class_conditions")


BAD_IMAGES = st.sampled_from(["nan", "inf", "x255", "negative", "chw", "5d", "int64", "list",
                              "none", "bool"])


def make_bad(kind: str, base: torch.Tensor):
    x = base.clone()
    if kind == "nan":
        x[0, 0, 1, 1] = math.nan
        return x
    if kind == "inf":
        x[-1, 0, 0, 0] = math.inf
        return x
    return {"x255": lambda: x * 255, "negative": lambda: x - 0.5, "chw": lambda: x[0],
            "5d": lambda: x[None], "int64": lambda: (x * 255).long(), "list": lambda: x.tolist(),
            "none": lambda: None, "bool": lambda: x > 0.5}[kind]()


@FUZZ
@given(kind=BAD_IMAGES)
def test_classifier_refuses_bad_images(model, kind):
    clf = DiffusionClassifier(model, K, draws=1)
    bad = make_bad(kind, rand_images())
    refused(lambda: clf.errors(bad), "images")
    refused(lambda: clf.predict(bad), "images")


def test_classifier_refuses_images_of_other_channels(model):
    refused(lambda: DiffusionClassifier(model, K, draws=1).errors(rand_images(2).expand(
        -1, 3, -1, -1)), "images")


# ---------------------------------------------------------------- poisoning

DATA = TensorDataset(rand_images(37), torch.arange(37) % 5)  # class 0: 8 images, pool 29


@FUZZ
@given(ratio=st.one_of(ANYTHING, st.floats(-0.5, 1.5)))
def test_poison_ratio(ratio):
    valid = is_number(ratio) and 0 <= ratio < 1 and int(37 * ratio) <= 29
    out = accepted_or_refused(lambda: poison_for_diffusion(DATA, BadNets(), ratio=ratio),
                              "ratio", valid)
    if out is not None:
        assert int(out.poisoned.sum()) == int(37 * ratio)


@FUZZ
@given(target=st.one_of(ANYTHING, st.just(1.0)))
def test_poison_target(target):
    valid = is_int(target) and 0 <= target < 5
    out = accepted_or_refused(lambda: poison_for_diffusion(DATA, BadNets(), target=target),
                              "target", valid)
    if out is not None:
        assert (out.labels[out.poisoned] == target).all()


@FUZZ
@given(seed=ANYTHING)
def test_poison_seed(seed):
    accepted_or_refused(lambda: poison_for_diffusion(DATA, BadNets(), seed=seed), "seed",
                        is_int(seed) and seed >= 0)


def test_poison_target_float_tensor():
    refused(lambda: poison_for_diffusion(DATA, BadNets(), target=torch.tensor(1.0)), "target")


def test_poison_refuses_a_clean_label_trigger():
    refused(lambda: poison_for_diffusion(DATA, LabelConsistent()), "trigger")


@FUZZ
@given(trigger=st.one_of(ANYTHING, st.just(BadNets)))
def test_poison_trigger_type(trigger):
    refused(lambda: poison_for_diffusion(DATA, trigger), "trigger")
    refused(lambda: TemplateDetector(trigger), "trigger")
    refused(lambda: train_trigger_detector(rand_images(), trigger), "trigger")


def test_poison_refuses_bad_datasets():
    refused(lambda: poison_for_diffusion(TensorDataset(rand_images(5) * 3, torch.arange(5)),
                                         BadNets()), "images")


# ---------------------------------------------------------------- detectors, trigger_ratio

@FUZZ
@given(threshold=st.one_of(ANYTHING, st.floats(-2, 2)))
def test_template_detector_threshold(threshold):
    valid = threshold is None or is_number(threshold)
    for trigger in (BadNets(), Blend()):
        accepted_or_refused(lambda t=trigger: TemplateDetector(t, threshold), "threshold",
                            valid)


@FUZZ
@given(threshold=st.one_of(ANYTHING, st.floats(-1, 2)))
def test_learned_detector_threshold(threshold):
    valid = is_number(threshold) and 0 <= threshold <= 1
    accepted_or_refused(lambda: LearnedDetector(nn.Flatten(), threshold), "threshold", valid)


@FUZZ
@given(kind=BAD_IMAGES)
def test_trigger_ratio_refuses_bad_images(kind):
    detector = TemplateDetector(BadNets())
    bad = make_bad(kind, rand_images())
    refused(lambda: trigger_ratio(bad, detector), "images")
    refused(lambda: detector.detect(bad), "images")
    refused(lambda: audit_generations(bad, 0, Logits(), detector, poison_ratio=0.1,
                                      num_classes=3), "images")


def test_trigger_ratio_refuses_bad_detectors():
    for bad in (None, "badnets", BadNets(), nn.Identity()):
        refused(lambda d=bad: trigger_ratio(rand_images(), d), "detector")
    refused(lambda: trigger_ratio(rand_images()[:0], TemplateDetector(BadNets())), "images")


def test_train_trigger_detector_refusals():
    x = rand_images(8)
    refused(lambda: train_trigger_detector(x[:1], BadNets()), "images")
    refused(lambda: train_trigger_detector(x * 2, BadNets()), "images")
    refused(lambda: train_trigger_detector(x, BadNets(), seed=-1), "seed")
    refused(lambda: train_trigger_detector(x, BadNets(), seed=1.5), "seed")
    refused(lambda: train_trigger_detector(x, BadNets(), epochs=0), "epochs")
    refused(lambda: train_trigger_detector(x, BadNets(), lr=-0.1), "lr")
    refused(lambda: train_trigger_detector(x, BadNets(), batch_size=0), "batch_size")
    refused(lambda: train_trigger_detector(x, BadNets(), model="no_such_net"), "model")


# ---------------------------------------------------------------- audit_generations

class Logits(nn.Module):
    """Fixed logits: class 0 for every image."""

    def forward(self, x):
        return torch.tensor([[3.0, 1.0, 0.0]]).expand(len(x), -1)


@FUZZ
@given(num_classes=ANYTHING)
def test_audit_num_classes(num_classes):
    valid = is_int(num_classes) and num_classes == 3  # Logits() gives 3 classes
    audit = accepted_or_refused(
        lambda: audit_generations(rand_images(), 0, Logits(), TemplateDetector(BadNets()),
                                  poison_ratio=0.1, num_classes=num_classes),
        "num_classes", valid)
    if audit is not None:
        assert audit.counts["G4"] == 4  # all class 0, none triggered


@FUZZ
@given(target=st.one_of(ANYTHING.filter(lambda v: not (isinstance(v, float) and v.is_integer())),
                        st.just(1.5)))
def test_audit_target(target):
    valid = is_int(target) and 0 <= target < 3
    audit = accepted_or_refused(
        lambda: audit_generations(rand_images(), target, Logits(), TemplateDetector(BadNets()),
                                  poison_ratio=0.1, num_classes=3),
        "target", valid)
    if audit is not None:
        assert audit.misalignment == (0.0 if target == 0 else 1.0)


def test_audit_target_whole_float():
    for target in (0.0, 2.0):
        refused(lambda t=target: audit_generations(rand_images(), t, Logits(),
                                                   TemplateDetector(BadNets()),
                                                   poison_ratio=0.1, num_classes=3), "target")


def test_audit_refuses_bad_classifier_and_detector():
    det = TemplateDetector(BadNets())
    refused(lambda: audit_generations(rand_images(), 0, "clf", det, poison_ratio=0.1,
                                      num_classes=3), "classifier")
    refused(lambda: audit_generations(rand_images(), 0, Logits(), "det", poison_ratio=0.1,
                                      num_classes=3), "detector")


def test_audit_refuses_logits_of_other_classes():
    refused(lambda: audit_generations(rand_images(), 0, Logits(), TemplateDetector(BadNets()),
                                      poison_ratio=0.1, num_classes=10), "num_classes")


def test_audit_poison_ratio_is_named():
    refused(lambda: audit_generations(rand_images(), 0, Logits(), TemplateDetector(BadNets()),
                                      poison_ratio=1.5, num_classes=3), "poison_ratio")
