"""Small helpers shared by the domains: module modes and headless plotting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run with every module in eval mode; restore each module's own mode afterwards."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def pyplot():
    """matplotlib.pyplot on the Agg backend (PNG files, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
