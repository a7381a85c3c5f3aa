"""Hypergradients by implicit differentiation (implicit function theorem).

At an inner optimum grad_theta g(theta*, lambda) = 0, so
    dF/dlambda = d_lambda F - d_lambda [grad_theta g(theta*, lambda) . v],
    with v solving H v = d_theta F,  H = d^2 g / d theta^2
(Pedregosa 2016; Lorraine et al. 2020). H is never formed: the solver only calls H v
(`trustfast.blo.hvp_operator`), and the mixed term is one more reverse pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, vjp
from torch.utils import _pytree as pytree

from trustfast.blo import _tree
from trustfast.blo._tree import Tree
from trustfast.blo.hvp import _scalar, hvp_operator
from trustfast.blo.solvers import SOLVERS, SolveResult, solve
from trustfast.checks import check_choice

ON_FAIL = ("warn", "raise")


def _check_solver(solver: str, on_fail: str) -> None:
    check_choice("solver", solver, SOLVERS)
    check_choice("on_fail", on_fail, ON_FAIL)


def _check_losses(**fns) -> None:
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"{name} must be callable (inner, outer) -> scalar tensor, got "
                            f"{type(fn).__name__}")


def _fail(result: SolveResult, what: str) -> None:
    raise RuntimeError(f"{what}: the linear solve did not converge ({result.reason}; relative "
                       f"residual {result.residuals[-1] if result.residuals else float('nan'):.3g}"
                       f" after {result.iterations} iterations); the hypergradient would be wrong")


def implicit_grad(
    outer_loss: Callable[[Tree, Tree], torch.Tensor],
    inner_loss: Callable[[Tree, Tree], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    *,
    solver: str = "cg",
    tol: float = 1e-6,
    max_iter: int = 100,
    damping: float = 0.0,
    alpha: float = 1.0,
    hvp_mode: str = "rev_rev",
    on_fail: str = "warn",
    return_result: bool = False,
):
    """Hypergradient dF/dlambda of F(theta*(lambda), lambda) at an inner solution theta*.

    Args:
        outer_loss: F(inner_params, outer_params) -> scalar.
        inner_loss: g(inner_params, outer_params) -> scalar, minimized over inner_params.
        inner_params: the (approximate) inner minimizer theta*, a dict / tuple of tensors.
        outer_params: lambda, a dict / tuple of tensors; the result is keyed the same way.
        solver: "cg" (H must be positive definite; add `damping` otherwise), "neumann"
            (step `alpha` < 2 / lambda_max(H)) or "fixed_point".
        tol, max_iter, damping, alpha: solver options (relative residual tolerance, ...).
        hvp_mode: how H v is computed ("rev_rev" reuses the gradient graph across iterations).
        on_fail: "warn" (default: return the result with a warning) or "raise" when the solve
            does not converge.
        return_result: also return the solver's `SolveResult` (residual history).

    Returns:
        grads shaped like `outer_params` (and the SolveResult if `return_result`).
    """
    _check_solver(solver, on_fail)
    _check_losses(outer_loss=outer_loss, inner_loss=inner_loss)
    _tree.check_tree("inner_params", inner_params)
    _tree.check_tree("outer_params", outer_params)
    theta, lam = _tree.detach(inner_params), _tree.detach(outer_params)

    d_theta_f, d_lambda_f = grad(lambda t, lm: _scalar(outer_loss(t, lm), "outer_loss"),
                                 argnums=(0, 1))(theta, lam)
    matvec = hvp_operator(lambda t: _scalar(inner_loss(t, lam), "inner_loss"), theta,
                          mode=hvp_mode)
    kwargs = dict(tol=tol, max_iter=max_iter, damping=damping, warn=on_fail == "warn")
    if solver != "cg":
        kwargs["alpha"] = alpha
    result = solve(solver, matvec, d_theta_f, **kwargs)
    if not result.converged and on_fail == "raise":
        _fail(result, "implicit_grad")
    v = result.x
    grad_theta_g = grad(lambda t, lm: _scalar(inner_loss(t, lm), "inner_loss"), argnums=0)
    mixed = grad(lambda lm: _tree.dot(grad_theta_g(theta, lm), v))(lam)
    hypergrad = _tree.detach(_tree.add(d_lambda_f, mixed, -1.0))
    return (hypergrad, result) if return_result else hypergrad


def custom_root(optimality_fn: Callable[[Tree, Tree], Tree], *, solver: str = "cg",
                on_fail: str = "warn", **solver_kwargs):
    """Decorator: make an inner solver differentiable by the implicit function theorem.

    `optimality_fn(inner, outer)` returns a residual shaped like `inner` that is zero at the
    solution (for a minimization, the gradient of the inner loss). The decorated function
    `solve_fn(outer) -> inner` may compute the solution any way (no graph is kept); the
    returned tensors carry gradients to `outer`: d inner / d outer = -(dF/dinner)^-1 dF/douter.
    With "cg", dF/dinner must be symmetric positive definite (true for the gradient of a
    strongly convex inner loss). The last solve's `SolveResult` is `wrapper.last_solve`.
    (The design follows torchopt's `implicit_diff.custom_root`, Ren et al. 2022.)
    """
    _check_solver(solver, on_fail)

    def decorator(solve_fn: Callable[[Tree], Tree]):
        def wrapper(outer: Tree) -> Tree:
            _tree.check_tree("outer", outer)
            outer_leaves, outer_spec = pytree.tree_flatten(outer)
            box: dict = {}

            class _Root(torch.autograd.Function):
                @staticmethod
                def forward(ctx, *leaves):
                    lam = pytree.tree_unflatten([x.detach() for x in leaves], outer_spec)
                    with torch.no_grad():
                        inner = solve_fn(lam)
                    _tree.check_tree("solve_fn(outer)", inner)
                    inner_leaves, box["inner_spec"] = pytree.tree_flatten(inner)
                    inner_leaves = [x.detach().clone() for x in inner_leaves]
                    ctx.save_for_backward(*[x.detach() for x in leaves], *inner_leaves)
                    return tuple(inner_leaves)

                @staticmethod
                def backward(ctx, *grad_inner):
                    saved = ctx.saved_tensors
                    lam = pytree.tree_unflatten(list(saved[:len(outer_leaves)]), outer_spec)
                    theta = pytree.tree_unflatten(list(saved[len(outer_leaves):]),
                                                  box["inner_spec"])
                    g = pytree.tree_unflatten(
                        [torch.zeros_like(t) if gi is None else gi
                         for gi, t in zip(grad_inner, saved[len(outer_leaves):])],
                        box["inner_spec"])
                    with torch.enable_grad():
                        _, vjp_theta = vjp(lambda t: optimality_fn(t, lam), theta)
                        kwargs = dict(solver_kwargs, warn=on_fail == "warn")
                        result = solve(solver, lambda w: _tree.detach(vjp_theta(w)[0]), g,
                                       **kwargs)
                        wrapper.last_solve = result
                        if not result.converged and on_fail == "raise":
                            _fail(result, "custom_root")
                        _, vjp_lam = vjp(lambda lm: optimality_fn(theta, lm), lam)
                        grad_lam = vjp_lam(result.x)[0]
                    return tuple(-x.detach() for x in pytree.tree_leaves(grad_lam))

            out = _Root.apply(*outer_leaves)
            return pytree.tree_unflatten(list(out), box["inner_spec"])

        wrapper.last_solve = None
        wrapper.__wrapped__ = solve_fn
        wrapper.__doc__ = solve_fn.__doc__
        return wrapper

    return decorator
