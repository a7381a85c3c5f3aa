"""Backdoor basics on tiny tensors and hand-built models: poisoning (counts, masks, labels, seeds,
each attack's trigger), the triggered test set, SPC / MSPC / STRIP scores on cases with known
answers, AUROC and split rates, and seeded training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as fn
from torch.utils.data import TensorDataset

from trustfast.backdoor import (
    AdaptiveBlend,
    BadNets,
    Blend,
    CollapsedModelWarning,
    LabelConsistent,
    Trojan,
    WaNet,
    accuracy,
    auroc,
    masked_scaled_prediction_consistency,
    poison,
    scaled_prediction_consistency,
    scaled_prediction_consistency_loop,
    split_rates,
    strip_scores,
    train_classifier,
    triggered_test_set,
)
from trustfast.backdoor.scores import DEFAULT_SCALES, scale_inputs

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

N, CLASSES, TARGET = 40, 4, 1  # 10 samples per class
CHECKERBOARD = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


def rand_images(n: int, size: int = 8, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def dataset(size: int = 8, seed: int = 0) -> TensorDataset:
    """N random images in [0, 1], a few pixels exactly 0 and 1; labels i % CLASSES."""
    x = rand_images(N, size, seed=seed)
    x[:, 0, 3, 3], x[:, 1, 3, 3] = 0.0, 1.0
    return TensorDataset(x, torch.arange(N) % CLASSES)


def tiny_cnn(size: int = 8, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * size * size, CLASSES))


def fitted_trojan(size: int = 8) -> Trojan:
    model = tiny_cnn(size)
    return Trojan(size=3, steps=3).fit(model, model[2], (3, size, size))


def changed(after: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    return (after != before).flatten(1).any(1)


# Fresh attack objects per test; LabelConsistent gets its own clean tiny model.
DIRTY = {
    "badnets": lambda: BadNets(),
    "blend": lambda: Blend(),
    "wanet": lambda: WaNet(),
    "adaptive_blend": lambda: AdaptiveBlend(),
    "trojan": fitted_trojan,
}
ALL = {**DIRTY, "label_consistent": lambda: LabelConsistent(model=tiny_cnn(), steps=3)}


# ------------------------------------------------------------------ poison()


@pytest.mark.parametrize(("ratio", "expected"), [(0.05, 2), (0.1, 4), (0.3, 12), (0.74, 30)])
def test_poison_count_is_round_ratio_n(ratio, expected):
    p = poison(dataset(), BadNets(), ratio=ratio, target=TARGET, seed=0)
    assert expected == round(ratio * N)
    assert int(p.poisoned.sum()) == expected
    assert len(p.poisoned_indices) == expected
    assert p.describe()["n_poisoned"] == expected


def test_poison_ratio_beyond_non_target_pool_raises():
    # 30 non-target samples: 0.9 * 40 = 36 cannot be drawn (was silently truncated to 30)
    with pytest.raises(ValueError, match="ratio"):
        poison(dataset(), BadNets(), ratio=0.9, target=TARGET)


@pytest.mark.parametrize("name", list(ALL))
def test_poison_mask_matches_changed_images_and_range(name):
    data = dataset()
    p = poison(data, ALL[name](), ratio=0.1, target=TARGET, seed=3)
    x = data.tensors[0]
    assert torch.equal(changed(p.images, x), p.poisoned | p.cover)
    assert not (p.poisoned & p.cover).any()
    assert float(p.images.min()) >= 0.0 and float(p.images.max()) <= 1.0
    assert torch.equal(p.original_labels, data.tensors[1])


@pytest.mark.parametrize("name", list(DIRTY))
def test_dirty_label_relabels_to_target_never_picks_target(name):
    data = dataset()
    p = poison(data, DIRTY[name](), ratio=0.2, target=TARGET, seed=0)
    y = data.tensors[1]
    assert (p.labels[p.poisoned] == TARGET).all()
    assert (y[p.poisoned] != TARGET).all()
    assert torch.equal(p.labels[~p.poisoned], y[~p.poisoned])  # cover samples keep labels


def test_label_consistent_target_class_only_labels_kept_pgd_within_eps():
    size, eps = 10, 16 / 255
    data = dataset(size)
    x, y = data.tensors
    attack = LabelConsistent(model=tiny_cnn(size), eps=eps, steps=5, size=3)
    p = poison(data, attack, ratio=0.2, target=TARGET, seed=0)
    assert int(p.poisoned.sum()) == 8
    assert (y[p.poisoned] == TARGET).all()
    assert torch.equal(p.labels, y)
    # the four 3x3 corner patches (checkerboard, amplitude 1); PGD's change is elsewhere
    corner = torch.zeros(size, size, dtype=torch.bool)
    for r in (slice(0, 3), slice(size - 3, size)):
        for c in (slice(0, 3), slice(size - 3, size)):
            corner[r, c] = True
            assert (p.images[p.poisoned][:, :, r, c] == CHECKERBOARD).all()
    delta = (p.images[p.poisoned] - x[p.poisoned])[:, :, ~corner].abs()
    assert float(delta.max()) <= eps + 1e-6
    assert float(delta.max()) > eps / 2  # PGD moved the images


def test_label_consistent_ratio_beyond_target_class_raises():
    attack = LabelConsistent(model=tiny_cnn(), steps=1)
    with pytest.raises(ValueError, match="clean-label"):
        poison(dataset(), attack, ratio=0.3, target=TARGET)  # 12 > 10 target-class samples


def test_poison_seeded():
    a = poison(dataset(), WaNet(), ratio=0.1, target=TARGET, seed=5)
    b = poison(dataset(), WaNet(), ratio=0.1, target=TARGET, seed=5)
    c = poison(dataset(), WaNet(), ratio=0.1, target=TARGET, seed=6)
    for t in ("images", "labels", "poisoned", "cover"):
        assert torch.equal(getattr(a, t), getattr(b, t)), t
    assert not torch.equal(a.poisoned, c.poisoned)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_poison_bad_ratio_names_it(ratio):
    with pytest.raises(ValueError, match="ratio"):
        poison(dataset(), BadNets(), ratio=ratio, target=TARGET)


@pytest.mark.parametrize(("target", "error"), [(-1, ValueError), (CLASSES, ValueError),
                                               (1.0, TypeError), ("1", TypeError)])
def test_poison_bad_target_names_it(target, error):
    with pytest.raises(error, match="target"):
        poison(dataset(), BadNets(), ratio=0.1, target=target)


def test_poison_bad_attack_and_unready_attacks():
    with pytest.raises(TypeError, match="attack"):
        poison(dataset(), "badnets", ratio=0.1, target=TARGET)
    with pytest.raises(ValueError, match="model"):
        poison(dataset(), LabelConsistent(), ratio=0.1, target=TARGET)
    with pytest.raises(RuntimeError, match="fit"):
        poison(dataset(), Trojan(size=3), ratio=0.1, target=TARGET)


# ------------------------------------------------------------------ attacks


@pytest.mark.parametrize(("position", "margin", "corner"), [
    ("bottom-right", 0, (5, 5)), ("top-left", 0, (0, 0)), ("top-right", 0, (0, 5)),
    ("bottom-left", 0, (5, 0)), ("bottom-right", 1, (4, 4)), ((2, 3), 0, (2, 3)),
])
def test_badnets_checkerboard_at_corner_rest_unchanged(position, margin, corner):
    x = rand_images(5)
    out = BadNets(size=3, position=position, margin=margin).apply(x)
    r, c = corner
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[r:r + 3, c:c + 3] = True
    assert (out[:, :, r:r + 3, c:c + 3] == CHECKERBOARD).all()
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    white = BadNets(size=3, position=position, margin=margin, pattern="white").apply(x)
    assert (white[:, :, r:r + 3, c:c + 3] == 1).all()


def test_badnets_random_position_one_patch_per_image_seeded():
    x = rand_images(6)
    g = lambda: torch.Generator().manual_seed(0)
    out = BadNets(size=3, position="random").apply(x, g())
    assert torch.equal(out, BadNets(size=3, position="random").apply(x, g()))
    assert ((out != x).flatten(1).sum(1) == 3 * 9).all()  # 27 random pixels -> the patch


def test_badnets_bad_arguments():
    x = rand_images(2)
    with pytest.raises(ValueError, match="does not fit"):
        BadNets(size=3, position=(6, 6)).apply(x)
    with pytest.raises(ValueError, match="does not fit"):
        BadNets(size=9).apply(x)
    with pytest.raises(ValueError, match="size"):
        BadNets(size=0)
    with pytest.raises(ValueError, match="pattern"):
        BadNets(pattern="stripes")
    with pytest.raises(ValueError, match="position"):
        BadNets(position="middle")


def test_blend_is_convex_combination_exactly():
    x = rand_images(4)
    pattern = rand_images(1, seed=9)[0]
    assert torch.equal(Blend(alpha=0.3, pattern=pattern).apply(x), 0.7 * x + 0.3 * pattern)
    default = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(Blend().apply(x), (1 - 0.2) * x + 0.2 * default)
    with pytest.raises(ValueError, match="pattern"):
        Blend(pattern=torch.rand(3, 4, 4)).apply(x)
    with pytest.raises(ValueError, match="alpha"):
        Blend(alpha=0.0)


def test_wanet_zero_strength_is_identity_and_default_warps():
    x = rand_images(4, size=10)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 10), torch.linspace(-1, 1, 10), indexing="ij")
    assert torch.allclose(WaNet(s=0.0).grid(10, 10)[0], torch.stack((xs, ys), -1), atol=1e-7)
    assert torch.allclose(WaNet(s=0.0).apply(x), x, atol=1e-5, rtol=0)
    assert float((WaNet().apply(x) - x).abs().max()) > 0.05


@pytest.mark.parametrize(("cross_ratio", "n_cover"), [(2.0, 8), (1.5, 6), (0.0, 0)])
def test_wanet_noise_mode_cover_samples(cross_ratio, n_cover):
    data = dataset()
    x, y = data.tensors
    attack = WaNet(cross_ratio=cross_ratio)
    p = poison(data, attack, ratio=0.1, target=TARGET, seed=0)  # 4 poisoned
    assert int(p.cover.sum()) == n_cover == round(cross_ratio * 4)
    assert torch.equal(p.labels[p.cover], y[p.cover])
    assert torch.equal(p.images[p.poisoned], attack.apply(x[p.poisoned]))
    if n_cover:  # the noise warp is not the trigger warp
        assert not torch.allclose(p.images[p.cover], attack.apply(x[p.cover]), atol=1e-3)


def test_adaptive_blend_test_time_is_full_blend():
    x = rand_images(3)
    pattern = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1234))
    out = AdaptiveBlend(test_alpha=0.25).apply(x, train=False)
    assert torch.equal(out, (1 - 0.25) * x + 0.25 * pattern)


@pytest.mark.parametrize(("piece_ratio", "cells"), [(0.5, 8), (0.25, 4)])
def test_adaptive_blend_train_time_blends_piece_ratio_of_cells(piece_ratio, cells):
    x = rand_images(6)
    attack = AdaptiveBlend(pieces=4, piece_ratio=piece_ratio, train_alpha=0.15)
    out = attack.apply(x, torch.Generator().manual_seed(0), train=True)
    # 8x8 images, 4x4 cells of 2x2 pixels
    cell_changed = (out != x).view(6, 3, 4, 2, 4, 2).any(dim=(1, 3, 5))
    assert (cell_changed.flatten(1).sum(1) == cells).all()
    assert len({tuple(m.flatten().tolist()) for m in cell_changed}) > 1  # random per image
    pattern = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1234))
    full = 0.85 * x + 0.15 * pattern
    pixels = cell_changed.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None].expand_as(x)
    assert torch.allclose(out[pixels], full[pixels], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("cover_ratio", "n_cover"), [(None, 4), (0.2, 8)])
def test_adaptive_blend_cover_samples(cover_ratio, n_cover):
    data = dataset()
    p = poison(data, AdaptiveBlend(cover_ratio=cover_ratio), ratio=0.1, target=TARGET, seed=0)
    assert int(p.cover.sum()) == n_cover
    assert torch.equal(p.labels[p.cover], data.tensors[1][p.cover])
    assert (p.labels[p.poisoned] == TARGET).all()


def test_trojan_fit_raises_neuron_and_touches_patch_only():
    model = tiny_cnn()
    layer = model[2]
    attack = Trojan(size=3, steps=30, lr=0.1, seed=0)

    def activation(patch: torch.Tensor, unit: int) -> float:
        canvas = torch.zeros(1, 3, 8, 8)
        canvas[0, :, 5:, 5:] = patch
        with torch.no_grad():
            return float(model[:3](canvas)[0, unit].mean())

    attack.fit(model, layer, (3, 8, 8))
    assert attack.neuron == int(layer.weight.abs().flatten(1).sum(1).argmax())
    start = torch.sigmoid(torch.zeros(1, 3, 3, 3).normal_(
        generator=torch.Generator().manual_seed(0)))[0]
    fitted = activation(attack._patch, attack.neuron)
    assert fitted > activation(start, attack.neuron)
    g = torch.Generator().manual_seed(1)  # and than any of 50 random patches
    assert fitted > max(activation(torch.rand(3, 3, 3, generator=g), attack.neuron)
                        for _ in range(50))
    assert all(p.grad is None for p in model.parameters())  # fit leaves the model alone

    x = rand_images(4)
    out = attack.apply(x)
    assert torch.equal(out[:, :, 5:, 5:], attack._patch.expand(4, -1, -1, -1))
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[5:, 5:] = False
    assert torch.equal(out[:, :, outside], x[:, :, outside])
    with pytest.raises(ValueError, match="layer"):
        Trojan().fit(model, nn.Linear(2, 2), (3, 8, 8))


def test_triggered_test_set_excludes_target_all_labelled_target():
    x = rand_images(12)
    y = torch.arange(12) % CLASSES
    tx, ty = triggered_test_set(TensorDataset(x, y), BadNets(), target=2)
    assert len(ty) == 9 and (ty == 2).all() and ty.dtype == y.dtype
    assert torch.equal(tx, BadNets().apply(x[y != 2]))


# ------------------------------------------------------------------ scores


class MeanVsHalf(nn.Module):
    """Logits [mean pixel, 0.5]: class 0 when the mean exceeds 0.5, else class 1."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack((m, torch.full_like(m, 0.5)), dim=1)


def constant_images(values) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()


def test_spc_hand_computed():
    # v = 0.07: 2v..7v < 0.5 keep class 1, 8v..12v flip: 6 of 11. 0.6: stays 0. 0: black stays
    # 1. 0.3: 2v = 0.6 already flips.
    x = constant_images([0.07, 0.6, 0.0, 0.3])
    expected = torch.tensor([6 / 11, 1.0, 1.0, 0.0])
    for f in (scaled_prediction_consistency, scaled_prediction_consistency_loop):
        assert torch.allclose(f(MeanVsHalf(), x, batch_size=3), expected, atol=1e-6), f.__name__
    # tau 0.04: (0.07 - 0.04) 12 = 0.36 keeps class 1; (0.3 - 0.04) 2 = 0.52 flips
    mspc = masked_scaled_prediction_consistency(MeanVsHalf(), x, tau=0.04)
    assert torch.equal(mspc, torch.tensor([1.0, 1.0, 1.0, -1.0]))


def test_mspc_zero_mask_scales_to_black():
    x = constant_images([0.07, 0.6, 0.0, 0.3])
    zeros = torch.zeros(1, 2, 2)
    s = torch.tensor([2.0, 5.0])
    assert torch.equal(scale_inputs(x, s, zeros), torch.zeros(8, 1, 2, 2))
    # black is class 1: consistent iff f(x) = 1, i.e. the mean is below 0.5
    mspc = masked_scaled_prediction_consistency(MeanVsHalf(), x, mask=zeros, tau=0.0)
    assert torch.equal(mspc, torch.tensor([1.0, -1.0, 1.0, 1.0]))


# the random CNN predicts one class on these dim images: the collapse warning is right there
@pytest.mark.filterwarnings("ignore::trustfast.backdoor.CollapsedModelWarning")
def test_spc_batched_equals_loop_and_mspc_identity():
    model = tiny_cnn(size=6, seed=1)
    x = rand_images(37, size=6, seed=2) * 0.2  # dim images: predictions flip at some scales
    spc = scaled_prediction_consistency(model, x, batch_size=8)
    assert torch.equal(spc, scaled_prediction_consistency_loop(model, x, batch_size=8))
    assert len(spc.unique()) > 3  # not a degenerate all-0 / all-1 case
    assert torch.equal(spc, scaled_prediction_consistency(model, x, batch_size=37))
    mspc = masked_scaled_prediction_consistency(model, x, mask=None, tau=0.0, batch_size=8)
    assert torch.equal(mspc, 2 * spc - 1)
    ones = masked_scaled_prediction_consistency(model, x, mask=torch.ones(3, 6, 6), batch_size=5)
    assert torch.equal(ones, mspc)


def test_scale_inputs_scale_major_and_clipped():
    x = rand_images(3, size=4)
    s = torch.tensor([0.5, 2.0, 3.0])
    out = scale_inputs(x, s)
    assert out.shape == (9, 3, 4, 4)
    for i, v in enumerate(s.tolist()):
        for j in range(3):
            assert torch.equal(out[i * 3 + j], (v * x[j]).clamp(0, 1)), (i, j)
    assert float(out.min()) >= 0 and float(out.max()) == 1.0
    assert len(DEFAULT_SCALES) == 11 and DEFAULT_SCALES[0] == 2 and DEFAULT_SCALES[-1] == 12


class ConstantLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


class CornerTrigger(nn.Module):
    """Logits [10 x (top-left pixel of channel 0), 0]: confident iff that pixel is bright."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        c = x[:, 0, 0, 0]
        return torch.stack((10 * c, torch.zeros_like(c)), dim=1)


def entropy(logits) -> float:
    logp = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), 0)
    return float(-(logp.exp() * logp).sum())


def test_strip_constant_model_scores_minus_entropy():
    logits = [2.0, 0.5, -1.0]
    with pytest.warns(CollapsedModelWarning, match="same score"):
        scores = strip_scores(ConstantLogits(logits), rand_images(7), overlays=5, batch_size=3)
    assert torch.allclose(scores, torch.full((7,), -entropy(logits)), atol=1e-6)


def test_strip_confident_sample_scores_higher():
    clean = rand_images(6)
    clean[:, 0, 0, 0] = 0.0
    triggered = clean[:1].clone()
    triggered[:, 0, 0, 0] = 1.0
    x = torch.cat((clean, triggered))
    scores = strip_scores(CornerTrigger(), x, overlays=4, pool=clean, batch_size=4)
    assert torch.allclose(scores[:6], torch.full((6,), -math.log(2)), atol=1e-6)
    assert abs(float(scores[6]) + entropy([10.0, 0.0])) < 1e-6
    assert float(scores[6]) > float(scores[:6].max())


def test_score_bad_inputs_name_the_argument():
    model, x = MeanVsHalf(), constant_images([0.1, 0.2])
    for scales in ([], [2, -1], [0]):
        with pytest.raises(ValueError, match="scales"):
            scaled_prediction_consistency(model, x, scales=scales)
        with pytest.raises(ValueError, match="scales"):
            scaled_prediction_consistency_loop(model, x, scales=scales)
    with pytest.raises(ValueError, match="scales"):
        masked_scaled_prediction_consistency(model, x, scales=[])
    for overlays in (0, -3):
        with pytest.raises(ValueError, match="overlays"):
            strip_scores(model, x, overlays=overlays)
    for overlays in (2.5, "4"):
        with pytest.raises(TypeError, match="overlays"):
            strip_scores(model, x, overlays=overlays)
    with pytest.raises(ValueError, match="pool"):
        strip_scores(model, x, pool=torch.rand(3, 1, 3, 3))
    with pytest.raises(ValueError, match="images"):  # CHW: one image, not a batch
        scaled_prediction_consistency(model, x[0])
    with pytest.raises(TypeError, match="images"):
        strip_scores(model, (x * 255).long())
    with pytest.raises(TypeError, match="model"):
        scaled_prediction_consistency(lambda t: t, x)


# ------------------------------------------------------------------ metrics


@pytest.mark.parametrize(("scores", "labels", "expected"), [
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
    # pairs (pos, neg): (0.5 vs 0.5) ties = 1/2, (0.5 vs 0.2) = 1, (0.9 vs both) = 2 -> 3.5 / 4
    ([0.5, 0.2, 0.5, 0.9], [0, 0, 1, 1], 0.875),
])
def test_auroc_known_cases(scores, labels, expected):
    assert auroc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(expected)


def test_split_rates_hand_case():
    flagged = torch.tensor([1, 0, 1, 0, 0, 0])  # 1 of 2 poisoned, 1 of 4 clean
    poisoned = torch.tensor([True, True, False, False, False, False])
    tpr, fpr = split_rates(flagged, poisoned)
    assert tpr == 0.5 and fpr == pytest.approx(1 / 4)


def test_metric_errors():
    with pytest.raises(ValueError, match="both"):
        auroc(torch.rand(4), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="both"):
        auroc(torch.rand(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        auroc(torch.rand(5), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="poisoned"):
        auroc(torch.rand(4), torch.tensor([[0, 1], [0, 1]]))
    with pytest.raises(ValueError, match="both"):
        split_rates(torch.tensor([1, 0]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="shape"):
        split_rates(torch.tensor([1, 0, 1]), torch.tensor([1, 0]))


# ------------------------------------------------------------------ training


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 3))


def test_train_classifier_seeded_and_learns():
    x = rand_images(32, size=4)
    y = torch.arange(32) % 3
    data = TensorDataset(x, y)
    init = {k: v.clone() for k, v in tiny_mlp().state_dict().items()}
    a = train_classifier(tiny_mlp(), data, epochs=3, lr=0.1, batch_size=8, seed=0)
    b = train_classifier(tiny_mlp(), data, epochs=3, lr=0.1, batch_size=8, seed=0)
    c = train_classifier(tiny_mlp(), data, epochs=3, lr=0.1, batch_size=8, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)  # another shuffle order
    assert not torch.equal(sa["1.weight"], init["1.weight"])
    assert not a.training
    loss = lambda m: float(fn.cross_entropy(m(x), y).detach())
    assert loss(a) < loss(tiny_mlp())


@pytest.mark.parametrize("epochs", [0, -1, 1.5])
def test_train_classifier_bad_epochs(epochs):
    data = TensorDataset(rand_images(4, size=4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(tiny_mlp(), data, epochs=epochs)


def test_accuracy_hand_case():
    # logits = the first two pixels: class = which of them is larger
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0, 0] = model[1].weight[1, 1] = 1.0
    x = torch.zeros(4, 3, 4, 4)
    x[0, 0, 0, 0] = x[1, 0, 0, 1] = x[2, 0, 0, 0] = x[3, 0, 0, 1] = 1.0  # classes 0, 1, 0, 1
    assert accuracy(model, x, torch.tensor([0, 1, 1, 1]), batch_size=3) == 75.0
    assert accuracy(model, x, torch.tensor([0, 1, 0, 1]), batch_size=3) == 100.0
