"""Machine unlearning for vision models with model sparsity (Jia et al., NeurIPS 2023).

So far: forget / retain / test splits, pruning (OMP, IMP, SynFlow) into masks kept by
`trustfast.optim.MaskedSGD`, and the paper's metrics (UA, RA, TA, MIA-Efficacy, Disparity Ave).
"""

from trustfast.unlearn.metrics import (
    accuracy,
    disparity_average,
    evaluate,
    mia_efficacy,
    true_label_probs,
)
from trustfast.unlearn.pruning import (
    apply_masks,
    imp,
    load_masks,
    magnitude_masks,
    omp,
    save_masks,
    synflow,
)
from trustfast.unlearn.splits import Splits, classwise, from_indices, labels_of, random_fraction

__all__ = [
    "Splits",
    "accuracy",
    "apply_masks",
    "classwise",
    "disparity_average",
    "evaluate",
    "from_indices",
    "imp",
    "labels_of",
    "load_masks",
    "magnitude_masks",
    "mia_efficacy",
    "omp",
    "random_fraction",
    "save_masks",
    "synflow",
    "true_label_probs",
]
