"""Adversarial attacks with batched restarts and budgets on a fused step kernel, and the
adversarial watermarking attack on face verification."""

from trustfast.attacks.pgd import PGD
from trustfast.attacks.robustness import RobustAccuracy, robust_accuracy
from trustfast.attacks.watermark_attack import (
    AdversarialWatermarkAttack,
    evaluate_watermark_attack,
)

__all__ = ["PGD", "AdversarialWatermarkAttack", "RobustAccuracy", "evaluate_watermark_attack",
           "robust_accuracy"]
