"""`trustfast robustness`: accuracy of a classifier under PGD at several budgets.

Built-in: a SmallCNN trained on digits. Bring your own: `--data`, `--model` and `--weights`
(a trained model is attacked as it is; without weights the model is trained here first).
Every budget is attacked in one batched call per batch (`trustfast.attacks.robust_accuracy`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from trustfast.checkpoint import load_checkpoint, save_checkpoint
from trustfast.config import ConfigError
from trustfast.experiments.artefacts import VisionConfig, describe_model, vision_setup
from trustfast.experiments.plots import lines
from trustfast.experiments.registry import Experiment, Flag, Result, pixel_budgets, register
from trustfast.models.fit import SGDConfig, fit_classifier

NORMS = ("linf", "l2")


@dataclass
class RobustnessConfig(VisionConfig):
    """The test split of `data` attacked; a model with `weights` is attacked as it is."""

    train: SGDConfig = field(default_factory=SGDConfig)  # training when no weights are given
    # budgets in the [0, 1] image scale (eps 0 is clean accuracy); --eps takes pixels/255
    eps: list[float] = field(default_factory=lambda: [e / 255 for e in (0, 2, 4, 8, 16, 32)])
    steps: int = 10
    alpha_ratio: float = 0.25  # step size alpha = alpha_ratio * eps (torchattacks: 2/255 at 8)
    norm: str = "linf"
    restarts: int = 1
    batch_size: int = 256
    max_examples: int | None = None  # attack only the first N test examples (None: all)

    def check(self) -> None:
        super().check()
        self.choice("norm", NORMS)
        top = 1.0 if self.norm == "linf" else float("inf")
        self.require(bool(self.eps) and all(0 <= e <= top for e in self.eps), "eps",
                     "a non-empty list of budgets >= 0 (L-inf: <= 1; pixels/255 with --eps)")
        for key in ("steps", "restarts", "batch_size"):
            self.at_least(key, 1)
        self.at_least("alpha_ratio", 0, strict=True)
        if self.max_examples is not None:
            self.at_least("max_examples", 1)


def run(cfg: RobustnessConfig, out: str, resume: bool = False, *, model=None, train=None,
        test=None) -> Result:
    from trustfast.attacks import robust_accuracy

    _, data, net, trained = vision_setup(cfg, model=model, train=train, test=test)
    if not trained:
        cached = load_checkpoint(out, "model") if resume else None
        if cached is not None:
            net.load_state_dict(cached[0])
        else:
            fit_classifier(net, data.train, cfg.train, seed=cfg.seed,
                           desc="train for robustness")
            save_checkpoint(out, "model", net.state_dict(), {"epochs": cfg.train.epochs})
    evaluated = data.test
    if cfg.max_examples is not None:
        if cfg.max_examples > len(evaluated):
            raise ConfigError("max_examples", f"must be <= the {len(evaluated)} test examples, "
                                              f"got {cfg.max_examples}")
        evaluated = torch.utils.data.Subset(evaluated, range(cfg.max_examples))
    start = time.perf_counter()
    result = robust_accuracy(net, DataLoader(evaluated, batch_size=cfg.batch_size), cfg.eps,
                             steps=cfg.steps, alpha_ratio=cfg.alpha_ratio, norm=cfg.norm,
                             restarts=cfg.restarts, seed=cfg.seed)
    seconds = time.perf_counter() - start
    norm = {"linf": "L-inf", "l2": "L2"}[cfg.norm]
    rows = [{"stage": f"PGD-{cfg.steps} {norm} eps={e * 255:.0f}/255", "eps": e,
             "robust_acc_%": acc, "n": result.n, "seconds": seconds}
            for e, acc in zip(result.eps, result.accuracy)]
    return Result({}, rows, {"resolved": {"attack": result.attack}, "data": data.info,
                             "model": {**describe_model(net), "trained_here": not trained}})


def plot(result: Result) -> dict:
    xs = [r["eps"] * 255 for r in result.rows]
    ys = [r["robust_acc_%"] for r in result.rows]
    return {"robustness.png": lines({"PGD": (xs, ys)}, "eps (x 1/255)", "robust accuracy (%)",
                                    "accuracy under PGD")}


register(Experiment(
    name="robustness", config_cls=RobustnessConfig, run=run, plot=plot,
    help="robust accuracy of a classifier under batched PGD at several budgets",
    columns=("stage", "robust_acc_%", "n", "seconds"),
    flags=(Flag("--data", "data", "digits | imagefolder:DIR | cifar10:DIR | npz:FILE"),
           Flag("--model", "model", "small_cnn | resnet18 | ... | package.module:factory"),
           Flag("--weights", "weights", "trained model weights (.safetensors)"),
           Flag("--eps", "eps", "comma-separated budgets in pixels/255, e.g. 2,4,8",
                parse=pixel_budgets),
           Flag("--steps", "steps", "PGD steps"),
           Flag("--norm", "norm", "linf or l2")),
))
