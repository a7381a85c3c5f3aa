"""Models by name or import string (the CLI's `--model`), with weights from safetensors files
(`--weights`): `build_model`, `load_weights`, `save_weights`.

Weights are read with `safetensors.torch.load_file` only, never with a pickle loader, and load
strictly: every key of the model must be in the file with its shape, and nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import Callable

from torch import nn

from trustfast.models.resnet import resnet18
from trustfast.models.small_cnn import SmallCNN

_FACTORY_KEYWORDS = ("in_channels", "num_classes", "image_size")
_SHOWN = 5  # keys listed in a mismatch message before "... and N more"


def _square(image_size: int | tuple[int, int], model: str) -> int:
    if isinstance(image_size, int):
        return image_size
    if image_size[0] != image_size[1]:
        raise ValueError(f"model {model!r} takes square images, got image_size {image_size}")
    return image_size[0]


def _small_cnn(in_channels: int, num_classes: int, image_size) -> nn.Module:
    side = _square(image_size, "small_cnn")
    if side % 2:
        raise ValueError(f"model 'small_cnn' needs an even image size, got {side}")
    return SmallCNN(in_channels=in_channels, num_classes=num_classes, image_size=side)


def _resnet18(in_channels: int, num_classes: int, image_size) -> nn.Module:
    # global average pooling: any input size; the stride-1 stem is meant for 32x32 (CIFAR)
    return resnet18(num_classes=num_classes, in_channels=in_channels)


# name -> builder(in_channels, num_classes, image_size)
MODELS: dict[str, Callable[..., nn.Module]] = {"resnet18": _resnet18, "small_cnn": _small_cnn}


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_image_size(image_size) -> int | tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool) and image_size >= 1:
        return image_size
    if (isinstance(image_size, (tuple, list)) and len(image_size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                    for s in image_size)):
        return tuple(image_size)
    raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")


def _import_factory(spec: str) -> Callable:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"model {spec!r}: an import string is package.module:factory")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model {spec!r}: cannot import {module_name!r} ({err}); is its folder "
                         f"on sys.path / PYTHONPATH?") from err
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model {spec!r}: {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"model {spec!r}: {attr_path} must be callable (a function or class "
                        f"returning an nn.Module), got {type(obj).__name__}")
    return obj


def _call_factory(factory: Callable, kwargs: dict) -> object:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): give it everything
        return factory(**kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return factory(**kwargs)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return factory(**{k: v for k, v in kwargs.items() if k in named})


def build_model(spec: str, *, in_channels: int, num_classes: int,
                image_size: int | tuple[int, int],
                weights: str | os.PathLike | None = None) -> nn.Module:
    """A model for images [in_channels, image_size] and `num_classes` classes.

    `spec` is a name in `MODELS` ("small_cnn", "resnet18") or an import string
    "package.module:factory" to your own builder, called with those of in_channels /
    num_classes / image_size (as given) that its signature takes (all three if it takes
    **kwargs); it must return an nn.Module. `weights`: a .safetensors file loaded strictly
    (`load_weights`). Errors name the argument `model`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"model must be a model name ({', '.join(sorted(MODELS))}) or an import "
                        f"string package.module:factory, got {spec!r}")
    kwargs = {"in_channels": _positive_int(in_channels, "in_channels"),
              "num_classes": _positive_int(num_classes, "num_classes"),
              "image_size": _check_image_size(image_size)}
    spec = spec.strip()
    if ":" in spec:
        model = _call_factory(_import_factory(spec), kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model {spec!r}: the factory must return a torch.nn.Module, got "
                            f"{type(model).__name__}")
    elif spec in MODELS:
        model = MODELS[spec](**kwargs)
    else:
        raise ValueError(f"model: unknown model {spec!r}; known: {', '.join(sorted(MODELS))}, "
                         f"or an import string package.module:factory")
    if weights is not None:
        load_weights(model, weights)
    return model


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a .safetensors state dict into `model` strictly, in place (returns `model`).

    Missing keys, unexpected keys and shape mismatches are one ValueError listing them and
    naming the file; a truncated or corrupt file (or a PyTorch pickle renamed .safetensors) is a
    ValueError naming it. Tensors of another dtype are cast to the model's, with a warning.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"weights must be a path to a .safetensors file, got "
                        f"{type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"weights: no such file {path!r}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"weights {path!r} is not a readable safetensors file ({err}): it is "
                         f"truncated, corrupt or another format; save it again with "
                         f"trustfast.models.save_weights or safetensors.torch.save_file (a "
                         f"PyTorch .pt/.pth checkpoint is not loaded: convert it with "
                         f"save_file(torch.load(f, weights_only=True), out))") from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(f"{k} (file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)})"
                    for k in set(expected) & set(tensors)
                    if tensors[k].shape != expected[k].shape)
    problems = [f"{len(keys)} {what}: {_listed(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatches", shapes)) if keys]
    if problems:
        raise ValueError(f"weights {path!r} do not fit the {type(model).__name__}: "
                         + "; ".join(problems))
    cast = sorted(f"{k} ({tensors[k].dtype} -> {expected[k].dtype})" for k in tensors
                  if tensors[k].dtype != expected[k].dtype)
    if cast:
        warnings.warn(f"weights {path!r}: {len(cast)} tensors cast to the model's dtype: "
                      f"{_listed(cast)}", UserWarning, stacklevel=2)
    model.load_state_dict(tensors, strict=True)
    return model


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Write `model.state_dict()` to a .safetensors file atomically (a temp file renamed over
    `path`), readable by `load_weights` / `build_model(..., weights=path)`."""
    from safetensors.torch import save_file

    from trustfast.checkpoint import atomic_write

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    # clone: tied or views of one storage cannot be saved by safetensors as they are
    flat = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write(os.fspath(path), lambda tmp: save_file(flat, tmp, metadata={"format": "pt"}))

