"""STYLE.md's correctness rule, in one place: a kernel is correct when its error against a float64
reference is at most twice the error of the PyTorch baseline computed in the same precision.

    bound = max(2 * baseline_error + slack, floor)

Each user states its own `slack` (added: rounding the baseline can be lucky at, e.g. a quarter
ulp) and `floor` (a minimum bound where the baseline is exact by construction), so the GPU suite,
the benches and the tests share the rule and keep their tolerances. Errors are measured by
`max_abs_error`, `relative_error` (max-abs over max |ref|) or `relative_l2_error`; each takes a
tensor or a list of tensors, and a NaN counts as an infinite error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Tensors = torch.Tensor | Sequence[torch.Tensor]


def _pairs(got: Tensors, ref: Tensors) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(got, torch.Tensor):
        return [(got.detach(), ref.detach())]
    return [(g.detach(), r.detach()) for g, r in zip(got, ref, strict=True)]


def _abs_diff(g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return (g.double() - r.double()).abs().nan_to_num(nan=math.inf)


def worst_error(got: Tensors, ref: Tensors) -> tuple[float, str]:
    """(max |got - ref| in float64, where it is): 'tensor i shape flat index j' ('' if empty)."""
    worst, where = 0.0, ""
    for i, (g, r) in enumerate(_pairs(got, ref)):
        if g.numel() == 0:
            continue
        diff = _abs_diff(g, r).flatten()
        j = int(diff.argmax())
        if float(diff[j]) > worst or not where:
            worst, where = float(diff[j]), f"tensor {i} {tuple(g.shape)} flat index {j}"
    return worst, where


def max_abs_error(got: Tensors, ref: Tensors) -> float:
    """max |got - ref| in float64 over every element (0 for empty tensors)."""
    return worst_error(got, ref)[0]


def relative_error(got: Tensors, ref: Tensors) -> float:
    """max |got - ref| / max |ref|, in float64."""
    scale = max((float(r.double().abs().max()) for _, r in _pairs(got, ref) if r.numel()),
                default=0.0)
    return max_abs_error(got, ref) / max(scale, 1e-30)


def relative_l2_error(got: Tensors, ref: Tensors) -> float:
    """||got - ref||_2 / ||ref||_2 over every element (the absolute norm when ref is 0)."""
    pairs = _pairs(got, ref)
    num = math.sqrt(sum(float((g.double() - r.double()).pow(2).sum()) for g, r in pairs))
    den = math.sqrt(sum(float(r.double().pow(2).sum()) for _, r in pairs))
    return num / den if den > 0 else num


def bound(baseline_error: float, *, slack: float = 0.0, floor: float = 0.0) -> float:
    """The largest error allowed: max(2 x the baseline's error + slack, floor)."""
    return max(2 * baseline_error + slack, floor)


def within(error: float, baseline_error: float, *, slack: float = 0.0,
           floor: float = 0.0) -> bool:
    """Whether `error` meets the rule (a NaN error never does)."""
    return bool(error <= bound(baseline_error, slack=slack, floor=floor))


def count_over(got: Tensors, ref: Tensors, limit: float) -> int:
    """How many elements differ from ref by more than `limit` (NaN counts as over)."""
    return sum(int((~((g.double() - r.double()).abs() <= limit)).sum())
               for g, r in _pairs(got, ref))


def judge(reference: dict, ours: dict, baseline: dict, floor: float = 0.0, *,
          slack: float = 0.0, error: Callable[[Tensors, Tensors], float] = relative_error,
          **meta) -> dict:
    """One row: per named array, our error, the baseline's, the bound and whether we are
    within it; `passed` when every array is. `error` measures both (default: relative_error)."""
    arrays, passed = {}, True
    for name, ref in reference.items():
        err, base = error(ours[name], ref), error(baseline[name], ref)
        limit = bound(base, slack=slack, floor=floor)
        ok = within(err, base, slack=slack, floor=floor)
        arrays[name] = {"err": err, "math_err": base, "bound": limit, "passed": ok}
        passed &= ok
    return {**meta, "passed": bool(passed), "arrays": arrays}
