"""Machine unlearning for vision models with model sparsity (Jia et al., NeurIPS 2023).

`unlearn(model, splits, method, mask=None, config=None)` runs one of METHODS (Retrain, FT, GA,
RL, FF, IU, l1-sparse, SalUn) on forget / retain / test splits; pruning (OMP, IMP, SynFlow) gives
masks kept by `trustfast.optim.MaskedSGD`; the paper's metrics are UA, RA, TA, MIA-Efficacy and
Disparity Ave. The Table-1 experiment is `trustfast unlearn` (trustfast.experiments.unlearn).
"""

from trustfast.unlearn.methods import (
    CONFIGS,
    METHODS,
    FFConfig,
    GAConfig,
    IUConfig,
    L1SparseConfig,
    RetrainConfig,
    RLConfig,
    SalUnConfig,
    TrainConfig,
    UnlearnResult,
    saliency_mask,
    unlearn,
)
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
    "CONFIGS",
    "FFConfig",
    "GAConfig",
    "IUConfig",
    "L1SparseConfig",
    "METHODS",
    "RLConfig",
    "RetrainConfig",
    "SalUnConfig",
    "Splits",
    "TrainConfig",
    "UnlearnResult",
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
    "saliency_mask",
    "save_masks",
    "synflow",
    "true_label_probs",
    "unlearn",
]
