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
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    truncate = steps if truncate is None else truncate
    if not isinstance(truncate, int) or not 1 <= truncate <= steps:
        raise ValueError(f"truncate must be an int in [1, steps={steps}], got {truncate!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
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
