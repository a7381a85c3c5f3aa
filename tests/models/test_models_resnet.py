"""CIFAR ResNet-18: size, output shape, deterministic eval mode."""

from __future__ import annotations

import pytest
import torch

from trustfast.models import resnet18

PARAMS = 11_173_962  # the CIFAR ResNet-18 of the robustness literature, 10 classes


def test_param_count():
    n = sum(p.numel() for p in resnet18().parameters())
    assert abs(n - PARAMS) <= 0.01 * PARAMS, n


def test_output_shape_and_eval_determinism():
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.shape == (3, 10)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


def test_other_channels_and_classes():
    model = resnet18(num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 16, 16)).shape == (2, 7)


def test_wrong_stage_count_is_rejected():
    from trustfast.models.resnet import ResNet

    with pytest.raises(ValueError, match="4 stages"):
        ResNet((2, 2, 2), (64, 128, 256))
