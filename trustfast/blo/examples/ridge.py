"""Ridge-regression hyperparameter learning: the bi-level problem with a closed form.

inner  g(w, a) = ||X w - y||^2 / n + exp(a) ||w||^2        (a = log of the ridge penalty)
outer  F(w)    = ||X_val w - y_val||^2 / n_val
w*(a) = (X^T X / n + e^a I)^-1 X^T y / n, and dF/da = grad F(w*) . dw*/da with
dw*/da = -e^a (X^T X / n + e^a I)^-1 w*: the reference every hypergradient method is tested on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trustfast.blo.first_order import penalty_grad
from trustfast.blo.implicit import implicit_grad
from trustfast.blo.unrolled import unrolled_grad


@dataclass
class RidgeProblem:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    def inner_loss(self, w: dict, a: dict) -> torch.Tensor:
        resid = self.x_train @ w["w"] - self.y_train
        return (resid**2).mean() + torch.exp(a["log_alpha"]) * (w["w"] ** 2).sum()

    def outer_loss(self, w: dict, a: dict) -> torch.Tensor:
        return ((self.x_val @ w["w"] - self.y_val) ** 2).mean()

    def solve(self, log_alpha: torch.Tensor) -> dict:
        """The exact inner minimizer w*(a)."""
        n, d = self.x_train.shape
        gram = self.x_train.T @ self.x_train / n
        rhs = self.x_train.T @ self.y_train / n
        eye = torch.eye(d, dtype=gram.dtype)
        return {"w": torch.linalg.solve(gram + torch.exp(log_alpha) * eye, rhs)}


def make_ridge_problem(n_train: int = 60, n_val: int = 200, dim: int = 40, noise: float = 1.0,
                       seed: int = 0, dtype: torch.dtype = torch.float64) -> RidgeProblem:
    """Generated regression with more features than the training set can pin down
    (n_train = 60 for 40 features at noise 1), so the best ridge penalty is interior."""
    gen = torch.Generator().manual_seed(seed)
    w_true = torch.randn(dim, generator=gen, dtype=dtype) / dim**0.5
    x = torch.randn(n_train + n_val, dim, generator=gen, dtype=dtype)
    y = x @ w_true + noise * torch.randn(n_train + n_val, generator=gen, dtype=dtype)
    return RidgeProblem(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def closed_form_hypergradient(problem: RidgeProblem, log_alpha: torch.Tensor) -> torch.Tensor:
    """dF/da at w*(a), from the formula in the module docstring."""
    n, d = problem.x_train.shape
    alpha = torch.exp(log_alpha)
    w = problem.solve(log_alpha)["w"]
    a_mat = problem.x_train.T @ problem.x_train / n + alpha * torch.eye(d, dtype=w.dtype)
    dw = -alpha * torch.linalg.solve(a_mat, w)
    grad_f = 2 * problem.x_val.T @ (problem.x_val @ w - problem.y_val) / problem.y_val.numel()
    return grad_f @ dw


def learn_ridge_penalty(problem: RidgeProblem, log_alpha: float = 2.0, outer_steps: int = 40,
                        lr: float = 0.5, method: str = "implicit") -> dict:
    """Gradient descent on a = log(alpha) with the chosen hypergradient method.

    Returns {"log_alpha": [...], "val_loss": [...]} per outer step, for plots and tests.
    """
    methods = ("implicit", "unrolled", "penalty", "closed_form")
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got {method!r}")
    a = {"log_alpha": torch.tensor(float(log_alpha), dtype=problem.x_train.dtype)}
    history: dict = {"log_alpha": [], "val_loss": []}
    w = problem.solve(a["log_alpha"])
    for _ in range(outer_steps):
        w = problem.solve(a["log_alpha"])
        history["log_alpha"].append(float(a["log_alpha"]))
        history["val_loss"].append(float(problem.outer_loss(w, a)))
        if method == "implicit":
            g = implicit_grad(problem.outer_loss, problem.inner_loss, w, a)["log_alpha"]
        elif method == "unrolled":
            g = unrolled_grad(problem.outer_loss, problem.inner_loss, w, a, steps=50,
                              lr=0.1)[0]["log_alpha"]
        elif method == "penalty":
            g = penalty_grad(problem.outer_loss, problem.inner_loss, w, a, penalty=1e3,
                             steps=200, lr=0.1).grads["log_alpha"]
        else:
            g = closed_form_hypergradient(problem, a["log_alpha"])
        a = {"log_alpha": a["log_alpha"] - lr * g}
    return history
