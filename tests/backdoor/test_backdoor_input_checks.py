"""Issue 17 for trustfast.backdoor: every public entry point refuses bad input with an error
naming the argument (metrics, masks, images, numbers) and a collapsed model is reported."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trustfast.backdoor import (
    AdaptiveBlend,
    BadNets,
    Blend,
    CollapsedModelWarning,
    LabelConsistent,
    MSPCConfig,
    Trojan,
    WaNet,
    accuracy,
    auroc,
    identify_mspc,
    masked_scaled_prediction_consistency,
    poison,
    scaled_prediction_consistency,
    scaled_prediction_consistency_loop,
    split_rates,
    strip_scores,
    triggered_test_set,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = MSPCConfig(inner_epochs=1, outer_rounds=1, batch_size=16, scales=[2.0, 4.0])


def images(n: int = 12, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5))


class ConstantLogits(nn.Module):
    """A collapsed classifier: the same logits (class 2 wins) whatever the input."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.1, -1.0, 3.0, 0.5]))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


class BrightestChannel(nn.Module):
    """Logits = the mean of each channel: a model whose prediction depends on the input."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.mean((2, 3))


# ---------------------------------------------------------------- 1. metrics


def test_split_rates_refuses_float_predictions():
    poisoned = torch.tensor([True, False, True, False])
    with pytest.raises(TypeError, match="flagged"):  # was cast silently (0.7 -> True)
        split_rates(torch.tensor([0.7, 0.0, 0.2, 0.0]), poisoned)
    with pytest.raises(TypeError, match="poisoned"):
        split_rates(torch.tensor([1, 0, 1, 0]), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="flagged.*0 and 1"):  # a class index, not a split
        split_rates(torch.tensor([2, 0, 1, 0]), poisoned)
    with pytest.raises(TypeError, match="flagged"):
        split_rates([1, 0, 1, 0], poisoned)
    assert split_rates(torch.tensor([1, 0, 0, 0], dtype=torch.uint8), poisoned) == (0.5, 0.0)


def test_metrics_never_broadcast():
    poisoned = torch.tensor([True, False, True, False])
    with pytest.raises(ValueError, match="flagged"):  # (1,) would broadcast over the 4
        split_rates(torch.tensor([True]), poisoned)
    with pytest.raises(ValueError, match="flagged"):
        split_rates(torch.ones(4, 1, dtype=torch.bool), poisoned)
    with pytest.raises(ValueError, match="scores"):
        auroc(torch.rand(1), poisoned)
    with pytest.raises(ValueError, match="scores"):
        auroc(torch.rand(4, 1), poisoned)


def test_auroc_refuses_nan_scores_and_non_tensors():
    poisoned = torch.tensor([True, False, True, False])
    with pytest.raises(ValueError, match="scores.*NaN"):
        auroc(torch.tensor([0.1, float("nan"), 0.3, 0.2]), poisoned)
    with pytest.raises(ValueError, match="scores"):
        auroc(torch.tensor([0.1, float("inf"), 0.3, 0.2]), poisoned)
    with pytest.raises(TypeError, match="scores"):
        auroc([0.1, 0.2, 0.3, 0.4], poisoned)
    with pytest.raises(TypeError, match="poisoned"):
        auroc(torch.rand(4), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert auroc(torch.tensor([0.9, 0.1, 0.8, 0.2]), poisoned) == 1.0


def test_accuracy_refuses_float_or_mismatched_labels():
    model, x = BrightestChannel(), images(4)
    with pytest.raises(TypeError, match="labels"):
        accuracy(model, x, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="labels"):  # one label would broadcast
        accuracy(model, x, torch.tensor([1]))
    with pytest.raises(ValueError, match="images"):
        accuracy(model, x * 255, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="batch_size"):
        accuracy(model, x, torch.tensor([0, 1, 2, 0]), batch_size=0)


# ---------------------------------------------------------------- 2. masks


@pytest.mark.parametrize("shape", [(8,), (1, 8), (8, 1), (2, 8, 8), (4, 1, 8, 8), (1, 1, 8, 7),
                                   (1, 1, 1, 8, 8)])
def test_mspc_mask_of_another_shape_is_refused(shape):
    with pytest.raises(ValueError, match="mask"):  # (8,) was broadcast over the rows
        masked_scaled_prediction_consistency(tiny_cnn(), images(), torch.ones(shape), 0.1)


def test_mspc_mask_values_and_dtype():
    model, x = tiny_cnn(), images()
    with pytest.raises(ValueError, match=r"mask must lie in \[0, 1\]"):
        masked_scaled_prediction_consistency(model, x, torch.full((8, 8), 2.0))
    with pytest.raises(ValueError, match="mask"):
        masked_scaled_prediction_consistency(model, x, torch.full((8, 8), float("nan")))
    with pytest.raises(TypeError, match="mask"):
        masked_scaled_prediction_consistency(model, x, torch.ones(8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="mask"):
        masked_scaled_prediction_consistency(model, x, [[1.0] * 8] * 8)
    with pytest.raises(ValueError, match="tau"):
        masked_scaled_prediction_consistency(model, x, None, tau=1.5)
    with pytest.raises(TypeError, match="tau"):
        masked_scaled_prediction_consistency(model, x, None, tau="0.1")


def test_mspc_accepted_mask_shapes_agree():
    model, x = tiny_cnn(), images()
    m = torch.rand(8, 8, generator=torch.Generator().manual_seed(5))
    ref = masked_scaled_prediction_consistency(model, x, m, 0.1)
    for mask in (m[None], m[None, None], m.expand(3, 8, 8), m.expand(1, 3, 8, 8), m > 0.5):
        got = masked_scaled_prediction_consistency(model, x, mask, 0.1)
        if mask.dtype == torch.bool:
            assert torch.equal(got, masked_scaled_prediction_consistency(model, x,
                                                                         (m > 0.5).float(), 0.1))
        else:
            assert torch.equal(got, ref)


# ---------------------------------------------------------------- 3. images and numbers

SCORES = [
    lambda m, x: scaled_prediction_consistency(m, x),
    lambda m, x: scaled_prediction_consistency_loop(m, x),
    lambda m, x: masked_scaled_prediction_consistency(m, x, None, 0.1),
    lambda m, x: strip_scores(m, x, overlays=2),
    lambda m, x: identify_mspc(m, x, TINY, progress=False),
]


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("bad", ["normalized", "x255"])
def test_scores_refuse_images_outside_unit_range(score, bad):
    x = images() * 4 - 2 if bad == "normalized" else images() * 255
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\].*divide uint8"):
        score(tiny_cnn(), x)


@pytest.mark.parametrize("score", SCORES)
def test_scores_refuse_uint8_nan_and_empty_images(score):
    with pytest.raises(TypeError, match="images.*float"):
        score(tiny_cnn(), (images() * 255).to(torch.uint8))
    x = images()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images"):
        score(tiny_cnn(), x)
    with pytest.raises(ValueError, match="images"):
        score(tiny_cnn(), images()[:0])


def test_score_numbers_name_the_argument():
    model, x = tiny_cnn(), images()
    with pytest.raises(TypeError, match="scales"):
        scaled_prediction_consistency(model, x, scales=["2"])
    with pytest.raises(TypeError, match="scales"):
        scaled_prediction_consistency(model, x, scales=2)
    with pytest.raises(ValueError, match="scales"):
        scaled_prediction_consistency(model, x, scales=[2.0, float("nan")])
    with pytest.raises(TypeError, match="batch_size"):
        scaled_prediction_consistency(model, x, batch_size="256")
    with pytest.raises(ValueError, match="pool"):
        strip_scores(model, x, pool=x * 255)
    with pytest.raises(ValueError, match="seed"):
        strip_scores(model, x, seed=-1)
    with pytest.raises(TypeError, match="config"):
        identify_mspc(model, x, {"tau": 0.1})


def test_validate_false_skips_only_the_range_check():
    model, x = tiny_cnn(), images()
    ref = scaled_prediction_consistency(model, x)
    assert torch.equal(scaled_prediction_consistency(model, x, validate=False), ref)
    with pytest.raises(TypeError, match="images"):  # the cheap checks still run
        scaled_prediction_consistency(model, x.long(), validate=False)


def labelled(x: torch.Tensor) -> TensorDataset:
    return TensorDataset(x, torch.arange(len(x)) % 4)


@pytest.mark.parametrize("scale", [lambda x: x * 4 - 2, lambda x: x * 255])
def test_poisoning_refuses_images_outside_unit_range(scale):
    bad = scale(images())
    for attack in (BadNets(), Blend(), WaNet(), AdaptiveBlend()):
        with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
            attack.apply(bad)
    with pytest.raises(ValueError, match=r"dataset\[0\].*\[0, 1\]"):
        poison(labelled(bad), BadNets(), ratio=0.25, target=1)
    with pytest.raises(ValueError, match=r"test\[0\].*\[0, 1\]"):
        triggered_test_set(labelled(bad), BadNets(), 1)
    ok = poison(labelled(images()), BadNets(), ratio=0.25, target=1)  # [0, 1] goes through
    assert int(ok.poisoned.sum()) == 3 and float(ok.images.max()) <= 1.0


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"ratio": "0.1"}, TypeError, "ratio"), ({"ratio": float("nan")}, ValueError, "ratio"),
    ({"ratio": torch.tensor([0.1, 0.2])}, TypeError, "ratio"),
    ({"target": True}, TypeError, "target"), ({"target": 4}, ValueError, "target"),
    ({"target": torch.tensor(1.0)}, TypeError, "target"),
    ({"seed": -1}, ValueError, "seed"), ({"seed": 1.5}, TypeError, "seed"),
])
def test_poison_numbers_name_the_argument(kwargs, error, name):
    args = {"ratio": 0.25, "target": 1, "seed": 0, **kwargs}
    with pytest.raises(error, match=name):
        poison(labelled(images()), BadNets(), **args)


def test_triggered_test_set_target_is_checked():
    with pytest.raises(ValueError, match="target"):
        triggered_test_set(labelled(images()), BadNets(), 7)
    with pytest.raises(TypeError, match="attack"):
        triggered_test_set(labelled(images()), "badnets", 1)


@pytest.mark.parametrize(("make", "error", "name"), [
    (lambda: BadNets(size=2.5), TypeError, "size"), (lambda: BadNets(size="3"), TypeError, "size"),
    (lambda: BadNets(size=0), ValueError, "size"), (lambda: BadNets(margin=-1), ValueError,
                                                    "margin"),
    (lambda: BadNets(position=(1, "2")), TypeError, "position"),
    (lambda: BadNets(position=[1, 2]), TypeError, "position"),
    (lambda: Blend(alpha=float("nan")), ValueError, "alpha"),
    (lambda: Blend(alpha="0.2"), TypeError, "alpha"),
    (lambda: Blend(pattern=torch.full((3, 8, 8), 2.0)), ValueError, "pattern"),
    (lambda: WaNet(k=1), ValueError, "k"), (lambda: WaNet(s=float("inf")), ValueError, "s"),
    (lambda: WaNet(grid_rescale=0), ValueError, "grid_rescale"),
    (lambda: Trojan(steps=0), ValueError, "steps"), (lambda: Trojan(size=1.5), TypeError, "size"),
    (lambda: Trojan(lr=-1.0), ValueError, "lr"),
    (lambda: LabelConsistent(eps=0.0), ValueError, "eps"),
    (lambda: LabelConsistent(steps="10"), TypeError, "steps"),
    (lambda: LabelConsistent(model="resnet"), TypeError, "model"),
    (lambda: AdaptiveBlend(pieces=0), ValueError, "pieces"),
    (lambda: AdaptiveBlend(train_alpha=1.5), ValueError, "train_alpha"),
    (lambda: AdaptiveBlend(cover_ratio=1.0), ValueError, "cover_ratio"),
])
def test_trigger_parameters_name_the_argument(make, error, name):
    with pytest.raises(error, match=name):
        make()


def test_trojan_fit_checks_image_shape():
    model = tiny_cnn()
    with pytest.raises(TypeError, match="image_shape"):
        Trojan(size=3, steps=1).fit(model, model[0], (3, 8))
    with pytest.raises(ValueError, match="image_shape"):
        Trojan(size=3, steps=1).fit(model, model[0], (3, 0, 8))


# ---------------------------------------------------------------- 4. a collapsed model


def test_identify_on_a_collapsed_model_warns_and_records_it():
    with pytest.warns(CollapsedModelWarning, match="class 2 for all 12 samples.*no information"):
        result = identify_mspc(ConstantLogits(), images(), TINY, progress=False)
    assert bool(result.flagged.all())  # what the warning is about: 100 % flagged
    assert result.collapsed and result.history[0]["collapsed"]
    assert json.loads(json.dumps(result.to_json()))["collapsed"] is True


def test_identify_on_a_working_model_does_not_warn():
    x = images()
    assert len(BrightestChannel()(x).argmax(1).unique()) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedModelWarning)
        result = identify_mspc(BrightestChannel(), x, TINY, progress=False)
    assert not result.collapsed


def test_spc_on_a_collapsed_model_warns():
    for score in SCORES[:3]:
        with pytest.warns(CollapsedModelWarning, match="collapsed"):
            score(ConstantLogits(), images())
    with pytest.warns(CollapsedModelWarning, match="same score"):
        strip_scores(ConstantLogits(), images(), overlays=2)
