"""Parameter pytrees (dicts / tuples / lists of tensors): checks and vector-space operations."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

Tree = Any


def check_count(name: str, value: Any, low: int = 1, high: float | None = None) -> int:
    """An iteration count: an int >= low (<= high). Unlike `checks.check_number(integer=True)`,
    a float is refused even when whole: `steps=1e300` would loop forever (TypeError)."""
    from trustfast.checks import check_number, shown

    if isinstance(value, float) or (isinstance(value, torch.Tensor) and value.is_floating_point()):
        raise TypeError(f"{name} must be an integer, got {shown(value)}")
    return check_number(name, value, low=low, high=high, integer=True)


def leaves(tree: Tree) -> list[torch.Tensor]:
    return pytree.tree_leaves(tree)


def tree_map(fn, *trees: Tree) -> Tree:
    return pytree.tree_map(fn, *trees)


def check_tree(name: str, tree: Tree) -> None:
    """Every leaf must be a floating tensor and there must be at least one."""
    flat, _ = pytree.tree_flatten(tree)
    if not flat:
        raise ValueError(f"{name} holds no tensors")
    for i, leaf in enumerate(flat):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{name}: leaf {i} is a {type(leaf).__name__}, expected a tensor")
        if not leaf.is_floating_point():
            raise TypeError(f"{name}: leaf {i} has dtype {leaf.dtype}, expected floating point")


def check_like(name: str, tree: Tree, ref: Tree, ref_name: str,
               batched: bool = False) -> int | None:
    """`tree` must have `ref`'s structure and leaf shapes (plus one shared leading dim if batched).

    Returns the batch size when batched, else None.
    """
    flat, spec = pytree.tree_flatten(tree)
    ref_flat, ref_spec = pytree.tree_flatten(ref)
    if spec != ref_spec:
        raise ValueError(f"{name} must have the same structure as {ref_name}: got {spec}, "
                         f"expected {ref_spec}")
    batch = None
    for i, (t, r) in enumerate(zip(flat, ref_flat)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: leaf {i} is a {type(t).__name__}, expected a tensor")
        shape = tuple(t.shape)
        if batched:
            if t.dim() != r.dim() + 1:
                raise ValueError(f"{name}: leaf {i} has shape {shape}; batched=True expects "
                                 f"(B, *{tuple(r.shape)})")
            batch = shape[0] if batch is None else batch
            if shape[0] != batch:
                raise ValueError(f"{name}: leaf {i} has batch size {shape[0]}, others {batch}")
            shape = shape[1:]
        if shape != tuple(r.shape):
            raise ValueError(f"{name}: leaf {i} has shape {tuple(t.shape)}, {ref_name} leaf "
                             f"{i} has {tuple(r.shape)}")
        if t.dtype != r.dtype or t.device != r.device:
            raise ValueError(f"{name}: leaf {i} is {t.dtype} on {t.device}, {ref_name} leaf {i} "
                             f"is {r.dtype} on {r.device}")
    return batch


def dot(a: Tree, b: Tree) -> torch.Tensor:
    """Sum over leaves of <a_i, b_i> (a 0-dim tensor)."""
    return sum((x * y).sum() for x, y in zip(leaves(a), leaves(b)))


def add(a: Tree, b: Tree, alpha: float | torch.Tensor = 1.0) -> Tree:
    """a + alpha * b."""
    return tree_map(lambda x, y: x + alpha * y, a, b)


def scale(a: Tree, alpha: float | torch.Tensor) -> Tree:
    return tree_map(lambda x: alpha * x, a)


def norm(a: Tree) -> float:
    return float(torch.sqrt(sum((x.double() ** 2).sum() for x in leaves(a))))


def zeros_like(a: Tree) -> Tree:
    return tree_map(torch.zeros_like, a)


def detach(a: Tree) -> Tree:
    return tree_map(lambda x: x.detach(), a)


def all_finite(a: Tree) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in leaves(a))
