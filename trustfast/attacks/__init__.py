"""Adversarial attacks with batched restarts and budgets on a fused step kernel, and the
adversarial watermarking attack on face verification."""

from trustfast.attacks.pgd import PGD
from trustfast.attacks.robustness import RobustAccuracy, robust_accuracy
from trustfast.attacks.watermark_attack import AdversarialWatermarkAttack

__all__ = ["PGD", "AdversarialWatermarkAttack", "RobustAccuracy", "robust_accuracy"]
