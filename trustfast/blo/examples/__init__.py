"""Worked bi-level applications on built-in data (also sections of `trustfast demo`)."""

from trustfast.blo.examples.hyper_cleaning import (
    HyperCleaningConfig,
    HyperCleaningResult,
    hyper_clean,
)
from trustfast.blo.examples.ridge import (
    RidgeProblem,
    closed_form_hypergradient,
    learn_ridge_penalty,
    make_ridge_problem,
)

__all__ = [
    "HyperCleaningConfig",
    "HyperCleaningResult",
    "RidgeProblem",
    "closed_form_hypergradient",
    "hyper_clean",
    "learn_ridge_penalty",
    "make_ridge_problem",
]
