"""T3 fuzz of issue 18's entry points: trustfast.metrics (Fréchet distances, fairness),
trustfast.data.skin, trustfast.diffusion (models, training, sampling) and FairSkin. Wrong
shapes, dtypes, ranges, NaN/Inf and types end in a TypeError / ValueError naming the argument,
never in a crash, a silent broadcast or an unrelated error."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.refusal import refused
from trustfast import metrics
from trustfast.data import SkinDataset, synthetic_skin
from trustfast.diffusion import fairskin

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FUZZ = settings(max_examples=20, deadline=None)
ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-3, 300),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------- Fréchet distances

GEN = torch.Generator().manual_seed(0)
F1 = torch.randn(40, 6, generator=GEN, dtype=torch.float64)
F2 = torch.randn(30, 6, generator=GEN, dtype=torch.float64) + 0.5


def test_frechet_from_features_refuses_bad_features():
    refused(lambda: metrics.frechet_distance_from_features(F1, F2[:, :5]), "f2")
    refused(lambda: metrics.frechet_distance_from_features(F1[:1], F2), "f1")
    refused(lambda: metrics.frechet_distance_from_features(F1.flatten(), F2), "f1")
    nan = F2.clone()
    nan[3, 2] = float("nan")
    refused(lambda: metrics.frechet_distance_from_features(F1, nan), "f2")
    refused(lambda: metrics.frechet_distance_from_features("features", F2), "f1")


def test_frechet_distance_refuses_bad_statistics():
    mu, sigma = F1.mean(0), F1.T.cov()
    refused(lambda: metrics.frechet_distance(mu, sigma, mu[:5], sigma), "mu2")
    refused(lambda: metrics.frechet_distance(mu, sigma[:5], mu, sigma), "sigma1")
    refused(lambda: metrics.frechet_distance(mu, sigma, mu, sigma.new_full(sigma.shape, math.inf)),
            "sigma2")
    refused(lambda: metrics.frechet_distance(mu, sigma, mu, sigma, factor="lu"), "factor")


@FUZZ
@given(shift=st.floats(-1e3, 1e3), scale=st.floats(1e-3, 1e3))
def test_frechet_is_finite_and_nonnegative(shift, scale):
    fd = metrics.frechet_distance_from_features(F1, scale * F2 + shift)
    assert math.isfinite(fd) and fd >= 0
    assert fd == pytest.approx(metrics.frechet_distance_from_features(scale * F2 + shift, F1),
                               rel=1e-6, abs=1e-9)


def test_frechet_by_group_refuses_mismatched_groups():
    groups = torch.zeros(40, dtype=torch.long)
    refused(lambda: metrics.frechet_by_group(F1, groups[:39], F2, torch.zeros(30,
                                                                             dtype=torch.long)),
            "real_groups")
    refused(lambda: metrics.frechet_by_group(F1, groups, F2, torch.ones(30, dtype=torch.long)),
            "group")


# ---------------------------------------------------------------- fairness

Y = torch.tensor([0, 1, 2, 1, 0, 2])
G = torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("name", ["group_accuracies", "worst_group_accuracy", "accuracy_gap",
                                  "equal_opportunity_difference", "equalized_odds_difference",
                                  "fairness_report"])
def test_fairness_metrics_refuse_bad_inputs(name):
    fn = getattr(metrics, name)
    refused(lambda: fn(Y, Y[:5], G), "y_pred")
    refused(lambda: fn(Y, Y, G[:4]), "groups")
    refused(lambda: fn(Y.float() + 0.5, Y, G), "y_true")
    refused(lambda: fn(Y, Y, "groups"), "groups")
    refused(lambda: fn(Y[:0], Y[:0], G[:0]), "y_true")


# ---------------------------------------------------------------- skin data


@FUZZ
@given(n=ANYTHING, size=ANYTHING, seed=ANYTHING)
def test_synthetic_skin_arguments(n, size, seed):
    def call():
        return synthetic_skin(n, size=size, seed=seed)

    ok = {"n": isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 300,
          "size": isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 300,
          "seed": isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0}
    bad = [k for k, good in ok.items() if not good]
    if bad:
        try:
            call()
        except (TypeError, ValueError) as err:
            assert any(k in str(err) for k in bad), err
            return
        pytest.fail(f"accepted bad {bad}: n={n!r} size={size!r} seed={seed!r}")
    if size > 64 or n > 64:  # fine, but kept out of the fuzz budget
        return
    data = call()
    assert len(data) == n and data.images.shape[-1] == size


def test_skin_dataset_refuses_inconsistent_tensors():
    x = torch.rand(4, 3, 8, 8)
    y, g = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 5, 5])
    names = ("a", "b")
    refused(lambda: SkinDataset(x * 2, y, g, names), "images")
    refused(lambda: SkinDataset(x, y[:3], g, names), "labels")
    refused(lambda: SkinDataset(x, y, g + 1, names), "groups")
    refused(lambda: SkinDataset(x, y + 1, g, names), "labels")
    refused(lambda: SkinDataset(x.double(), y, g, names), "images")


# ---------------------------------------------------------------- FairSkin


@FUZZ
@given(temperature=ANYTHING, mode=st.one_of(st.sampled_from(["group", "group_class"]),
                                            ANYTHING))
def test_fair_sampler_options(temperature, mode):
    groups, labels = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 1, 0])

    def call():
        return fairskin.balanced_probabilities(groups, labels, mode=mode,
                                               temperature=temperature)

    if mode not in ("group", "group_class"):
        refused(call, "mode")
    elif not (is_number(temperature) and 0 <= temperature <= 1):
        refused(call, "temperature")
    else:
        p = call()
        assert p.shape == (4,) and bool((p > 0).all())
        assert float(p.sum()) == pytest.approx(1.0)


def test_fairskin_config_and_mixing_refuse_bad_values():
    from trustfast.config import ConfigError

    for key, value in (("balance", "tone"), ("temperature", 1.5), ("synthetic_weight", -1),
                       ("target_count", -2), ("diversity_power", float("nan"))):
        refused(lambda k=key, v=value: fairskin.FairSkinConfig(**{k: v}), key, ConfigError)
    real = synthetic_skin(30, size=8, seed=0)
    refused(lambda: fairskin.mix_real_synthetic(real, "images", target_count=5,
                                                synthetic_weight=0.5), "synthetic")
    refused(lambda: fairskin.mix_real_synthetic(real, real, target_count=5,
                                                synthetic_weight=math.inf), "synthetic_weight")
    refused(lambda: fairskin.class_diversity_weights(real.groups, real.labels[:5]), "labels")


# ---------------------------------------------------------------- diffusion core


def test_unet_builders_refuse_bad_arguments():
    from trustfast.diffusion import label_unet, load_unet

    refused(lambda: label_unet(0), "num_labels")
    refused(lambda: label_unet(3, preset="huge"), "preset")
    refused(lambda: label_unet(3, sample_size=15), "sample_size")
    refused(lambda: load_unet("/no/such/unet/folder"), "path")


@pytest.fixture(scope="module")
def tiny():
    from trustfast.diffusion import label_unet

    return label_unet(2, sample_size=8, seed=0)


def test_generate_refuses_bad_labels_and_options(tiny):
    from trustfast.diffusion import generate

    labels = torch.tensor([0, 1])
    refused(lambda: generate(tiny, torch.tensor([0, 3]), steps=1, progress=False), "labels")
    refused(lambda: generate(tiny, labels.float(), steps=1, progress=False), "labels")
    refused(lambda: generate(tiny, labels, steps=0, progress=False), "steps")
    refused(lambda: generate(tiny, labels, steps=1, scheduler="euler", progress=False),
            "scheduler")
    refused(lambda: generate(tiny, labels, steps=1, guidance_scale=math.nan, progress=False),
            "guidance_scale")


def test_train_diffusion_refuses_bad_data_and_hooks(tiny):
    from trustfast.config import ConfigError
    from trustfast.diffusion import DiffusionTrainConfig, train_diffusion

    config = DiffusionTrainConfig(max_steps=1, batch_size=2, ema_decay=0.0)
    good = [(torch.rand(3, 8, 8), i % 2) for i in range(4)]
    refused(lambda: train_diffusion(tiny, [(torch.rand(3, 8, 8) * 3, 0)] * 4, config,
                                    progress=False), "image")
    refused(lambda: train_diffusion(tiny, [(torch.rand(3, 8, 8), 7)] * 4, config,
                                    progress=False), "label")
    refused(lambda: train_diffusion(tiny, good, config, loss_weight=torch.ones(3),
                                    progress=False), "loss_weight")
    refused(lambda: train_diffusion(tiny, good, config, loss_weight=-torch.ones(4),
                                    progress=False), "loss_weight")
    refused(lambda: train_diffusion(tiny, good, "config", progress=False), "config")
    for key, value in (("prediction_type", "x0"), ("label_dropout", 1.5), ("lr", 0),
                       ("mixed_precision", "fp8"), ("batch_size", 0)):
        refused(lambda k=key, v=value: DiffusionTrainConfig(**{k: v}), key, ConfigError)
