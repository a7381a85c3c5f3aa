"""Issue 17 (reliability): the attack entry points refuse budgets in pixel units, images outside
[0, 1] or NaN, a Dataset where a DataLoader is expected, and bad counts, naming the argument."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustfast.attacks import (
    PGD,
    AdversarialWatermarkAttack,
    evaluate_watermark_attack,
    robust_accuracy,
)
from trustfast.faces import FaceVerifier, iresnet

BITS = 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))


def _batch(n: int = 4):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=gen), torch.arange(n) % 4


def _loader():
    return DataLoader(TensorDataset(*_batch()), batch_size=2)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(eps=[8]), ValueError, r"eps\[0\] must be a number >= 0 and <= 1.*8/255, not 8"),
    (dict(eps=[0.0, 8 / 255, 16]), ValueError, r"eps\[2\] must be .*image scale"),
    (dict(eps=8 / 255), TypeError, "eps must be a list of budgets"),
    (dict(eps=["8/255"]), TypeError, r"eps\[0\] must be a number"),
    (dict(eps=[math.nan]), ValueError, r"eps\[0\] must be a finite number"),
    (dict(eps=[0.5], alpha_ratio=4.0), ValueError, r"alpha_ratio \* eps must be <= 1"),
    (dict(eps=[0.1], steps=0), ValueError, "steps must be an integer >= 1"),
    (dict(eps=[0.1], steps=2.5), TypeError, "steps must be an integer"),
    (dict(eps=[0.1], norm="linf2"), ValueError, "norm must be one of 'linf', 'l2'"),
    (dict(eps=[0.1], restarts=0), ValueError, "restarts must be an integer >= 1"),
    (dict(eps=[0.1], device="gpu0"), ValueError, "device must name a torch device"),
    (dict(eps=[0.1], progress="no"), TypeError, "progress must be a bool"),
])
def test_robust_accuracy_refuses_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        robust_accuracy(_model(), _loader(), **{"progress": False, **kwargs})


def test_robust_accuracy_wants_a_dataloader_not_a_dataset():
    # the reproducer: AttributeError: 'int' object has no attribute 'to'
    data = [(torch.rand(3, 8, 8), i % 4) for i in range(4)]

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    with pytest.raises(TypeError, match=r"loader must be a DataLoader.*DataLoader\(loader, "):
        robust_accuracy(_model(), Items(), eps=[0.1], progress=False)
    with pytest.raises(TypeError, match="loader must be a DataLoader"):
        robust_accuracy(_model(), TensorDataset(*_batch()), eps=[0.1], progress=False)
    with pytest.raises(TypeError, match=r"loader must yield \(images, labels\) pairs of tensors"):
        robust_accuracy(_model(), iter([(torch.rand(2, 3, 8, 8), [0, 1])]), eps=[0.1],
                        progress=False)


def test_robust_accuracy_refuses_images_outside_the_unit_range_or_nan():
    x, y = _batch()
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\], got values in"):
        robust_accuracy(_model(), [(x * 255, y)], eps=[0.1], progress=False)
    x = x.clone()
    x[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\], got NaN values"):
        robust_accuracy(_model(), [(x, y)], eps=[0.1], progress=False)


def test_pgd_l2_budgets_may_exceed_1_but_not_the_image_diameter():
    x, y = _batch()
    adv = PGD(_model(), eps=2.0, alpha=0.5, steps=2, norm="l2", seed=0)(x, y)
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= 2.0 + 1e-5
    with pytest.raises(ValueError, match=r"eps must be <= 13.86 \(the L2 diameter"):
        PGD(_model(), eps=20.0, alpha=0.5, steps=1, norm="l2")(x, y)
    with pytest.raises(TypeError, match="random_start must be a bool"):
        PGD(_model(), random_start=1)
    with pytest.raises(TypeError, match="normalization must be a \\(mean, std\\) pair"):
        PGD(_model(), normalization=0.5)


class _Encoder(nn.Module):
    def forward(self, images, bits):
        return images + 0.01 * (bits.mean(1) * 2 - 1).view(-1, 1, 1, 1)


def _verifier():
    torch.manual_seed(0)
    return FaceVerifier(iresnet([1, 1, 1, 1], embedding_dim=8, width=4, input_size=16), 1.0)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(eps=4), ValueError, "eps must be a number >= 0 and <= 1, got 4 .*8/255, not 8"),
    (dict(eps=[2 / 255, 8]), ValueError, r"eps\[1\] must be .*image scale"),
    (dict(alpha=2), ValueError, "alpha must be .*image scale"),
    (dict(steps=0), ValueError, "steps must be an integer >= 1"),
    (dict(kappa=-1.0), ValueError, "kappa must be a number >= 0"),
    (dict(stealth_weight=math.nan), ValueError, "stealth_weight must be a finite number"),
    (dict(message_bits=0), ValueError, "message_bits must be an integer >= 1"),
    (dict(num_messages=1.5), TypeError, "num_messages must be an integer"),
    (dict(restarts=0), ValueError, "restarts must be an integer >= 1"),
])
def test_watermark_attack_refuses_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        AdversarialWatermarkAttack(_verifier(), _Encoder(), **{"message_bits": BITS, **kwargs})


def test_watermark_attack_refuses_bad_images():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 16, 16, generator=gen), torch.rand(2, 3, 16, 16, generator=gen)
    same = torch.tensor([True, False])
    atk = AdversarialWatermarkAttack(_verifier(), _Encoder(), steps=1, message_bits=BITS)
    bad = a.clone()
    bad[1, 2, 3, 4] = math.nan
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\], got NaN values"):
        atk(bad, b, same)
    with pytest.raises(ValueError, match=r"references must lie in \[0, 1\]"):
        atk(a, b * 2 - 1, same)
    with pytest.raises(TypeError, match="same must be a bool tensor"):
        atk(a, b, same.float())
    with pytest.raises(TypeError, match="bits must be a tensor"):
        atk(a, b, same, bits=[1, 0, 1, 0])
    with pytest.raises(TypeError, match="watermark must be a trustfast.watermark"):
        evaluate_watermark_attack(_verifier(), _Encoder(), a, b, same, eps=[4 / 255], steps=1)
    with pytest.raises(ValueError, match=r"probes must lie in \[0, 1\]"):
        evaluate_watermark_attack(_verifier(), _Encoder(), a * 255, b, same, eps=[4 / 255])
