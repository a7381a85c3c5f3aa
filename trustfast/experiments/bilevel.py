"""`trustfast bilevel`: implicit hypergradients on two bi-level problems.

A ridge penalty learned by implicit differentiation (its hypergradient checked against the
closed form), and data hyper-cleaning of digits with flipped labels (Franceschi et al., 2017).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trustfast.blo.examples import HyperCleaningConfig
from trustfast.experiments.plots import lines
from trustfast.experiments.registry import Experiment, ExperimentConfig, Flag, Result, register

# learn_ridge_penalty's unrolled and penalty hypergradients are left out: their inner gradient
# descent (lr 0.1) diverges on this problem at log(alpha) = 2 (NaN / -7.8e7, measured)
RIDGE_METHODS = ("implicit", "closed_form")
_RIDGE_NAMES = {"implicit": "implicit, CG", "closed_form": "closed form"}


@dataclass
class BilevelConfig(ExperimentConfig):
    ridge_log_alpha: float = 0.5  # where the ridge hypergradient is checked
    # hypergradient of the ridge run: implicit (CG) | closed_form
    ridge_method: str = "implicit"
    cleaning: HyperCleaningConfig = field(default_factory=HyperCleaningConfig)  # seed: the run's
    device: str = "cpu"  # the bi-level examples run in float64 on the CPU

    def check(self) -> None:
        super().check()
        self.choice("ridge_method", RIDGE_METHODS)
        self.within("ridge_log_alpha", -20, 20)
        self.require(self.cleaning.seed in (0, self.seed), "cleaning.seed",
                     f"0 or the run's seed ({self.seed}), which seeds it: set --seed")
        self.require(self.device == "cpu", "device",
                     "'cpu' (the bi-level examples run in float64 on the CPU)")


def run(cfg: BilevelConfig, out: str, resume: bool = False) -> Result:
    from dataclasses import replace

    from trustfast.blo import implicit_grad
    from trustfast.blo.examples import (
        closed_form_hypergradient,
        hyper_clean,
        learn_ridge_penalty,
        make_ridge_problem,
    )

    problem = make_ridge_problem(seed=cfg.seed)
    a = {"log_alpha": torch.tensor(cfg.ridge_log_alpha, dtype=torch.float64)}
    ours = implicit_grad(problem.outer_loss, problem.inner_loss, problem.solve(a["log_alpha"]),
                         a)["log_alpha"]
    exact = closed_form_hypergradient(problem, a["log_alpha"])
    history = learn_ridge_penalty(problem, method=cfg.ridge_method)
    rows = [{"stage": f"ridge penalty ({_RIDGE_NAMES[cfg.ridge_method]})",
             "hypergrad_rel_error": float(abs(ours - exact) / abs(exact)),
             "log_alpha_start": history["log_alpha"][0],
             "log_alpha_learned": history["log_alpha"][-1],
             "val_loss_start": history["val_loss"][0], "val_loss_end": history["val_loss"][-1]}]
    cleaning = hyper_clean(replace(cfg.cleaning, seed=cfg.seed))
    rows.append({"stage": f"hyper-cleaning digits, {cfg.cleaning.noise:.0%} flipped",
                 "test_acc_noisy_%": cleaning.test_acc_noisy,
                 "test_acc_cleaned_%": cleaning.test_acc_cleaned,
                 "test_acc_oracle_%": cleaning.test_acc_oracle,
                 "f1_flipped": cleaning.f1_flipped, "seconds": cleaning.seconds})
    return Result({}, rows, {"resolved": {"cleaning": {"seed": cfg.seed}},
                             "history": {"ridge_val_loss": history["val_loss"],
                                         "cleaning_val_loss": cleaning.val_loss}})


def plot(result: Result) -> dict:
    history = result.provenance.get("history", {})
    ridge = history.get("ridge_val_loss", [])
    cleaning = history.get("cleaning_val_loss", [])
    return {"bilevel_ridge.png": lines({"ridge": (range(len(ridge)), ridge)}, "outer step",
                                       "validation MSE", "ridge: learning log(alpha)",
                                       marker="."),
            "bilevel_cleaning.png": lines({"hyper-cleaning": (range(len(cleaning)), cleaning)},
                                          "outer step", "clean validation CE",
                                          "hyper-cleaning", marker=".")}


register(Experiment(
    name="bilevel", config_cls=BilevelConfig, run=run, plot=plot,
    help="bi-level optimization: a ridge penalty by implicit hypergradients (vs the closed "
         "form), and hyper-cleaning of digits with flipped labels",
    flags=(Flag("--noise", "cleaning.noise", "share of training labels flipped"),),
))
