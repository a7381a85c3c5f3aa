"""Optimizers that keep a sparsity mask: pruned weights and their state stay exactly zero."""

from trustfast.optim.masked import MaskedAdamW, MaskedSGD

__all__ = ["MaskedAdamW", "MaskedSGD"]
