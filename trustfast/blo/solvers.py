"""Linear solvers on parameter pytrees: A x = b with A given only as a product v -> A v.

Each returns a `SolveResult` with the residual history ||b - A x_k|| (relative to ||b||), so a
caller can see convergence; a solve that does not reach `tol` is reported (converged=False,
with a TrustfastWarning), never passed off as a solution. Non-finite iterates stop the solve.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trustfast.blo import _tree
from trustfast.blo._tree import Tree
from trustfast.checks import check_choice, check_number

SOLVERS = ("cg", "neumann", "fixed_point")


@dataclass
class SolveResult:
    """Solution and how it was reached (residuals are relative: ||b - A x_k|| / ||b||)."""

    x: Tree
    residuals: list[float] = field(default_factory=list)
    converged: bool = False
    iterations: int = 0
    reason: str = ""

    def to_dict(self) -> dict:
        return {"residuals": self.residuals, "converged": self.converged,
                "iterations": self.iterations, "reason": self.reason}


def _check_common(b: Tree, tol: float, max_iter: int, name: str = "b") -> tuple[float, int]:
    """b a tree of floating tensors; tol a finite number > 0; max_iter an int >= 1 (a str such
    as "10" is a TypeError, never parsed)."""
    _tree.check_tree(name, b)
    tol = check_number("tol", tol, low=0.0, low_open=True,
                       hint="the relative residual ||b - A x|| / ||b|| to reach")
    max_iter = _tree.check_count("max_iter", max_iter)
    return tol, max_iter


def _check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable (v -> A v on trees), got "
                        f"{type(fn).__name__}")


def _finish(result: SolveResult, name: str, warn: bool) -> SolveResult:
    if not result.converged and warn:
        from trustfast._meta import TrustfastWarning

        last = result.residuals[-1] if result.residuals else float("nan")
        warnings.warn(f"{name} did not converge: {result.reason} (relative residual {last:.3g} "
                      f"after {result.iterations} iterations)", TrustfastWarning, stacklevel=4)
    return result


def _damped(matvec: Callable[[Tree], Tree], damping: float) -> Callable[[Tree], Tree]:
    damping = check_number("damping", damping, low=0.0)
    if damping == 0:
        return matvec
    return lambda v: _tree.add(matvec(v), v, damping)


@torch.no_grad()
def cg(matvec: Callable[[Tree], Tree], b: Tree, x0: Tree | None = None, *, damping: float = 0.0,
       tol: float = 1e-6, max_iter: int = 100, warn: bool = True) -> SolveResult:
    """Conjugate gradients for (A + damping I) x = b, A symmetric positive definite
    (Hestenes & Stiefel 1952). Stops when ||r|| <= tol ||b||; negative curvature p^T A p <= 0
    (A not positive definite) stops it with converged=False."""
    _check_callable("matvec", matvec)
    tol, max_iter = _check_common(b, tol, max_iter)
    if x0 is not None:
        _tree.check_like("x0", x0, b, "b")
    op = _damped(matvec, damping)
    b_norm = _tree.norm(b)
    if not math.isfinite(b_norm):
        raise ValueError("b must be finite, got NaN/Inf in its leaves")
    if b_norm == 0:
        return SolveResult(_tree.zeros_like(b), [0.0], True, 0, "b = 0")
    x = _tree.zeros_like(b) if x0 is None else _tree.detach(x0)
    r = b if x0 is None else _tree.add(b, op(x), -1.0)
    p = r
    rs = _tree.dot(r, r)
    result = SolveResult(x, [float(rs.sqrt()) / b_norm])
    if result.residuals[0] <= tol:  # an exact (or good enough) warm start
        result.converged, result.reason = True, "tol reached"
        return result
    for k in range(1, max_iter + 1):
        ap = op(p)
        curvature = _tree.dot(p, ap)
        if not torch.isfinite(curvature) or curvature <= 0:
            result.reason = ("non-finite product" if not torch.isfinite(curvature)
                             else f"non-positive curvature p^T A p = {float(curvature):.3g}: "
                                  "A is not positive definite (add damping)")
            result.iterations = k - 1
            return _finish(result, "cg", warn)
        alpha = rs / curvature
        x = _tree.add(x, p, alpha)
        r = _tree.add(r, ap, -alpha)
        rs_new = _tree.dot(r, r)
        result.x, result.iterations = x, k
        result.residuals.append(float(rs_new.sqrt()) / b_norm)
        if result.residuals[-1] <= tol:
            result.converged, result.reason = True, "tol reached"
            return result
        p = _tree.add(r, p, rs_new / rs)
        rs = rs_new
    result.reason = "max_iter reached"
    return _finish(result, "cg", warn)


@torch.no_grad()
def neumann(matvec: Callable[[Tree], Tree], b: Tree, *, alpha: float = 1.0, damping: float = 0.0,
            tol: float = 1e-6, max_iter: int = 100, warn: bool = True) -> SolveResult:
    """Truncated Neumann series x = alpha sum_k (I - alpha A)^k b for (A + damping I) x = b
    (Lorraine et al. 2020). Converges when the spectral radius of I - alpha A is below 1,
    i.e. 0 < alpha < 2 / lambda_max(A); a growing residual stops it as diverged."""
    _check_callable("matvec", matvec)
    tol, max_iter = _check_common(b, tol, max_iter)
    alpha = check_number("alpha", alpha, low=0.0, low_open=True)
    op = _damped(matvec, damping)
    b_norm = _tree.norm(b)
    if not math.isfinite(b_norm):
        raise ValueError("b must be finite, got NaN/Inf in its leaves")
    if b_norm == 0:
        return SolveResult(_tree.zeros_like(b), [0.0], True, 0, "b = 0")
    term = _tree.scale(b, alpha)
    x = term
    result = SolveResult(x, [])
    for k in range(1, max_iter + 1):
        # term_k = alpha (I - alpha A)^k b, and b - A x_(k-1) = term_k / alpha exactly, so each
        # residual is that of the x held at that moment (the one returned).
        term = _tree.add(term, op(term), -alpha)
        residual = _tree.norm(term) / alpha / b_norm
        result.residuals.append(residual)
        result.iterations = k
        if residual <= tol:
            result.converged, result.reason = True, "tol reached"
            return result
        if not _tree.all_finite(term) or residual > 1e6 * result.residuals[0]:
            result.reason = "diverged: alpha too large for this A (needs alpha < 2 / lambda_max)"
            return _finish(result, "neumann", warn)
        if k < max_iter:
            x = _tree.add(x, term)
            result.x = x
    result.reason = "max_iter reached"
    return _finish(result, "neumann", warn)


@torch.no_grad()
def fixed_point(step: Callable[[Tree], Tree], x0: Tree, *, tol: float = 1e-6, max_iter: int = 100,
                scale: float | None = None, warn: bool = True) -> SolveResult:
    """Iterate x <- step(x) until ||step(x) - x|| <= tol * scale; residuals are those scaled
    changes. `scale` defaults to ||x0|| (1 if x0 = 0). For a linear system `solve` uses
    step(x) = x + alpha (b - A x) and scale = alpha ||b||, so the residuals are exactly the
    relative residuals ||b - A x|| / ||b|| of the iterates."""
    _check_callable("step", step)
    tol, max_iter = _check_common(x0, tol, max_iter, "x0")
    x = _tree.detach(x0)
    if scale is not None:
        scale = check_number("scale", scale, low=0.0, low_open=True)
    scale = scale or _tree.norm(x) or 1.0
    result = SolveResult(x, [])
    for k in range(1, max_iter + 1):
        new = step(x)
        _tree.check_like("step(x)", new, x, "x")
        change = _tree.norm(_tree.add(new, x, -1.0)) / scale
        x = new
        result.x, result.iterations = x, k
        result.residuals.append(change)
        if not _tree.all_finite(x):
            result.reason = "diverged: non-finite iterate"
            return _finish(result, "fixed_point", warn)
        if change <= tol:
            result.converged, result.reason = True, "tol reached"
            return result
    result.reason = "max_iter reached"
    return _finish(result, "fixed_point", warn)


def solve(name: str, matvec: Callable[[Tree], Tree], b: Tree, **kwargs) -> SolveResult:
    """Dispatch to `cg` or `neumann` by name (`fixed_point` uses x <- x + alpha (b - A x))."""
    check_choice("solver", name, SOLVERS)
    if name == "cg":
        return cg(matvec, b, **kwargs)
    if name == "neumann":
        return neumann(matvec, b, **kwargs)
    if name == "fixed_point":
        alpha = check_number("alpha", kwargs.pop("alpha", 1.0), low=0.0, low_open=True)
        damping = kwargs.pop("damping", 0.0)
        _check_callable("matvec", matvec)
        _tree.check_tree("b", b)
        op = _damped(matvec, damping)
        b_norm = _tree.norm(b)
        if not math.isfinite(b_norm):
            raise ValueError("b must be finite, got NaN/Inf in its leaves")
        if b_norm == 0:
            return SolveResult(_tree.zeros_like(b), [0.0], True, 0, "b = 0")
        return fixed_point(lambda x: _tree.add(x, _tree.add(b, op(x), -1.0), alpha),
                           _tree.zeros_like(b), scale=alpha * b_norm, **kwargs)
    raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}")
