"""First-order hypergradients (no Hessian-vector products): the F2SA penalty estimator.

With the value-function penalty L_s(theta, lambda) = F(theta, lambda) + s (g(theta, lambda) -
min_z g(z, lambda)), Kwon et al. (ICML 2023, "A Fully First-Order Method for Stochastic Bilevel
Optimization") estimate the hypergradient from two inner problems solved by gradient descent:
    z ~ argmin_z g(z, lambda),   y ~ argmin_y F(y, lambda) / s + g(y, lambda),
    dF/dlambda ~ d_lambda F(y, lambda) + s (d_lambda g(y, lambda) - d_lambda g(z, lambda)),
with an O(1/s) bias that vanishes as the penalty s grows. Only first derivatives are used, so it
works for any differentiable op and costs about two gradient descents per outer step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad

from trustfast.blo import _tree
from trustfast.blo._tree import Tree
from trustfast.blo.hvp import _scalar
from trustfast.blo.implicit import _check_losses
from trustfast.checks import check_number


@dataclass
class PenaltyGrad:
    """The estimated hypergradient and both inner iterates (warm starts for the next call)."""

    grads: Tree
    y: Tree  # minimizer of F / s + g: the penalized inner solution
    z: Tree  # minimizer of g: the inner solution


def penalty_grad(
    outer_loss: Callable[[Tree, Tree], torch.Tensor],
    inner_loss: Callable[[Tree, Tree], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    *,
    penalty: float = 100.0,
    steps: int = 100,
    lr: float = 0.1,
    y0: Tree | None = None,
) -> PenaltyGrad:
    """F2SA hypergradient estimate of F(theta*(lambda), lambda) (module docstring).

    Args:
        outer_loss, inner_loss: F(inner, outer) and g(inner, outer), scalars.
        inner_params: start of the z iteration (and of y unless `y0` is given).
        outer_params: lambda; `grads` is keyed the same way.
        penalty: s; the bias is O(1/s).
        steps, lr: gradient-descent steps and step size for both inner problems (y descends
            F / s + g, whose curvature is that of g plus O(1/s), so one lr serves both).
    """
    penalty = check_number("penalty", penalty, low=0.0, low_open=True)
    steps = _tree.check_count("steps", steps)
    lr = check_number("lr", lr, low=0.0, low_open=True)
    _check_losses(outer_loss=outer_loss, inner_loss=inner_loss)
    _tree.check_tree("inner_params", inner_params)
    _tree.check_tree("outer_params", outer_params)
    if y0 is not None:
        _tree.check_like("y0", y0, inner_params, "inner_params")
    lam = _tree.detach(outer_params)
    z = _tree.detach(inner_params)
    y = _tree.detach(inner_params if y0 is None else y0)

    def g(t, lm):
        return _scalar(inner_loss(t, lm), "inner_loss")

    def f(t, lm):
        return _scalar(outer_loss(t, lm), "outer_loss")

    grad_z = grad(g)
    grad_y = grad(lambda t, lm: f(t, lm) / penalty + g(t, lm))
    for _ in range(steps):
        z = _tree.add(z, grad_z(z, lam), -lr)
        y = _tree.add(y, grad_y(y, lam), -lr)
    d_lam_f = grad(f, argnums=1)(y, lam)
    d_lam_g_y = grad(g, argnums=1)(y, lam)
    d_lam_g_z = grad(g, argnums=1)(z, lam)
    grads = _tree.add(d_lam_f, _tree.add(d_lam_g_y, d_lam_g_z, -1.0), penalty)
    if not _tree.all_finite(grads):
        raise FloatingPointError("penalty_grad: non-finite hypergradient; lower lr or penalty")
    return PenaltyGrad(_tree.detach(grads), _tree.detach(y), _tree.detach(z))
