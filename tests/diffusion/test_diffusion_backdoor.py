"""Issue 19: backdoors in conditional diffusion models (trustfast.diffusion.backdoor).

Poisoning of the training data (BiBadDiff's `data/*/badnets_*.py` protocol), trigger detection,
the audit of the generations (G1-G4, trigger amplification), and the diffusion classifier,
checked against an independent port of the reference's `edm/pred.py` `eval_fn2` as an oracle.
Tiny random-weight UNets at 8 px: the parity tests need no trained model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trustfast.backdoor.poison import BadNets, Blend, LabelConsistent, WaNet
from trustfast.data import digits
from trustfast.diffusion import label_unet, token_unet
from trustfast.diffusion.backdoor import (
    DiffusionClassifier,
    GenerationAudit,
    LearnedDetector,
    TemplateDetector,
    audit_generations,
    classify_per_class,
    poison_for_diffusion,
    target_trigger_share,
    train_trigger_detector,
    trigger_ratio,
)
from trustfast.diffusion.train import DiffusionTrainConfig, noise_scheduler

pytestmark = [pytest.mark.usefixtures("one_intra_op_thread"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

K = 4  # classes of the small parity model
SIZE = 8


def rand_images(n: int, seed: int = 0, size: int = SIZE, channels: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return label_unet(K, sample_size=SIZE, in_channels=1, seed=0)


@pytest.fixture(scope="module")
def model10():
    return label_unet(10, sample_size=SIZE, in_channels=1, seed=0)


@pytest.fixture(scope="module")
def schedulers():
    return {p: noise_scheduler(DiffusionTrainConfig(prediction_type=p))
            for p in ("epsilon", "v_prediction")}


@pytest.fixture(scope="module")
def digits16():
    train, test = digits(size=16)
    return train.tensors, test.tensors


# ---------------------------------------------------------------- poisoning

def toy_dataset(n: int = 37, classes: int = 5, seed: int = 0) -> TensorDataset:
    return TensorDataset(rand_images(n, seed), torch.arange(n) % classes)


def test_poison_count_classes_labels_and_stamp():
    data = toy_dataset()
    images, labels = data.tensors
    trigger = BadNets()
    out = poison_for_diffusion(data, trigger, target=2, ratio=0.1, seed=0)
    chosen = out.poisoned_indices
    assert len(chosen) == int(37 * 0.1) == 3
    assert out.poisoned.sum() == 3 and not out.cover.any()
    # drawn from the non-target classes only, relabelled to the target
    assert (labels[chosen] != 2).all()
    assert torch.equal(out.original_labels, labels)
    assert (out.labels[chosen] == 2).all()
    rest = ~out.poisoned
    assert torch.equal(out.labels[rest], labels[rest])
    assert torch.equal(out.images[rest], images[rest])
    assert torch.equal(out.images[chosen], trigger.apply(images[chosen]))
    assert not torch.equal(out.images[chosen], images[chosen])
    # the input dataset is not modified in place
    assert torch.equal(data.tensors[0], images)
    assert out.target == 2 and out.ratio == pytest.approx(0.1) and len(out) == 37


def test_poison_blend_equals_trigger_apply():
    data = toy_dataset(50, classes=10, seed=3)
    images = data.tensors[0]
    trigger = Blend(alpha=0.2)
    out = poison_for_diffusion(data, trigger, target=0, ratio=0.2, seed=4)
    chosen = out.poisoned_indices
    assert len(chosen) == 10
    torch.testing.assert_close(out.images[chosen], trigger.apply(images[chosen]).clamp(0, 1),
                               atol=0, rtol=0)


def test_poison_ratio_zero_is_a_clean_copy():
    data = toy_dataset()
    out = poison_for_diffusion(data, BadNets(), target=0, ratio=0.0)
    assert out.poisoned.sum() == 0
    assert torch.equal(out.images, data.tensors[0]) and torch.equal(out.labels, data.tensors[1])


def test_poison_is_seeded():
    data = toy_dataset()
    a = poison_for_diffusion(data, BadNets(), ratio=0.1, seed=0).poisoned_indices
    b = poison_for_diffusion(data, BadNets(), ratio=0.1, seed=0).poisoned_indices
    c = poison_for_diffusion(data, BadNets(), ratio=0.1, seed=1).poisoned_indices
    assert torch.equal(a, b)
    assert set(a.tolist()) != set(c.tolist())


def test_poison_refusals():
    data = toy_dataset()
    with pytest.raises(ValueError, match="trigger"):
        poison_for_diffusion(data, LabelConsistent(), target=0)
    for ratio in (-0.1, 1.0, math.nan):
        with pytest.raises(ValueError, match="ratio"):
            poison_for_diffusion(data, BadNets(), ratio=ratio)
    with pytest.raises(TypeError, match="ratio"):
        poison_for_diffusion(data, BadNets(), ratio="0.1")
    for target in (-1, 5):
        with pytest.raises(ValueError, match="target"):
            poison_for_diffusion(data, BadNets(), target=target)
    for target in (1.0, True, "0"):
        with pytest.raises(TypeError, match="target"):
            poison_for_diffusion(data, BadNets(), target=target)
    # 2 classes, 30 of class 0: 0.9 * 40 = 36 poisoned images asked, only 10 available
    lopsided = TensorDataset(rand_images(40), (torch.arange(40) >= 30).long())
    with pytest.raises(ValueError, match="ratio"):
        poison_for_diffusion(lopsided, BadNets(), target=0, ratio=0.9)


def test_target_trigger_share_known_answers():
    assert target_trigger_share(0.1, 10) == pytest.approx(0.5)
    assert target_trigger_share(0.0, 10) == 0.0
    # p / (1/K + p) at p = 0.05, K = 5: 0.05 / 0.25
    assert target_trigger_share(0.05, 5) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="num_classes"):
        target_trigger_share(0.1, 1)


# ---------------------------------------------------------------- trigger detection

def test_badnets_template_detector(digits16):
    _, (images, _) = digits16
    detector = TemplateDetector(BadNets())
    stamped = BadNets().apply(images)
    assert detector.detect(stamped).all()
    assert not detector.detect(images).any()
    # imperfect (generated-like) patches: N(0, 0.05) noise, clamped back to [0, 1]
    gen = torch.Generator().manual_seed(0)
    noisy = (stamped + 0.05 * torch.randn(stamped.shape, generator=gen)).clamp(0, 1)
    noisy_clean = (images + 0.05 * torch.randn(images.shape, generator=gen)).clamp(0, 1)
    assert detector.detect(noisy).all()
    assert not detector.detect(noisy_clean).any()
    # the score is minus the mean absolute distance to the patch: 0 on an exact stamp
    assert torch.equal(detector.scores(stamped), torch.zeros(len(images)))
    assert trigger_ratio(stamped, detector) == 1.0 and trigger_ratio(images, detector) == 0.0
    half = torch.cat([stamped[:10], images[10:40]])
    assert trigger_ratio(half, detector) == pytest.approx(10 / 40)


def test_badnets_template_detector_other_corner_and_threshold(digits16):
    _, (images, _) = digits16
    trigger = BadNets(size=4, position="top-left", pattern="white")
    stamped = trigger.apply(images)
    assert TemplateDetector(trigger).detect(stamped).all()
    assert not TemplateDetector(trigger).detect(images).any()
    # a black corner is at distance 1 from a white patch: any threshold below 1 rejects it
    black = images.clone()
    black[:, :, :4, :4] = 0.0
    assert not TemplateDetector(trigger, threshold=0.99).detect(black).any()
    assert TemplateDetector(trigger, threshold=1.01).detect(black).all()


def test_blend_template_detector(digits16):
    _, (images, _) = digits16
    trigger = Blend(alpha=0.2)
    detector = TemplateDetector(trigger)
    assert detector.threshold == pytest.approx(0.1)
    stamped = trigger.apply(images)
    assert detector.detect(stamped).float().mean() >= 0.95
    assert detector.detect(images).float().mean() <= 0.05
    # the least-squares weight of the pattern's high-pass part recovers alpha on a flat image
    flat = torch.full((2, 1, 16, 16), 0.3)
    assert detector.scores(trigger.apply(flat)) == pytest.approx([0.2, 0.2], abs=1e-5)
    assert detector.scores(flat) == pytest.approx([0.0, 0.0], abs=1e-6)


def test_template_detector_refusals():
    with pytest.raises(ValueError, match="position"):
        TemplateDetector(BadNets(position="random"))
    with pytest.raises(ValueError, match="WaNet"):
        TemplateDetector(WaNet())
    with pytest.raises(TypeError, match="threshold"):
        TemplateDetector(BadNets(), threshold="0.1")
    with pytest.raises(ValueError, match="threshold"):
        TemplateDetector(BadNets(), threshold=math.nan)


def test_learned_detector_accuracy_and_seed(digits16):
    (train, _), (test, _) = digits16
    trigger = BadNets()
    detector = train_trigger_detector(train, trigger, epochs=4, lr=0.05, seed=0)
    assert isinstance(detector, LearnedDetector)
    stamped = trigger.apply(test)
    hits = detector.detect(stamped)
    false_alarms = detector.detect(test)
    accuracy = (hits.sum() + (~false_alarms).sum()).item() / (2 * len(test))
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f}"
    scores = detector.scores(test[:50])
    assert scores.shape == (50,) and ((scores >= 0) & (scores <= 1)).all()
    # same seed, same detector (a short run on a subset keeps the test fast)
    a = train_trigger_detector(train[:200], trigger, epochs=1, seed=3).scores(stamped[:20])
    b = train_trigger_detector(train[:200], trigger, epochs=1, seed=3).scores(stamped[:20])
    assert torch.equal(a, b)
    c = train_trigger_detector(train[:200], trigger, epochs=1, seed=4).scores(stamped[:20])
    assert (a - c).abs().max() > 1e-4


# ---------------------------------------------------------------- the generation audit

class PixelClassifier(nn.Module):
    """Fixed logits read from the top-left pixel: class round(10 * x[0, 0, 0])."""

    def forward(self, x):
        return -(x[:, 0, 0, 0:1] * 10 - torch.arange(10.0)).pow(2)


def audit_images(classes, triggered) -> torch.Tensor:
    images = torch.full((len(classes), 1, 16, 16), 0.5)
    for i, k in enumerate(classes):
        images[i, 0, 0, 0] = k / 10
    stamped = BadNets().apply(images)
    mask = torch.tensor(triggered)
    images[mask] = stamped[mask]
    return images


def test_audit_generations_known_answer():
    # target 0: G1 (mismatch + trigger), G2 x2 (match + trigger), G3 (mismatch), G4 (match)
    classes = [3, 0, 0, 5, 0]
    triggered = [True, True, True, False, False]
    images = audit_images(classes, triggered)
    detector = TemplateDetector(BadNets())
    audit = audit_generations(images, 0, PixelClassifier(), detector, poison_ratio=0.1,
                              num_classes=10)
    assert isinstance(audit, GenerationAudit)
    assert audit.groups.tolist() == [1, 2, 2, 3, 4]
    assert audit.counts == {"G1": 1, "G2": 2, "G3": 1, "G4": 1}
    assert audit.misalignment == pytest.approx(2 / 5)
    assert audit.trigger_ratio == pytest.approx(3 / 5)
    assert audit.target_share == pytest.approx(0.5)
    assert audit.amplification == pytest.approx(1.2)
    row = audit.row()
    assert row["G2_share"] == pytest.approx(0.4) and row["G4_share"] == pytest.approx(0.2)
    assert row["amplification"] == pytest.approx(1.2) and row["poison_ratio"] == 0.1
    # another target: every image's match flips accordingly
    other = audit_generations(images, 3, PixelClassifier(), detector, poison_ratio=0.1,
                              num_classes=10)
    assert other.groups.tolist() == [2, 1, 1, 3, 3]
    # no poisoning: the share is 0 and there is no amplification to claim
    clean = audit_generations(images, 0, PixelClassifier(), detector, poison_ratio=0.0,
                              num_classes=10)
    assert clean.target_share == 0.0 and clean.amplification is None


def test_audit_generations_refusals():
    images = audit_images([0, 1], [True, False])
    detector = TemplateDetector(BadNets())
    with pytest.raises(ValueError, match="target"):
        audit_generations(images, 10, PixelClassifier(), detector, poison_ratio=0.1,
                          num_classes=10)
    with pytest.raises(TypeError, match="classifier"):
        audit_generations(images, 0, lambda x: x, detector, poison_ratio=0.1, num_classes=10)
    with pytest.raises(TypeError, match="detector"):
        audit_generations(images, 0, PixelClassifier(), object(), poison_ratio=0.1,
                          num_classes=10)
    with pytest.raises(ValueError, match="images"):
        audit_generations(images[:0], 0, PixelClassifier(), detector, poison_ratio=0.1,
                          num_classes=10)


# ---------------------------------------------------------------- the diffusion classifier

def reference_draw_errors(clf: DiffusionClassifier, images: torch.Tensor) -> torch.Tensor:
    """(N, D, K) per-draw errors: an independent port of BiBadDiff `edm/pred.py` `eval_fn2`
    (weighting "edm") or of Li et al.'s noise error (weighting "uniform") on the classifier's
    own draws (t_d, eps_d), one forward per (image, draw) over all classes.

    EDM views x_t / sqrt(abar_t) = x0 + sigma_t eps with sigma_t = sqrt((1 - abar_t) / abar_t);
    its denoiser is the model's x0 estimate D(x); the loss is (D(x) - x0)^2 per pixel, with
    `thresh` the mean of the int(thresh * P) smallest, times (sigma^2 + sd^2) / (sigma sd)^2."""
    model, k = clf.model, clf.num_classes
    abar_all = clf.scheduler.alphas_cumprod.double()
    sd = clf.sigma_data
    shape = tuple(images.shape[1:])
    out = torch.zeros(len(images), clf.draws, k, dtype=torch.float64)
    classes = torch.arange(k)
    with torch.no_grad():
        for i in range(len(images)):
            t, noise, _ = clf._draws(i, shape, "cpu")
            x0 = images[i].double() * 2 - 1
            for d in range(clf.draws):
                abar = abar_all[t[d]]
                x_t = (abar.sqrt() * x0 + (1 - abar).sqrt() * noise[d].double()).float()
                x_in = x_t.expand(k, *shape)
                pred = model(x_in, t[d].expand(k), class_labels=classes).sample.double()
                x_t = x_t.double()
                if clf.prediction_type == "v_prediction":
                    x0_hat = abar.sqrt() * x_t - (1 - abar).sqrt() * pred
                else:
                    x0_hat = (x_t - (1 - abar).sqrt() * pred) / abar.sqrt()
                if clf.weighting == "edm":
                    sigma = ((1 - abar) / abar).sqrt()
                    loss = (x0_hat - x0).pow(2).flatten(1)
                    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
                else:
                    eps_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
                    loss = (eps_hat - noise[d].double()).pow(2).flatten(1)
                    weight = 1.0
                if clf.trim is not None:
                    loss = loss.topk(int(clf.trim * loss.shape[1]), dim=1, largest=False).values
                out[i, d] = loss.mean(1) * weight
    return out


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("weighting", ["uniform", "edm"])
@pytest.mark.parametrize("trim", [None, 0.9])
def test_batched_errors_equal_per_class_loop(model, schedulers, prediction_type, weighting,
                                             trim):
    images = rand_images(5, seed=1)
    clf = DiffusionClassifier(model, schedulers[prediction_type], K, draws=3,
                              weighting=weighting, trim=trim, batch_size=7, seed=2)
    batched = clf.errors(images)
    assert clf.stats.evaluations == 5 * 3 * K
    assert clf.stats.forwards == math.ceil(5 * 3 * K / 7)
    loop = classify_per_class(clf, images)
    assert batched.shape == (5, K) and batched.dtype == torch.float32
    assert torch.isfinite(batched).all() and (batched > 0).all()
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=1e-5)
    assert torch.equal(clf.predict(images), batched.argmin(1))


@pytest.mark.parametrize("weighting", ["uniform", "edm"])
def test_errors_independent_of_batching(model, weighting):
    images = rand_images(6, seed=3)
    results = []
    for batch_size in (5, 64):
        clf = DiffusionClassifier(model, K, draws=4, weighting=weighting, batch_size=batch_size,
                                  seed=1)
        full = clf.errors(images)
        torch.testing.assert_close(clf.errors(images[:3]), full[:3], atol=1e-5, rtol=1e-5)
        results.append(full)
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)
    # another seed, other draws, other errors
    other = DiffusionClassifier(model, K, draws=4, weighting=weighting, seed=2).errors(images)
    assert (other - results[0]).abs().max() > 1e-3


@pytest.mark.parametrize("prediction_type,weighting,trim", [
    ("epsilon", "edm", None), ("epsilon", "edm", 0.9), ("v_prediction", "edm", 0.75),
    ("epsilon", "uniform", None), ("v_prediction", "uniform", 0.9),
])
def test_errors_match_reference_eval_fn2(model, schedulers, prediction_type, weighting, trim):
    images = rand_images(3, seed=4)
    clf = DiffusionClassifier(model, schedulers[prediction_type], K, draws=4,
                              weighting=weighting, trim=trim, seed=5)
    reference = reference_draw_errors(clf, images).mean(1)
    ours = clf.errors(images).double()
    torch.testing.assert_close(ours, reference, atol=0, rtol=1e-4)
    assert torch.equal(ours.argmin(1), reference.argmin(1))


def test_draw_weights_and_timesteps(model):
    """EDM: sigma ~ lognormal(P_mean, P_std) mapped to the nearest DDPM timestep, weight on the
    noise error (sigma_t^2 + sd^2) / sd^2; uniform: golden-ratio timesteps covering [0, T)."""
    edm = DiffusionClassifier(model, K, draws=4000, weighting="edm", seed=0)
    t, noise, w = edm._draws(0, (1, SIZE, SIZE), "cpu")
    abar = edm.scheduler.alphas_cumprod.double()
    sigma_t = ((1 - abar[t]) / abar[t]).sqrt()
    torch.testing.assert_close(w.double(), (sigma_t ** 2 + 0.25) / 0.25, rtol=1e-6, atol=0)
    # the lognormal's parameters come back from the mapped sigmas (the schedule spans
    # sigma in [0.01, 157], which holds all but ~1e-4 of lognormal(-1.2, 1.2))
    log_sigma = sigma_t.log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.06)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.06)
    assert noise.shape == (4000, 1, SIZE, SIZE)
    uniform = DiffusionClassifier(model, K, draws=16, seed=0)
    t, _, w = uniform._draws(0, (1, SIZE, SIZE), "cpu")
    assert torch.equal(w, torch.ones(16))
    gaps = torch.diff(torch.cat([t.sort().values, t.min()[None] + 1000]))
    assert t.unique().numel() == 16 and gaps.max() < 3 * 1000 / 16


def test_trim_never_raises_the_error(model):
    images = rand_images(4, seed=6)
    full = DiffusionClassifier(model, K, draws=3, weighting="edm", seed=1).errors(images)
    trimmed = DiffusionClassifier(model, K, draws=3, weighting="edm", trim=0.8,
                                  seed=1).errors(images)
    assert (trimmed <= full).all() and (trimmed < full).any()
    whole = DiffusionClassifier(model, K, draws=3, weighting="edm", trim=1.0,
                                seed=1).errors(images)
    torch.testing.assert_close(whole, full, atol=0, rtol=1e-6)


def alive_after(means: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    masked = torch.where(alive, means, torch.full_like(means, math.inf))
    out = torch.zeros_like(alive)
    out.scatter_(1, masked.topk(keep, dim=1, largest=False).indices, True)
    return out


def test_adaptive_auto_costs_and_survivors(model10):
    images = rand_images(2, seed=7)
    exhaustive = DiffusionClassifier(model10, 10, draws=32, seed=3)
    full = exhaustive.errors(images)
    assert exhaustive.stats.evaluations == 2 * 320
    auto = DiffusionClassifier(model10, 10, draws=32, adaptive="auto", seed=3)
    assert auto.schedule == [(8, 2), (24, 2)]
    pruned = auto.errors(images)
    # 8 draws x 10 classes + 24 draws x the 2 survivors per image: 2.5x fewer
    assert auto.stats.evaluations == 2 * (8 * 10 + 24 * 2) == 256
    alive = torch.isfinite(pruned)
    assert (alive.sum(1) == 2).all() and (pruned[~alive] == math.inf).all()
    torch.testing.assert_close(pruned[alive], full[alive], atol=1e-5, rtol=1e-5)
    # the survivors are the 2 classes with the smallest mean error over the first 8 draws
    per_draw = reference_draw_errors(auto, images)
    expect = alive_after(per_draw[:, :8].mean(1), torch.ones_like(alive), 2)
    assert torch.equal(alive, expect)
    assert torch.equal(auto.predict(images), pruned.argmin(1))


def test_adaptive_multi_round(model10):
    images = rand_images(2, seed=8)
    clf = DiffusionClassifier(model10, 10, draws=16, adaptive=[(4, 5), (4, 2)], seed=4)
    assert clf.schedule == [(4, 5), (4, 2), (8, 2)]
    errors = clf.errors(images)
    assert clf.stats.evaluations == 2 * (4 * 10 + 4 * 5 + 8 * 2)
    alive = torch.isfinite(errors)
    per_draw = reference_draw_errors(clf, images)
    first = alive_after(per_draw[:, :4].mean(1), torch.ones_like(alive), 5)
    second = alive_after(per_draw[:, :8].mean(1), first, 2)
    assert torch.equal(alive, second)
    torch.testing.assert_close(errors[alive].double(), per_draw.mean(1)[alive], atol=0,
                               rtol=1e-4)
    # no pruning: the same errors as without adaptive
    keep_all = DiffusionClassifier(model10, 10, draws=16, adaptive=[(4, 10)], seed=4)
    plain = DiffusionClassifier(model10, 10, draws=16, seed=4)
    torch.testing.assert_close(keep_all.errors(images), plain.errors(images), atol=1e-5,
                               rtol=1e-5)


def test_adaptive_refusals(model10):
    def make(adaptive, draws=16):
        return DiffusionClassifier(model10, 10, draws=draws, adaptive=adaptive)

    with pytest.raises(ValueError, match="adaptive"):
        make([(4, 11)])  # keeps more classes than there are
    with pytest.raises(ValueError, match="adaptive"):
        make([(4, 3), (4, 5)])  # keeps more than survived the round before
    with pytest.raises(ValueError, match="adaptive"):
        make([(16, 2)])  # no draws left for the survivors
    with pytest.raises(ValueError, match="adaptive"):
        make([(8, 5), (8, 2)])
    for bad in ([(4,)], [4], [(4, 2, 1)], "fast", 3, [("4", 2)], [(4, 2.0)]):
        with pytest.raises(TypeError, match="adaptive"):
            make(bad)
    with pytest.raises(ValueError, match="adaptive"):
        make([(0, 2)])
    # "auto" with a single draw has no round to prune after
    assert make("auto", draws=1).schedule == [(1, 10)]


def test_token_unet_path():
    net = token_unet(sample_size=SIZE, in_channels=1, cross_attention_dim=32)
    conditions = torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(0))
    images = rand_images(3, seed=9)
    clf = DiffusionClassifier(net, 3, draws=3, class_conditions=conditions, batch_size=5)
    errors = clf.errors(images)
    assert errors.shape == (3, 3) and torch.isfinite(errors).all()
    torch.testing.assert_close(errors, classify_per_class(clf, images), atol=1e-5, rtol=1e-5)
    # each class is scored with its own condition: swapping two conditions swaps the columns
    swapped = DiffusionClassifier(net, 3, draws=3, class_conditions=conditions[[1, 0, 2]])
    torch.testing.assert_close(swapped.errors(images), errors[:, [1, 0, 2]], atol=1e-5,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="class_conditions"):
        DiffusionClassifier(net, 3)
    with pytest.raises(ValueError, match="class_conditions"):
        DiffusionClassifier(net, 4, class_conditions=conditions)
    with pytest.raises(ValueError, match="class_conditions"):
        DiffusionClassifier(net, 3, class_conditions=conditions[0])


def test_label_unet_refusals(model):
    with pytest.raises(ValueError, match="class_conditions"):
        DiffusionClassifier(model, K, class_conditions=torch.zeros(K, 2, 32))
    # label_unet(K) has K + 1 class embeddings (the last is the null label)
    DiffusionClassifier(model, K + 1)
    with pytest.raises(ValueError, match="num_classes"):
        DiffusionClassifier(model, K + 2)
    with pytest.raises(TypeError, match="model"):
        DiffusionClassifier(nn.Linear(2, 2), K)
    with pytest.raises(TypeError, match="scheduler"):
        DiffusionClassifier(model, "ddpm", K)
    with pytest.raises(ValueError, match="images"):
        DiffusionClassifier(model, K).errors(rand_images(2) * 2)
    with pytest.raises(TypeError, match="classifier"):
        classify_per_class(model, rand_images(2))


def test_errors_by_trim_shares_the_forwards(model):
    images = rand_images(3, seed=10)
    clf = DiffusionClassifier(model, K, draws=3, weighting="edm", trim=0.9, batch_size=7,
                              seed=6)
    by_trim = clf.errors_by_trim(images, [None, 0.5, 0.9])
    assert list(by_trim) == [None, 0.5, 0.9]
    assert clf.stats.forwards == math.ceil(3 * 3 * K / 7) and clf.stats.evaluations == 3 * 3 * K
    for q, errors in by_trim.items():
        alone = DiffusionClassifier(model, K, draws=3, weighting="edm", trim=q, seed=6)
        torch.testing.assert_close(errors, alone.errors(images), atol=1e-5, rtol=1e-5)
    assert (by_trim[0.5] <= by_trim[0.9]).all() and (by_trim[0.9] <= by_trim[None]).all()
    # adaptive pruning follows the classifier's own trim: every trim keeps the same classes
    pruned = DiffusionClassifier(model, K, draws=4, trim=0.5, adaptive=[(2, 2)], seed=6)
    out = pruned.errors_by_trim(images, [None, 0.5])
    assert torch.equal(torch.isfinite(out[None]), torch.isfinite(out[0.5]))
    torch.testing.assert_close(out[0.5], pruned.errors(images), atol=1e-5, rtol=1e-5)
    for bad, kind in (([], TypeError), (0.5, TypeError), ("0.5", TypeError),
                      ([0.0], ValueError), ([1.5], ValueError), ([math.nan], ValueError),
                      ([True], TypeError)):
        with pytest.raises(kind, match="trims"):
            clf.errors_by_trim(images, bad)


def test_the_issue_signature_and_the_scheduler_left_out(model):
    """DiffusionClassifier(model, scheduler, num_classes, draws) as the issue writes it, and
    DiffusionClassifier(model, K) with DDPM's default schedule, give the same errors."""
    x = rand_images(3, seed=5)
    full = DiffusionClassifier(model, noise_scheduler(), K, 3).errors(x)
    short = DiffusionClassifier(model, K, draws=3).errors(x)
    named = DiffusionClassifier(model, num_classes=K, draws=3).errors(x)
    assert torch.equal(full, short) and torch.equal(full, named)
    with pytest.raises(TypeError, match="num_classes"):
        DiffusionClassifier(model, noise_scheduler())
