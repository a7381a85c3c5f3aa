"""Shared metrics: exact Fréchet distances (FID and FD_<extractor>), feature extractors, and
group fairness of predictions. Imports only torch and numpy (scipy, fairlearn, torchmetrics
are test and benchmark peers, never imported here)."""

from trustfast.metrics.fairness import (
    accuracy_gap,
    equal_opportunity_difference,
    equalized_odds_difference,
    fairness_report,
    group_accuracies,
    worst_group_accuracy,
)
from trustfast.metrics.features import (
    CNNFeatureExtractor,
    FeatureExtractor,
    distance_name,
    extract_features,
    frechet_by_group,
    train_feature_extractor,
)
from trustfast.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    trace_sqrt_product,
)
from trustfast.metrics.inception import FIDInceptionV3, inception_extractor

__all__ = [
    "CNNFeatureExtractor", "FIDInceptionV3", "FeatureExtractor", "accuracy_gap",
    "distance_name", "equal_opportunity_difference", "equalized_odds_difference",
    "extract_features", "fairness_report", "feature_statistics", "frechet_by_group",
    "frechet_distance", "frechet_distance_from_features", "group_accuracies",
    "inception_extractor", "trace_sqrt_product", "train_feature_extractor",
    "worst_group_accuracy",
]
