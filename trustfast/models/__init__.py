"""Models built from code (no downloads), for demos and tests, and the registry behind the CLI's
`--model NAME|package.module:factory` and `--weights FILE.safetensors`."""

from trustfast.models.registry import MODELS, build_model, load_weights, save_weights
from trustfast.models.resnet import ResNet, resnet18
from trustfast.models.small_cnn import SmallCNN

__all__ = ["MODELS", "ResNet", "SmallCNN", "build_model", "load_weights", "resnet18",
           "save_weights"]
