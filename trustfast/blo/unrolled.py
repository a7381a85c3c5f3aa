"""Hypergradients by unrolled (iterative) differentiation, optionally truncated.

theta_{t+1} = theta_t - lr grad_theta g(theta_t, lambda), t < T, and dF(theta_T, lambda)/dlambda
by reverse-mode through the last K steps only (Shaban et al., AISTATS 2019: truncated back-
propagation; K = T is full unrolling, as in `higher`/MAML). The first T - K steps run without a
graph, so memory grows with K, not T.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad

from trustfast.blo import _tree
from trustfast.blo._tree import Tree
from trustfast.blo.hvp import _scalar
from trustfast.blo.implicit import _check_losses
from trustfast.checks import check_number


def _gd_step(inner_loss: Callable, lr: float):
    grad_theta = grad(lambda t, lm: _scalar(inner_loss(t, lm), "inner_loss"), argnums=0)

    def step(theta, lam):
        return _tree.add(theta, grad_theta(theta, lam), -lr)

    return step


def unrolled_grad(
    outer_loss: Callable[[Tree, Tree], torch.Tensor],
    inner_loss: Callable[[Tree, Tree], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    *,
    steps: int,
    lr: float,
    truncate: int | None = None,
) -> tuple[Tree, Tree]:
    """(dF/dlambda through the last `truncate` of `steps` gradient steps, final inner params).

    Args:
        outer_loss, inner_loss: F(inner, outer) and g(inner, outer), scalars.
        inner_params: starting point theta_0 (warm-start it with the returned final params).
        outer_params: lambda; the gradient is keyed the same way.
        steps: T inner gradient-descent steps; lr: their step size.
        truncate: K, how many of the last steps to differentiate (default all).
    """
    steps = _tree.check_count("steps", steps)
    truncate = steps if truncate is None else _tree.check_count("truncate", truncate, high=steps)
    lr = check_number("lr", lr, low=0.0, low_open=True)
    _check_losses(outer_loss=outer_loss, inner_loss=inner_loss)
    _tree.check_tree("inner_params", inner_params)
    _tree.check_tree("outer_params", outer_params)
    theta, lam = _tree.detach(inner_params), _tree.detach(outer_params)
    step = _gd_step(inner_loss, lr)
    for _ in range(steps - truncate):
        theta = _tree.detach(step(theta, lam))

    def through_last_k(lm):
        t = theta
        for _ in range(truncate):
            t = step(t, lm)
        return _scalar(outer_loss(t, lm), "outer_loss"), t

    hypergrad, final = grad(through_last_k, has_aux=True)(lam)
    return _tree.detach(hypergrad), _tree.detach(final)
