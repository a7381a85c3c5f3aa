"""Experiments: one registry from which the CLI, the demo and the results files come.

    from trustfast.experiments import get_experiment, run_experiment
    from trustfast.experiments.unlearn import UnlearnExperimentConfig

    result = run_experiment("unlearn", UnlearnExperimentConfig(methods=["ft"]), "runs/u")
    result.rows            # one dict per method x sparsity; results.json / .md / .png in runs/u

Each module below registers one experiment (or a few small ones) at import; importing them is
cheap (domain code and heavy libraries are imported when an experiment runs).
"""

from trustfast.experiments import (  # noqa: F401  (each module registers its experiments)
    backdoor,
    bilevel,
    diffusion_attention,
    diffusion_backdoor,
    fairskin,
    llm,
    robustness,
    sparse_training,
    unlearn,
    watermark,
)
from trustfast.experiments.registry import (
    REGISTRY,
    Experiment,
    ExperimentConfig,
    Flag,
    Result,
    get_experiment,
    register,
)
from trustfast.experiments.results import markdown_table, write_results
from trustfast.experiments.runner import RowStore, provenance, resolve_device, run_experiment

__all__ = [
    "REGISTRY",
    "Experiment",
    "ExperimentConfig",
    "Flag",
    "Result",
    "RowStore",
    "get_experiment",
    "markdown_table",
    "provenance",
    "register",
    "resolve_device",
    "run_experiment",
    "write_results",
]
