"""Hessian-vector products of scalar functions of parameter pytrees.

H v = d/dt grad f(params + t v) at t = 0. Three ways to get it (`mode`):
  - "fwd_rev" (default): forward-mode JVP of the reverse-mode gradient (Pearlmutter 1994);
    about the cost of two gradients, no retained double-backward graph.
  - "rev_rev": reverse-over-reverse (VJP of the gradient; H is symmetric so VJP = HVP). Its
    linearization is reusable: `hvp_operator(..., mode="rev_rev")` pays for the forward and the
    first backward once and each further product costs one backward of the gradient graph.
  - "finite_diff": central difference (grad f(p + r v) - grad f(p - r v)) / 2r; first-order AD
    only, so it works for any differentiable op, at O(r^2) truncation error.
Where forward-mode AD is not implemented for an op (e.g. SDPA's flash / memory-efficient
kernels), "fwd_rev" warns once and falls back to "rev_rev".

`f` is called as `f(params, *args)` and must return a 0-dim tensor; `params` is a dict / tuple /
list of tensors; `v` has the same structure (with a leading batch dim on every leaf when
`batched=True`, computed with `torch.func.vmap`). Results are detached (not differentiable).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from trustfast.blo import _tree
from trustfast.blo._tree import Tree
from trustfast.checks import check_choice, check_number

HVP_MODES = ("fwd_rev", "rev_rev", "finite_diff")
_warned_fallback = False


def _scalar(out, name: str = "f") -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(out).__name__}")
    if out.dim() != 0:
        raise ValueError(f"{name} must return a scalar (0-dim) tensor, got shape "
                         f"{tuple(out.shape)}; reduce it (e.g. .mean()) first")
    return out


def _grad_fn(f: Callable, args: Sequence) -> Callable[[Tree], Tree]:
    return grad(lambda p: _scalar(f(p, *args)))


def _check_args(args) -> None:
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple of extra positional arguments of f, got "
                        f"{type(args).__name__} (wrap one argument: args=(x,))")


def _check(f, params, v, mode, batched, name: str = "f") -> None:
    if not callable(f):
        raise TypeError(f"{name} must be callable, got {type(f).__name__}")
    check_choice("mode", mode, HVP_MODES)
    if not isinstance(batched, bool):
        raise TypeError(f"batched must be a bool, got {batched!r}")
    _tree.check_tree("params", params)
    if v is not None:
        _tree.check_like("v", v, params, "params", batched=batched)


def _is_missing_forward_ad(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, NotImplementedError)) and (
        "forward ad" in text or "forward-mode" in text or "jvp" in text
        or ("not implemented" in text and "forward" in text)
        # torch 2.13: forward-over-reverse through F.mse_loss(reduction="mean") writes into a
        # ZeroTensor tangent; reverse-over-reverse is unaffected.
        or "zerotensors are immutable" in text
    )


def _warn_fallback(exc: BaseException) -> None:
    global _warned_fallback
    if not _warned_fallback:
        from trustfast._meta import TrustfastWarning

        warnings.warn(
            "hvp: forward-mode AD is unavailable for an op in f "
            f"({str(exc).splitlines()[0][:160]}); using mode='rev_rev' instead (warned once)",
            TrustfastWarning, stacklevel=3,
        )
        _warned_fallback = True


def _finite_diff_step(params: Tree, v: Tree, eps: float | None) -> float:
    if eps is not None:
        return check_number("eps", eps, low=0.0, low_open=True,
                            hint="the finite-difference step")
    dtype = _tree.leaves(params)[0].dtype
    # r = sqrt(machine eps) * (1 + ||p||) / ||v||: balances truncation O(r^2) and rounding O(1/r)
    # for a central difference (Nocedal & Wright, sec. 8.1).
    v_norm = _tree.norm(v)
    if v_norm == 0:
        return 1.0
    return math.sqrt(torch.finfo(dtype).eps) * (1.0 + _tree.norm(params)) / v_norm


def hvp(f: Callable, params: Tree, v: Tree, *, args: Sequence = (), mode: str = "fwd_rev",
        batched: bool = False, eps: float | None = None) -> Tree:
    """Hessian of `f(params, *args)` with respect to `params`, times `v` (module docstring).

    Args:
        f: scalar function of the parameter pytree (and `args`).
        params: dict / tuple / list of floating tensors (the point of evaluation).
        v: vector(s) shaped like `params`; with `batched=True` each leaf has a leading dim B.
        args: extra positional arguments of `f` (a data batch), not differentiated.
        mode: "fwd_rev" (default), "rev_rev" or "finite_diff".
        eps: finite-difference step (default: sqrt(machine eps) (1 + ||p||) / ||v||).

    Returns:
        H v with `v`'s structure (and batch dim), detached.
    """
    if v is None:
        raise TypeError("v must be a tree of tensors shaped like params, got None")
    _check(f, params, v, mode, batched)
    _check_args(args)
    if mode == "finite_diff" and eps is not None:
        eps = _finite_diff_step(params, v, eps)
    params = _tree.detach(params)
    v = _tree.detach(v)
    grad_f = _grad_fn(f, args)
    if mode == "fwd_rev":
        try:
            def single(vec):
                return jvp(grad_f, (params,), (vec,))[1]

            return _tree.detach(vmap(single)(v) if batched else single(v))
        except (RuntimeError, NotImplementedError) as exc:
            if not _is_missing_forward_ad(exc):
                raise
            _warn_fallback(exc)
            mode = "rev_rev"
    if mode == "rev_rev":
        _, vjp_fn = vjp(grad_f, params)
        out = vmap(vjp_fn)(v) if batched else vjp_fn(v)
        return _tree.detach(out[0])

    def central(vec):
        r = _finite_diff_step(params, vec, eps) if not batched else eps_b
        plus = grad_f(_tree.add(params, vec, r))
        minus = grad_f(_tree.add(params, vec, -r))
        return _tree.scale(_tree.add(plus, minus, -1.0), 1.0 / (2 * r))

    if batched:
        # One step for the whole batch: vmap cannot branch on each vector's norm.
        eps_b = eps if eps is not None else max(
            _finite_diff_step(params, _tree.tree_map(lambda x, i=i: x[i], v), None)
            for i in range(_tree.leaves(v)[0].shape[0])
        )
        return _tree.detach(vmap(central)(v))
    return _tree.detach(central(v))


def hvp_operator(f: Callable, params: Tree, *, args: Sequence = (),
                 mode: str = "rev_rev") -> Callable[[Tree], Tree]:
    """A reusable v -> H v at fixed `params` (for iterative solvers calling it many times).

    "rev_rev" (default here) runs the forward and the first backward once and keeps the
    gradient graph; each product is then one backward of it. "fwd_rev" and "finite_diff"
    recompute per product (as `hvp`).
    """
    _check(f, params, None, mode, False)
    _check_args(args)
    params = _tree.detach(params)
    if mode == "rev_rev":
        _, vjp_fn = vjp(_grad_fn(f, args), params)

        def apply(v: Tree) -> Tree:
            _tree.check_like("v", v, params, "params")
            return _tree.detach(vjp_fn(_tree.detach(v))[0])

        return apply
    return lambda v: hvp(f, params, v, args=args, mode=mode)


def gnvp(model_fn: Callable, loss_fn: Callable, params: Tree, v: Tree, *,
         args: Sequence = (), batched: bool = False) -> Tree:
    """Generalized Gauss-Newton product J^T H_L J v (Schraudolph 2002).

    `model_fn(params, *args)` gives the outputs z, `loss_fn(z)` a scalar; J = dz/dparams and
    H_L = d^2 loss / dz^2. Positive semi-definite whenever the loss is convex in z, which makes it
    a safe matrix for conjugate gradients where the Hessian is indefinite.
    """
    if v is None:
        raise TypeError("v must be a tree of tensors shaped like params, got None")
    _check(model_fn, params, v, "fwd_rev", batched, "model_fn")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    _check_args(args)
    params, v = _tree.detach(params), _tree.detach(v)

    def model(p):
        return model_fn(p, *args)

    grad_loss = grad(lambda z: _scalar(loss_fn(z), "loss_fn"))
    out, vjp_fn = vjp(model, params)

    def single(vec):
        _, jv = jvp(model, (params,), (vec,))
        _, hjv = jvp(grad_loss, (out,), (jv,))
        return vjp_fn(hjv)[0]

    return _tree.detach(vmap(single)(v) if batched else single(v))


def module_loss(model: nn.Module, loss_fn: Callable) -> tuple[Callable, dict[str, torch.Tensor]]:
    """(f, params) for an `nn.Module`: f(params, inputs, targets) = loss_fn(model(inputs), targets)
    via `torch.func.functional_call`, with the module's buffers held fixed (BatchNorm in eval
    mode uses its running statistics). params are detached copies of the trainable parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def f(p, inputs, targets):
        return loss_fn(functional_call(model, (p, buffers), (inputs,)), targets)

    return f, params
