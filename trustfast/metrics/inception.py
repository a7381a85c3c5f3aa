"""pytorch-fid's FID InceptionV3 in plain torch: the network whose pool3 features define the FID.

pytorch-fid (mseitzer/pytorch-fid, `inception.py`) ports the 2015 TensorFlow Inception graph
(inception-2015-12-05) that the original TTUR FID code used: torchvision's Inception3 with
1008 classes, no auxiliary head, and patched blocks (`FIDInceptionA`, `FIDInceptionC`,
`FIDInceptionE_1`: average pools that exclude the padding, as TensorFlow's do; `FIDInceptionE_2`:
a max pool where the paper has an average pool). This module rebuilds that layout without
torchvision, with the module names of its weights file `pt_inception-2015-12-05-6726825d.pth`
(the keys of torchvision's Inception3: `Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.bias`,
..., `fc.weight`), so the file loads as it is. Forward (pytorch-fid's defaults for FID): bilinear
resize to 299 x 299 (align_corners=False), [0, 1] -> [-1, 1], the blocks up to Mixed_7c, global
average pool: (N, 2048) features. `fc` is kept only so the file's keys load strictly.

Nothing is downloaded: the user passes the weights file (torch.load(weights_only=True), or a
safetensors file holding the same keys).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
FEATURE_DIM = 2048
INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, TensorFlow's) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Inception-A (35 x 35): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """Inception-C (17 x 17) with factorized 7x7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """Inception-E (8 x 8) with expanded 1x3 / 3x1 branches. `pool="avg"` is pytorch-fid's
    FIDInceptionE_1 (padding-excluding average pool), `pool="max"` its FIDInceptionE_2."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = (_tf_avg_pool(x) if self.pool == "avg"
                  else F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception: images (N, 3, H, W) in [0, 1] -> pool3 features (N, 2048).

    `name = "inception"`: distances computed with it are reported as "FID" (only with
    pytorch-fid's weights loaded, which `inception_extractor` does).
    """

    name = "inception"
    feature_dim = FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # the 1008-way TF classifier; unused by FID

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                          align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file or a torch file (torch.load, weights_only=True)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"weights_path {str(path)!r} is not a torch weights file that loads "
                         f"with weights_only=True: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights_path {str(path)!r} must hold a state dict (names -> tensors), "
                         f"got a {type(state).__name__}")
    return dict(state)


def load_fid_state(model: FIDInceptionV3, state: dict[str, torch.Tensor],
                   source: str = "the state dict") -> None:
    """Load pytorch-fid's weights into `model`: every parameter and BatchNorm statistic must be
    present with its shape and nothing else may be; `num_batches_tracked` counters (not in
    files saved before torch 0.4.1, and unused in eval mode) are optional."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:4])}"
                             f"{', ...' if len(keys) > 4 else ''})")
        raise ValueError(f"{source} is not pytorch-fid's FID Inception state dict "
                         f"({WEIGHTS_FILE}): " + "; ".join(parts))
    full = {k: state.get(k, own[k]) for k in own}
    model.load_state_dict(full, strict=True)


def inception_extractor(weights_path: str | Path, *,
                        device: str | torch.device | None = None) -> FIDInceptionV3:
    """pytorch-fid's FID InceptionV3 (pool3, 2048-d) with the weights in `weights_path`.

    weights_path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (from its GitHub release
    `fid_weights`; nothing is downloaded here) or a safetensors copy of it. Returns the network
    in eval mode on `device` (default CPU) with gradients off; its `name` is "inception", so
    distances computed with it are the FID.
    """
    if not isinstance(weights_path, (str, Path)):
        raise TypeError(f"weights_path must be a path (str or pathlib.Path), got "
                        f"{type(weights_path).__name__}")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights_path {str(path)!r} does not exist: the FID needs pytorch-fid's Inception "
            f"weights {WEIGHTS_FILE} (download it yourself from {WEIGHTS_URL}; trustfast "
            f"downloads nothing), or use a built-in extractor "
            f"(trustfast.metrics.train_feature_extractor) and report FD_<name> instead")
    model = FIDInceptionV3()
    load_fid_state(model, read_state_dict(path), source=f"weights_path {str(path)!r}")
    model.requires_grad_(False).eval()
    return model.to(device) if device is not None else model
