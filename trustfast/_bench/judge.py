"""STYLE.md's correctness rule for a kernel, shared by the GPU suite's checks: its error against a
float64 reference is at most twice the error of the PyTorch baseline in the same precision."""

from __future__ import annotations

import torch


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|, in float64."""
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def judge(reference: dict, ours: dict, baseline: dict, floor: float, **meta) -> dict:
    """One row: per named array, our error, the baseline's, the bound max(2 x baseline, floor)
    and whether we are within it; `passed` when every array is."""
    arrays, passed = {}, True
    for name, ref in reference.items():
        err, base = relative_error(ours[name], ref), relative_error(baseline[name], ref)
        bound = max(2 * base, floor)
        arrays[name] = {"err": err, "math_err": base, "bound": bound, "passed": err <= bound}
        passed &= err <= bound
    return {**meta, "passed": bool(passed), "arrays": arrays}
