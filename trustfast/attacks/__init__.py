"""Adversarial attacks with batched restarts and budgets on a fused step kernel."""

from trustfast.attacks.pgd import PGD
from trustfast.attacks.robustness import RobustAccuracy, robust_accuracy

__all__ = ["PGD", "RobustAccuracy", "robust_accuracy"]
