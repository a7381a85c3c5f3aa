"""Feature extractors: pytorch-fid's Inception layout and weights file, the trained CNN,
`extract_features`, per-group distances and result names."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from trustfast.metrics import (
    CNNFeatureExtractor,
    FeatureExtractor,
    FIDInceptionV3,
    distance_name,
    extract_features,
    frechet_by_group,
    frechet_distance_from_features,
    inception_extractor,
    train_feature_extractor,
)
from trustfast.metrics.inception import WEIGHTS_FILE


def _conv(prefix, c_in, c_out, k=(1, 1)):
    """torchvision's BasicConv2d: conv (no bias) + BatchNorm (4 tensors + the step counter)."""
    k = (k, k) if isinstance(k, int) else k
    c = (c_out,)
    return {f"{prefix}.conv.weight": (c_out, c_in, *k), f"{prefix}.bn.weight": c,
            f"{prefix}.bn.bias": c, f"{prefix}.bn.running_mean": c,
            f"{prefix}.bn.running_var": c, f"{prefix}.bn.num_batches_tracked": ()}


def _a(p, c_in, pool):
    return {**_conv(f"{p}.branch1x1", c_in, 64), **_conv(f"{p}.branch5x5_1", c_in, 48),
            **_conv(f"{p}.branch5x5_2", 48, 64, 5), **_conv(f"{p}.branch3x3dbl_1", c_in, 64),
            **_conv(f"{p}.branch3x3dbl_2", 64, 96, 3), **_conv(f"{p}.branch3x3dbl_3", 96, 96, 3),
            **_conv(f"{p}.branch_pool", c_in, pool)}


def _b(p, c_in):
    return {**_conv(f"{p}.branch3x3", c_in, 384, 3), **_conv(f"{p}.branch3x3dbl_1", c_in, 64),
            **_conv(f"{p}.branch3x3dbl_2", 64, 96, 3), **_conv(f"{p}.branch3x3dbl_3", 96, 96, 3)}


def _c(p, c_in, c7):
    return {**_conv(f"{p}.branch1x1", c_in, 192), **_conv(f"{p}.branch7x7_1", c_in, c7),
            **_conv(f"{p}.branch7x7_2", c7, c7, (1, 7)),
            **_conv(f"{p}.branch7x7_3", c7, 192, (7, 1)),
            **_conv(f"{p}.branch7x7dbl_1", c_in, c7),
            **_conv(f"{p}.branch7x7dbl_2", c7, c7, (7, 1)),
            **_conv(f"{p}.branch7x7dbl_3", c7, c7, (1, 7)),
            **_conv(f"{p}.branch7x7dbl_4", c7, c7, (7, 1)),
            **_conv(f"{p}.branch7x7dbl_5", c7, 192, (1, 7)),
            **_conv(f"{p}.branch_pool", c_in, 192)}


def _d(p, c_in):
    return {**_conv(f"{p}.branch3x3_1", c_in, 192), **_conv(f"{p}.branch3x3_2", 192, 320, 3),
            **_conv(f"{p}.branch7x7x3_1", c_in, 192),
            **_conv(f"{p}.branch7x7x3_2", 192, 192, (1, 7)),
            **_conv(f"{p}.branch7x7x3_3", 192, 192, (7, 1)),
            **_conv(f"{p}.branch7x7x3_4", 192, 192, 3)}


def _e(p, c_in):
    return {**_conv(f"{p}.branch1x1", c_in, 320), **_conv(f"{p}.branch3x3_1", c_in, 384),
            **_conv(f"{p}.branch3x3_2a", 384, 384, (1, 3)),
            **_conv(f"{p}.branch3x3_2b", 384, 384, (3, 1)),
            **_conv(f"{p}.branch3x3dbl_1", c_in, 448),
            **_conv(f"{p}.branch3x3dbl_2", 448, 384, 3),
            **_conv(f"{p}.branch3x3dbl_3a", 384, 384, (1, 3)),
            **_conv(f"{p}.branch3x3dbl_3b", 384, 384, (3, 1)),
            **_conv(f"{p}.branch_pool", c_in, 192)}


def expected_fid_inception_keys() -> dict[str, tuple[int, ...]]:
    """The state dict of pytorch-fid's `fid_inception_v3()` (torchvision's Inception3 with
    num_classes=1008, aux_logits=False, FIDInception A/C/E blocks), written out from the two
    sources' layer tables: the keys of pt_inception-2015-12-05-6726825d.pth."""
    keys = {**_conv("Conv2d_1a_3x3", 3, 32, 3), **_conv("Conv2d_2a_3x3", 32, 32, 3),
            **_conv("Conv2d_2b_3x3", 32, 64, 3), **_conv("Conv2d_3b_1x1", 64, 80),
            **_conv("Conv2d_4a_3x3", 80, 192, 3),
            **_a("Mixed_5b", 192, 32), **_a("Mixed_5c", 256, 64), **_a("Mixed_5d", 288, 64),
            **_b("Mixed_6a", 288), **_c("Mixed_6b", 768, 128), **_c("Mixed_6c", 768, 160),
            **_c("Mixed_6d", 768, 160), **_c("Mixed_6e", 768, 192), **_d("Mixed_7a", 768),
            **_e("Mixed_7b", 1280), **_e("Mixed_7c", 2048)}
    keys["fc.weight"], keys["fc.bias"] = (1008, 2048), (1008,)
    return keys


def test_inception_state_dict_matches_pytorch_fid_layout():
    expected = expected_fid_inception_keys()
    # 94 BasicConv2d (5 stem + 3x7 A + 4 B + 4x10 C + 6 D + 2x9 E) x 6 entries + fc's 2.
    assert len(expected) == 94 * 6 + 2 == 566
    model = FIDInceptionV3()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    # torchvision's inception_v3 has 27,161,264 parameters; minus its aux head (3,326,696)
    # plus the 1008-way fc's extra 8 classes (16,392).
    assert sum(p.numel() for p in model.parameters()) == 27_161_264 - 3_326_696 + 16_392


@pytest.fixture(scope="module")
def random_inception_state():
    torch.manual_seed(0)
    model = FIDInceptionV3()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics that keep activations O(1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(0.0, 0.2)
            elif isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_inception_weights_file_round_trips(tmp_path, random_inception_state, images):
    pth = tmp_path / WEIGHTS_FILE
    torch.save(random_inception_state, pth)
    st = tmp_path / "inception.safetensors"
    save_file(random_inception_state, str(st))
    # A file saved before torch 0.4.1 has no num_batches_tracked counters: still loads.
    old = tmp_path / "old.pth"
    torch.save({k: v for k, v in random_inception_state.items()
                if not k.endswith("num_batches_tracked")}, old)
    outputs = []
    for path in (pth, st, old):
        model = inception_extractor(path)
        assert isinstance(model, FeatureExtractor) and model.name == "inception"
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        state = model.state_dict()
        for k, v in random_inception_state.items():
            if path is old and k.endswith("num_batches_tracked"):
                continue
            assert torch.equal(state[k], v), (path.name, k)
        outputs.append(extract_features(model, images))
    assert outputs[0].shape == (2, 2048) and outputs[0].dtype == torch.float64
    assert bool(torch.isfinite(outputs[0]).all()) and float(outputs[0].abs().sum()) > 0
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    assert distance_name(model) == "FID"


def test_inception_preprocessing_is_pytorch_fids(random_inception_state):
    """Bilinear resize to 299 (align_corners=False): an image given at 299 x 299 after that
    resize gives the same features as the small image."""
    model = FIDInceptionV3().eval()
    model.load_state_dict(random_inception_state)
    small = torch.rand(1, 3, 40, 24, generator=torch.Generator().manual_seed(2))
    big = torch.nn.functional.interpolate(small, size=(299, 299), mode="bilinear",
                                          align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(model(small), model(big), rtol=0, atol=0)


def test_missing_inception_weights_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE.replace(".", r"\.")) as info:
        inception_extractor(tmp_path / "nowhere.pth")
    assert "github.com/mseitzer/pytorch-fid" in str(info.value)
    assert "downloads nothing" in str(info.value)
    with pytest.raises(TypeError, match="weights_path must be a path"):
        inception_extractor(None)


def test_wrong_weights_file_is_refused(tmp_path, random_inception_state):
    path = tmp_path / "bad.pth"
    state = dict(random_inception_state)
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    torch.save(state, path)
    with pytest.raises(ValueError, match="1 missing .*Mixed_7c.branch_pool.conv.weight.*"
                                         "1 unexpected .*AuxLogits.fc.weight"):
        inception_extractor(path)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module, not weights
    with pytest.raises(ValueError, match="weights_only=True"):
        inception_extractor(tmp_path / "module.pth")


def colour_data(n: int, size: int, seed: int = 0):
    """Three classes told apart by their dominant colour channel, with noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = 0.35 * torch.rand(n, 3, size, size, generator=gen)
    images[torch.arange(n), labels] += 0.5 + 0.1 * torch.rand(n, size, size, generator=gen)
    return images.clamp(0, 1), labels


def test_trained_extractor_is_deterministic_and_learns():
    images, labels = colour_data(96, 16)
    rng = torch.random.get_rng_state()
    kwargs = dict(epochs=3, feature_dim=12, width=4, batch_size=16)
    a = train_feature_extractor(images, labels, seed=3, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is untouched
    b = train_feature_extractor(images, labels, seed=3, **kwargs)
    c = train_feature_extractor(images, labels, seed=4, **kwargs)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.head.weight, c.head.weight)
    assert a.losses == b.losses and len(a.losses) == 3 and a.losses[-1] < a.losses[0]
    assert a.train_accuracy >= 0.9
    assert isinstance(a, FeatureExtractor) and a.name == "cnn" and distance_name(a) == "FD_cnn"
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    fa, fb = extract_features(a, images), extract_features(b, images)
    assert fa.shape == (96, 12) and fa.dtype == torch.float64 and torch.equal(fa, fb)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_trained_extractor_takes_each_image_size(size):
    images, labels = colour_data(12, size)
    model = train_feature_extractor(images, labels, epochs=1, feature_dim=8, width=4,
                                    batch_size=5)  # 12 = 5 + 5 + 2: every batch is used
    assert isinstance(model, CNNFeatureExtractor) and model.num_classes == 3
    assert extract_features(model, images, batch_size=5).shape == (12, 8)


def test_train_feature_extractor_refuses_bad_input():
    images, labels = colour_data(10, 16)
    with pytest.raises(ValueError, match="labels must have shape"):
        train_feature_extractor(images, labels[:5])
    with pytest.raises(TypeError, match="labels must be a int64 or int32 tensor"):
        train_feature_extractor(images, labels.float())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        train_feature_extractor(images, labels, num_classes=2)
    with pytest.raises(ValueError, match="images must lie in"):
        train_feature_extractor(images * 2, labels)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        train_feature_extractor(images, labels, epochs=0)
    with pytest.raises(ValueError, match="at least 4 x 4"):
        train_feature_extractor(images[..., :2, :2], labels)


def test_extract_features_batches_and_restores_modes():
    images, labels = colour_data(20, 16)
    model = CNNFeatureExtractor(3, feature_dim=6, width=4)
    model.train()
    one = extract_features(model, images, batch_size=256)
    seven = extract_features(model, images, batch_size=7)
    torch.testing.assert_close(one, seven, rtol=1e-6, atol=1e-7)
    assert model.training and all(m.training for m in model.modules())
    # A plain callable with a name is an extractor too; it runs on the images' device.
    mean_colour = type("MeanColour", (), {"name": "rgb",
                                         "__call__": lambda self, x: x.mean(dim=(2, 3))})()
    feats = extract_features(mean_colour, images)
    torch.testing.assert_close(feats, images.double().mean(dim=(2, 3)))
    assert distance_name(mean_colour) == "FD_rgb" and distance_name("inception") == "FID"


def test_extract_features_refuses_bad_input():
    images, _ = colour_data(4, 16)
    model = CNNFeatureExtractor(3, feature_dim=6, width=4)
    with pytest.raises(TypeError, match="extractor must be a FeatureExtractor"):
        extract_features(lambda x: x.mean(dim=(2, 3)), images)
    with pytest.raises(ValueError, match="images must lie in"):
        extract_features(model, images - 1)
    with pytest.raises(ValueError, match="images must have 3 channels"):
        extract_features(model, images[:, :1])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        extract_features(model, images, batch_size=0)
    flat = type("Flat", (), {"name": "flat", "__call__": lambda self, x: x.mean()})()
    with pytest.raises(ValueError, match=r"extractor must return \(batch, d\) features"):
        extract_features(flat, images)
    with pytest.raises(TypeError, match="extractor must be a FeatureExtractor"):
        distance_name(3)


def test_frechet_by_group_is_the_distance_on_each_groups_rows():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    fake = torch.randn(45, 5, generator=gen, dtype=torch.float64) + 0.5
    real_groups = torch.arange(60) % 3
    fake_groups = torch.arange(45) % 3
    fake[fake_groups == 2] += 2.0  # group 2's generated samples are worse
    out = frechet_by_group(real, real_groups, fake, fake_groups)
    assert list(out) == [0, 1, 2]
    for g, value in out.items():
        assert value == pytest.approx(frechet_distance_from_features(
            real[real_groups == g], fake[fake_groups == g]), rel=1e-12)
    assert out[2] > out[0] and out[2] > out[1]
    assert list(frechet_by_group(real, real_groups, fake, fake_groups, groups=[2, 0])) == [2, 0]
    assert all(math.isfinite(v) for v in out.values())


def test_frechet_by_group_refuses_bad_input():
    real, fake = torch.randn(10, 3), torch.randn(10, 3)
    groups = torch.arange(10) % 2
    with pytest.raises(ValueError, match="group 5 needs at least 2 real and 2 generated"):
        frechet_by_group(real, groups, fake, groups, groups=[5])
    with pytest.raises(ValueError, match="fake_groups must have one entry per row"):
        frechet_by_group(real, groups, fake, groups[:9])
    with pytest.raises(TypeError, match="real_groups must be a"):
        frechet_by_group(real, groups.float(), fake, groups)
    with pytest.raises(TypeError, match="groups must be a sequence of ints"):
        frechet_by_group(real, groups, fake, groups, groups=1)
