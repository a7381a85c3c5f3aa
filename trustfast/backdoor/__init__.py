"""Backdoor poisoning attacks and poisoned-data identification (SPC, bi-level MSPC, STRIP)."""

from trustfast.backdoor.identify import MSPCConfig, MSPCResult, identify_mspc
from trustfast.backdoor.metrics import auroc, split_rates
from trustfast.backdoor.poison import (
    ATTACKS,
    AdaptiveBlend,
    BadNets,
    Blend,
    LabelConsistent,
    PoisonedDataset,
    Trigger,
    Trojan,
    WaNet,
    poison,
    triggered_test_set,
)
from trustfast.backdoor.scores import (
    CollapsedModelWarning,
    masked_scaled_prediction_consistency,
    scaled_prediction_consistency,
    scaled_prediction_consistency_loop,
    strip_scores,
)
from trustfast.backdoor.training import accuracy, backdoor_report, train_classifier

__all__ = [
    "ATTACKS", "AdaptiveBlend", "Trigger", "BadNets", "Blend", "CollapsedModelWarning",
    "LabelConsistent", "MSPCConfig",
    "MSPCResult", "PoisonedDataset", "Trojan", "WaNet", "accuracy", "auroc", "backdoor_report",
    "identify_mspc", "masked_scaled_prediction_consistency", "poison",
    "scaled_prediction_consistency", "scaled_prediction_consistency_loop", "split_rates",
    "strip_scores", "train_classifier", "triggered_test_set",
]
