"""The users' own artefacts for the vision experiments: data specs, model specs, devices.

`--data` is `digits` (built in), `colored_digits`, `imagefolder:DIR`, `cifar10:DIR` or
`npz:FILE`; `--model` a `trustfast.models` name (`small_cnn`, `resnet18`, ...) or an import
string `package.module:factory`; `--weights FILE.safetensors` loads trained weights into it.
From Python, datasets and models are passed as objects instead (`train=`, `test=`, `model=`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from trustfast.config import ConfigError
from trustfast.experiments.registry import ExperimentConfig


@dataclass
class VisionConfig(ExperimentConfig):
    """The data and model fields of the vision experiments."""

    data: str = "digits"  # digits | colored_digits | imagefolder:DIR | cifar10:DIR | npz:FILE
    image_size: int | None = None  # resize image-folder images to this side (None: as stored)
    test_fraction: float = 0.2  # held-out share when the data has no test split of its own
    model: str = "small_cnn"  # a trustfast.models name or package.module:factory
    weights: str | None = None  # trained weights (.safetensors): the model is used as trained

    def check(self) -> None:
        super().check()
        self.within("test_fraction", 0, 1, low_open=True, high_open=True)
        if self.image_size is not None:
            self.at_least("image_size", 1)


def vision_setup(cfg: VisionConfig, *, model=None, train=None, test=None):
    """(device, data, model on the device, whether it came trained) of a vision run: the data
    of `cfg.data` (or `train` / `test`), then, seeded by `cfg.seed`, the model."""
    from trustfast.utils import resolve_device

    device = resolve_device(cfg.device)
    data = vision_data(cfg.data, seed=cfg.seed, test_fraction=cfg.test_fraction,
                       image_size=cfg.image_size, train=train, test=test)
    torch.manual_seed(cfg.seed)
    net, trained = vision_model(cfg.model, data.info, weights=cfg.weights, model=model)
    return device, data, net.to(device), trained


@dataclass
class VisionData:
    train: Dataset
    test: Dataset
    info: dict  # {"n", "num_classes", "image_shape", "spec"}


def vision_data(spec: str, *, seed: int, test_fraction: float = 0.2, image_size: int | None = None,
                train: Dataset | None = None, test: Dataset | None = None) -> VisionData:
    """(train, test) from the given objects, else from the spec (`data`). Image items are
    checked to be (float image in [0, 1], int label) as they are read (`as_image_dataset`);
    datasets of (1-D float feature vector, label) pass as they are."""
    from trustfast.data import as_image_dataset, dataset_info, load_image_data

    if (train is None) != (test is None):
        raise ValueError("pass both train= and test= datasets, or neither (then the config's "
                         "`data` is loaded)")
    if train is not None:
        source = "python objects"
        if _is_feature_data(train):  # (feature vector, label) items: used as they are
            from trustfast.unlearn import labels_of

            labels = labels_of(train)
            info = {"n": len(train), "num_classes": int(labels.max()) + 1,
                    "image_shape": tuple(train[0][0].shape), "test_n": len(test),
                    "spec": source}
            return VisionData(train, test, info)
        train, test = as_image_dataset(train, "train"), as_image_dataset(test, "test")
    else:
        try:
            train, test = load_image_data(spec, seed=seed, test_fraction=test_fraction,
                                          size=image_size)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError("data", f"could not be loaded: {exc}") from None
        source = spec
    info = dataset_info(train)
    info["test_n"] = len(test)
    info["spec"] = source
    return VisionData(train, test, info)


def _is_feature_data(dataset: Dataset) -> bool:
    item = dataset[0] if len(dataset) else None
    x = item[0] if isinstance(item, (tuple, list)) and len(item) == 2 else None
    return torch.is_tensor(x) and x.dim() == 1 and x.is_floating_point()


def vision_model(spec: str, info: dict, *, weights: str | None = None,
                 model: nn.Module | Callable[[], nn.Module] | None = None
                 ) -> tuple[nn.Module, bool]:
    """(model, trained): a copy of the given module (trained: True), a module from the given
    factory (trained: False), or the model named by `spec`, with `weights` loaded when given
    (trained: True)."""
    from trustfast.models import build_model

    if model is not None:
        if isinstance(model, nn.Module):
            return copy.deepcopy(model), True
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable returning one, got "
                            f"{type(model).__name__}")
        built = model()
        if not isinstance(built, nn.Module):
            raise TypeError(f"model() must return an nn.Module, got {type(built).__name__}")
        return built, False
    shape = info["image_shape"]
    try:
        built = build_model(spec, in_channels=shape[0], num_classes=info["num_classes"],
                            image_size=shape[-1], weights=weights)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ConfigError("model", f"{spec!r} could not be built"
                          + (f" with weights {weights!r}" if weights else "")
                          + f": {exc}") from None
    return built, weights is not None


def describe_model(model: nn.Module) -> dict[str, Any]:
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}",
            "parameters": sum(p.numel() for p in model.parameters())}


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def experiment_unet(spec: str, num_labels: int, *, image_size: int, channels: int, seed: int,
                    device, labels: str = "class"):
    """The conditional UNet of a diffusion experiment's `unet` key: a trustfast preset ("tiny",
    "small": `label_unet`, seeded) or the user's local UNet2DModel folder, which must have one
    class embedding per label plus the null label and take the data's images (a ConfigError
    naming `unet` or `image_size` otherwise). `labels` says what a label is, for the message."""
    from trustfast.diffusion.models import label_unet, load_unet, null_label

    if spec in ("tiny", "small"):
        return label_unet(num_labels, preset=spec, sample_size=image_size,
                          in_channels=channels, seed=seed).to(device)
    try:
        model = load_unet(spec)
    except (OSError, ValueError) as exc:
        raise ConfigError("unet", f"must be a local diffusers UNet2DModel folder: {exc}") from None
    if type(model).__name__ != "UNet2DModel" or null_label(model) != num_labels:
        raise ConfigError("unet", f"must be a UNet2DModel with num_class_embeds = "
                                  f"{num_labels + 1} (one per {labels} plus the null label), "
                                  f"got {type(model).__name__} with "
                                  f"{getattr(model.config, 'num_class_embeds', None)}")
    if model.config.sample_size != image_size:
        raise ConfigError("image_size", f"must be the UNet's sample_size "
                                        f"({model.config.sample_size}), got {image_size}")
    if model.config.in_channels != channels:
        raise ConfigError("unet", f"must take {channels}-channel images (the data's), got "
                                  f"in_channels {model.config.in_channels}")
    return model.to(device)
