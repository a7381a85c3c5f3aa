"""IResNet face embedders and the ArcFace / CosFace margin heads, built from code (no downloads).

IResNet (Deng et al., ArcFace, CVPR 2019; Duta et al., "Improved residual networks", 2020) as in
insightface's `arcface_torch/backbones/iresnet.py`: a 3x3 stem (conv-BN-PReLU), four stages of
pre-activation blocks BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus a shortcut (1x1 conv + BN when
the shape changes), each stage starting with stride 2, then BN-dropout-flatten-FC-BN ("features").
Module names match insightface's, so its state dicts load with `load_state_dict` for the same
depth, width and input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as fn

IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 2),
                  200: (6, 26, 60, 6)}

# The test-sized model: 4 stages of one block, 16..128 channels, 64-d embeddings at 32x32.
TINY = {"depth": (1, 1, 1, 1), "width": 16, "embedding_dim": 64, "input_size": 32}


class IBasicBlock(nn.Module):
    """out = bn3(conv2(prelu(bn2(conv1(bn1(x)))))) + shortcut(x); conv2 carries the stride."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, eps=1e-5)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """Face embedder: images [N, 3, input_size, input_size] in [0, 1] -> embeddings [N, D].

    `depth` is 18, 34, 50, 100 or 200 (insightface's block counts) or a list of four block
    counts; `width` is the first stage's channels (doubling per stage: 64 -> 64/128/256/512);
    `input_size` must be a multiple of 16 (four stride-2 stages: 112 -> 7x7 before the FC).
    Inputs are mapped to [-1, 1] (insightface's (x - 127.5) / 127.5 on 0..255 pixels) inside
    `forward`, so attacks and losses work in the [0, 1] image space. The embedding is not
    normalized; the margin heads and `trustfast.faces.verify` normalize it.
    """

    def __init__(self, depth: int | Sequence[int] = 50, embedding_dim: int = 512,
                 input_size: int = 112, width: int = 64, dropout: float = 0.0,
                 in_channels: int = 3):
        super().__init__()
        if isinstance(depth, int) and not isinstance(depth, bool):
            if depth not in IRESNET_LAYERS:
                raise ValueError(f"depth must be one of {sorted(IRESNET_LAYERS)} or a list of 4 "
                                 f"block counts, got {depth!r}")
            layers = IRESNET_LAYERS[depth]
        else:
            layers = tuple(depth) if isinstance(depth, Sequence) else ()
            if len(layers) != 4 or not all(isinstance(b, int) and b >= 1 for b in layers):
                raise ValueError(f"depth must be one of {sorted(IRESNET_LAYERS)} or a list of 4 "
                                 f"block counts >= 1, got {depth!r}")
        for name, value in (("embedding_dim", embedding_dim), ("width", width),
                            ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 16
                or input_size % 16):
            raise ValueError(f"input_size must be a multiple of 16 (four stride-2 stages), "
                             f"got {input_size!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.layers, self.embedding_dim, self.input_size = layers, embedding_dim, input_size
        widths = [width, width * 2, width * 4, width * 8]
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        in_planes, stages = width, []
        for blocks, planes in zip(layers, widths):
            stage = [IBasicBlock(in_planes, planes, stride=2)]
            stage += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(in_planes, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_planes * (input_size // 16) ** 2, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        # insightface: the embedding BN has a fixed unit scale (only its shift trains)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"x must be [N, C, {self.input_size}, {self.input_size}], "
                             f"got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x * 2.0 - 1.0)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.fc(self.dropout(torch.flatten(self.bn2(x), 1)))
        return self.features(x)


def iresnet(depth: int | Sequence[int] | str = 50, **kwargs) -> IResNet:
    """IResNet by depth (18/34/50/100/200, or a list of 4 block counts), or "tiny" (`TINY`,
    for tests: [1, 1, 1, 1] blocks, width 16, 64-d embeddings, 32x32 inputs); `kwargs` override."""
    if isinstance(depth, str):
        if depth != "tiny":
            raise ValueError(f"depth must be an int, a list of 4 ints or 'tiny', got {depth!r}")
        return IResNet(**(TINY | kwargs))
    return IResNet(depth, **kwargs)


class _MarginHead(nn.Module):
    """Normalized class centres W [num_classes, embedding_dim]; cos = <x/|x|, w_j/|w_j|>."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m: float):
        super().__init__()
        for name, value in (("embedding_dim", embedding_dim), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not s > 0:
            raise ValueError(f"s must be > 0, got {s!r}")
        if not (math.isfinite(s) and math.isfinite(m) and m >= 0):
            raise ValueError(f"m must be a finite margin >= 0 (and s finite), got m={m!r}, s={s!r}")
        self.s, self.m, self.num_classes = float(s), float(m), num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, 0, 0.01)  # insightface's partial_fc init

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.weight.shape[1]:
            raise ValueError(f"embeddings must be [N, {self.weight.shape[1]}], "
                             f"got {tuple(embeddings.shape)}")
        w = self.weight.to(embeddings.dtype)
        cos = fn.linear(fn.normalize(embeddings, dim=1), fn.normalize(w, dim=1))
        return cos.clamp(-1.0, 1.0)

    def _check_labels(self, labels: torch.Tensor, n: int) -> None:
        if (labels.dim() != 1 or len(labels) != n or labels.dtype.is_floating_point
                or labels.dtype == torch.bool):
            raise ValueError(f"labels must be an integer tensor [{n}], got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None):
        """Logits [N, num_classes]: s * cos for every class, with the margin applied to each
        row's target class when `labels` is given (training); plain s * cos without."""
        cos = self.cosine(embeddings)
        if labels is None:
            return cos * self.s
        self._check_labels(labels, len(cos))
        target = cos.gather(1, labels.view(-1, 1))
        return cos.scatter(1, labels.view(-1, 1), self.margin(target)) * self.s

    def margin(self, cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ArcFace(_MarginHead):
    """Additive angular margin (Deng et al., CVPR 2019): target logit s * cos(theta + m).

    As insightface: where theta + m would pass pi (cos theta <= cos(pi - m)) the target logit is
    cos(theta) - m * sin(m) instead, which keeps it monotone in theta; with `easy_margin`, the
    margin applies only where cos theta > 0 (else cos theta is kept).
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False):
        super().__init__(embedding_dim, num_classes, s, m)
        self.easy_margin = bool(easy_margin)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def margin(self, cos: torch.Tensor) -> torch.Tensor:
        # sin theta >= 0 for theta in [0, pi]; clamp keeps d(sin)/d(cos) finite at |cos| = 1
        sin = (1.0 - cos * cos).clamp_min(1e-12).sqrt()
        cos_theta_m = cos * self.cos_m - sin * self.sin_m
        if self.easy_margin:
            return torch.where(cos > 0, cos_theta_m, cos)
        return torch.where(cos > self.th, cos_theta_m, cos - self.mm)


class CosFace(_MarginHead):
    """Large margin cosine loss (Wang et al., CVPR 2018): target logit s * (cos theta - m)."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(embedding_dim, num_classes, s, m)

    def margin(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m


HEADS = {"arcface": ArcFace, "cosface": CosFace}
