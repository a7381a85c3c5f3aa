"""Data hyper-cleaning (Franceschi et al., ICML 2017): learn per-sample weights of a training set
with flipped labels so that a model trained on the weighted set does well on clean validation.

inner  g(theta, omega) = sum_i sigmoid(omega_i) CE(f_theta(x_i), y~_i) / n + reg / 2 ||W||^2
outer  F(theta)        = CE on a clean validation split
f_theta is softmax regression on the 64 pixels of scikit-learn's digits; g is strongly convex in
theta, so the implicit hypergradient uses conjugate gradients. Samples whose learned weight
sigmoid(omega_i) < 0.5 are declared flipped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch.nn import functional as fn
from tqdm.auto import tqdm

from trustfast.blo.implicit import implicit_grad
from trustfast.config import Config
from trustfast.data import digits
from trustfast.utils import progress_kwargs


@dataclass
class HyperCleaningConfig(Config):
    """Hyperparameters (defaults reproduce the demo; one-line meaning each)."""

    noise: float = 0.3  # fraction of training labels flipped to another class
    n_val: int = 300  # clean validation samples taken from the training split
    reg: float = 1e-3  # l2 penalty on the weights: makes the inner problem strongly convex
    outer_steps: int = 60  # updates of the sample weights omega
    outer_lr: float = 0.5  # Adam step size on omega
    inner_steps: int = 100  # warm-started gradient steps on theta per outer step
    inner_lr: float = 1.0  # their step size
    cg_iters: int = 50  # conjugate-gradient iterations per hypergradient (at most)
    cg_tol: float = 1e-2  # relative residual: a 1 % accurate hypergradient steers Adam fine
    seed: int = 0

    def check(self) -> None:
        self.within("noise", 0, 0.9, high_open=True)
        for key in ("n_val", "outer_steps", "inner_steps", "cg_iters"):
            self.at_least(key, 1)
        for key in ("reg", "outer_lr", "inner_lr", "cg_tol"):
            self.at_least(key, 0, strict=True)
        self.at_least("seed", 0)


@dataclass
class HyperCleaningResult:
    config: dict
    val_acc_noisy: float  # % clean-validation accuracy trained on the noisy set, uniform weights
    val_acc_cleaned: float  # % clean-validation accuracy trained with the learned weights
    test_acc_noisy: float  # % test accuracy trained on the noisy set, uniform weights
    test_acc_cleaned: float  # % test accuracy trained with the learned weights
    test_acc_oracle: float  # % test accuracy trained on the truly clean samples only
    f1_flipped: float  # F1 of "weight < 0.5" as a detector of flipped samples
    precision: float
    recall: float
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _flip_labels(y: torch.Tensor, fraction: float, gen: torch.Generator):
    flipped = torch.rand(len(y), generator=gen) < fraction
    offset = torch.randint(1, 10, (len(y),), generator=gen)
    return torch.where(flipped, (y + offset) % 10, y), flipped


def _logits(theta: dict, x: torch.Tensor) -> torch.Tensor:
    return x @ theta["W"].T + theta["b"]


def _train(x, y, sample_w, reg, theta, steps, lr):
    """Gradient descent on the weighted, regularized cross-entropy (warm start from theta)."""
    theta = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    for _ in range(steps):
        loss = (sample_w * fn.cross_entropy(_logits(theta, x), y, reduction="none")).mean()
        loss = loss + reg / 2 * (theta["W"] ** 2).sum()
        grads = torch.autograd.grad(loss, list(theta.values()))
        with torch.no_grad():
            for t, g in zip(theta.values(), grads):
                t -= lr * g
    return {k: v.detach() for k, v in theta.items()}


def _accuracy(theta, x, y) -> float:
    return 100.0 * (_logits(theta, x).argmax(1) == y).float().mean().item()


def hyper_clean(config: HyperCleaningConfig | None = None,
                progress: bool = True) -> HyperCleaningResult:
    """Run hyper-cleaning on digits with `config.noise` flipped labels; see module docstring."""
    cfg = config or HyperCleaningConfig()
    if not 0.0 <= cfg.noise < 0.9:
        raise ValueError(f"noise must be in [0, 0.9), got {cfg.noise}")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    train, test = digits(seed=cfg.seed)
    x_all, y_all = train.tensors
    x_test, y_test = test.tensors
    x_all, x_test = x_all.flatten(1), x_test.flatten(1)
    x_val, y_val = x_all[: cfg.n_val], y_all[: cfg.n_val]
    x_tr, y_clean = x_all[cfg.n_val:], y_all[cfg.n_val:]
    y_tr, flipped = _flip_labels(y_clean, cfg.noise, gen)
    n = len(y_tr)
    theta0 = {"W": torch.zeros(10, x_tr.shape[1]), "b": torch.zeros(10)}

    def inner_loss(theta, outer):
        w = torch.sigmoid(outer["omega"])
        ce = fn.cross_entropy(_logits(theta, x_tr), y_tr, reduction="none")
        return (w * ce).sum() / n + cfg.reg / 2 * (theta["W"] ** 2).sum()

    def outer_loss(theta, outer):
        return fn.cross_entropy(_logits(theta, x_val), y_val)

    omega = torch.zeros(n, requires_grad=True)
    opt = torch.optim.Adam([omega], lr=cfg.outer_lr)
    theta = _train(x_tr, y_tr, torch.ones(n), cfg.reg, theta0, 4 * cfg.inner_steps, cfg.inner_lr)
    noisy_acc = _accuracy(theta, x_test, y_test)
    noisy_val_acc = _accuracy(theta, x_val, y_val)
    val_losses = []
    for _ in tqdm(range(cfg.outer_steps), desc="hyper-cleaning", **progress_kwargs(progress),
                  leave=False):
        theta = _train(x_tr, y_tr, torch.sigmoid(omega.detach()), cfg.reg, theta,
                       cfg.inner_steps, cfg.inner_lr)
        val_losses.append(float(outer_loss(theta, None)))
        hyper = implicit_grad(outer_loss, inner_loss, theta, {"omega": omega.detach()},
                              tol=cfg.cg_tol, max_iter=cfg.cg_iters, on_fail="warn")
        opt.zero_grad()
        omega.grad = hyper["omega"]
        opt.step()

    weights = torch.sigmoid(omega.detach())
    cleaned = _train(x_tr, y_tr, weights, cfg.reg, theta, 4 * cfg.inner_steps, cfg.inner_lr)
    oracle = _train(x_tr[~flipped], y_tr[~flipped], torch.ones(int((~flipped).sum())), cfg.reg,
                    theta0, 4 * cfg.inner_steps, cfg.inner_lr)
    predicted = weights < 0.5
    tp = int((predicted & flipped).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(flipped.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return HyperCleaningResult(
        config=asdict(cfg), val_acc_noisy=noisy_val_acc,
        val_acc_cleaned=_accuracy(cleaned, x_val, y_val), test_acc_noisy=noisy_acc,
        test_acc_cleaned=_accuracy(cleaned, x_test, y_test),
        test_acc_oracle=_accuracy(oracle, x_test, y_test), f1_flipped=f1, precision=precision,
        recall=recall, val_loss=val_losses, seconds=time.perf_counter() - start,
    )
