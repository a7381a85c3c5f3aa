"""Small models built from configs (no downloads), for demos and tests."""

from trustfast.models.resnet import ResNet, resnet18
from trustfast.models.small_cnn import SmallCNN

__all__ = ["ResNet", "SmallCNN", "resnet18"]
