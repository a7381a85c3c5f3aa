"""CIFAR-style ResNet-18 (He et al., CVPR 2016), built from code: no torchvision, no downloads.

The variant used across the adversarial-robustness literature for 32x32 inputs: a 3x3 stride-1
stem convolution with 64 channels and no max-pool, four stages of two BasicBlocks (64, 128, 256,
512 channels; stages 2-4 start with stride 2 and a 1x1 projection shortcut), global average
pooling and a linear head. 11,173,962 parameters for 10 classes and 3 input channels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as fn


class BasicBlock(nn.Module):
    """relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x)); shortcut = 1x1 conv + bn when the
    shape changes, else the identity."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return fn.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv3x3 + bn + relu, four BasicBlock stages, adaptive average pool, linear head.

    Module names (conv1, bn1, layer1..layer4, shortcut, linear) are those of the widely used
    CIFAR ResNet code, so its state dicts load with `load_state_dict`.
    """

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2),
                 widths: tuple[int, ...] = (64, 128, 256, 512), num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if len(blocks) != 4 or len(widths) != 4:
            # four stages named layer1..layer4, as in the common CIFAR checkpoints' state dicts
            raise ValueError(f"blocks and widths must have 4 stages, got {blocks} and {widths}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for i, (n_blocks, planes) in enumerate(zip(blocks, widths)):
            strides = [1 if i == 0 else 2] + [1] * (n_blocks - 1)
            layer = []
            for stride in strides:
                layer.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fn.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-18: BasicBlock x [2, 2, 2, 2], widths 64/128/256/512, randomly initialized."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels)
