"""Exact Fréchet distance (trustfast.metrics) vs pytorch-fid's and torchmetrics' ways.

Problems (float64, seeded): two feature sets f = z @ M with z ~ N(0, I) and M = I + 0.3 G /
sqrt(d) (G Gaussian, a different M and mean shift per set), n = 2d samples each, so both
covariances are well-conditioned (eigenvalues within about 0.05..4); and a low-rank case with
n < d samples (default n = 256, d = 2048), where both covariances are singular.

Variants, from statistics (mu, sigma) at d = 64, 512, 2048 ("stats" cases):
  - "trustfast frechet_distance": factor="auto" (Cholesky factor of sigma1, eigh if it fails);
  - "trustfast factor=eigh": R = sigma1^1/2 from eigh, the issue's reference form;
  - "scipy sqrtm (pytorch-fid)": pytorch-fid's `calculate_frechet_distance` formula on numpy
    (scipy.linalg.sqrtm(sigma1 @ sigma2), eps offset if not finite, real part), on the CPU;
  - "torchmetrics eigvals": torchmetrics.image.fid `_compute_fid` (eigvals of sigma1 @ sigma2).
From features at n < d ("features" case; each peer computes the covariances itself):
  - "trustfast low-rank": frechet_distance_from_features (||A B^T||_*, no covariances);
  - "trustfast covariance (eigh)": feature_statistics, then frechet_distance(factor="eigh");
  - the two peers after np.cov / torch.cov.
Every row has ms, "trustfast speed-up" (row ms / trustfast ms), the value, and its relative
difference to trustfast's value. Goal (issue 18): >= 5x scipy at d = 2048, same value to 1e-6.

Registry interface: `checks` (key "frechet_checks": trustfast vs the pytorch-fid formula to
CHECK_RTOL on well-conditioned inputs, and the low-rank form vs the covariance form at n < d)
and `timings` (key "frechet_timings": one section per case). `backend` is unused (no kernel).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from trustfast._bench.registry import Section
from trustfast._bench.timing import median_time
from trustfast.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
)

DIMS, SMALL_DIMS = (64, 512, 2048), (16, 64)
LOW_RANK, SMALL_LOW_RANK = (256, 2048), (24, 64)  # (n, d) with n < d
CHECK_DIMS, SMALL_CHECK_DIMS = (64, 512), (16, 64)
CHECK_RTOL = 1e-6
OURS = "trustfast frechet_distance"
OURS_FEATURES = "trustfast low-rank"
SCIPY = "scipy sqrtm (pytorch-fid)"
TORCHMETRICS = "torchmetrics eigvals"


def pytorch_fid_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                         sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance, as a formula (scipy's sqrtm of the product)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def torchmetrics_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                          sigma2: torch.Tensor) -> float:
    """torchmetrics' `_compute_fid` (eigvals of sigma1 @ sigma2)."""
    from torchmetrics.image.fid import _compute_fid

    return float(_compute_fid(mu1, sigma1, mu2, sigma2))


@functools.lru_cache(maxsize=2)
def make_features(n: int, d: int, device: str = "cpu",
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (n, d) float64 feature sets with different, well-mixed covariances and means."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shift in (0.0, 0.1):
        mix = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(
            d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        z = torch.randn(n, d, generator=gen, dtype=torch.float64)
        out.append((z @ mix + shift).to(device))
    return out[0], out[1]


@functools.lru_cache(maxsize=1)
def make_stats(d: int, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """(mu1, sigma1, mu2, sigma2) from make_features(2d, d): well-conditioned covariances."""
    f1, f2 = make_features(2 * d, d, device)
    return (*feature_statistics(f1), *feature_statistics(f2))


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def stats_variants(d: int, device: torch.device) -> dict[str, Callable[[], float]]:
    """name -> zero-argument callable returning the distance from statistics (ours first)."""
    mu1, s1, mu2, s2 = make_stats(d, str(device))
    variants: dict[str, Callable[[], float]] = {
        OURS: lambda: frechet_distance(mu1, s1, mu2, s2),
        "trustfast factor=eigh": lambda: frechet_distance(mu1, s1, mu2, s2, factor="eigh"),
    }
    if _available("scipy"):
        arrays = [t.cpu().numpy() for t in (mu1, s1, mu2, s2)]
        variants[SCIPY] = lambda: pytorch_fid_distance(*arrays)
    if _available("torchmetrics"):
        variants[TORCHMETRICS] = lambda: torchmetrics_distance(mu1, s1, mu2, s2)
    return variants


def feature_variants(n: int, d: int, device: torch.device) -> dict[str, Callable[[], float]]:
    """name -> zero-argument callable returning the distance from (n, d) features, n < d."""
    f1, f2 = make_features(n, d, str(device))

    def covariance_eigh() -> float:
        mu1, s1 = feature_statistics(f1)
        mu2, s2 = feature_statistics(f2)
        return frechet_distance(mu1, s1, mu2, s2, factor="eigh")

    variants: dict[str, Callable[[], float]] = {
        OURS_FEATURES: lambda: frechet_distance_from_features(f1, f2),
        "trustfast covariance (eigh)": covariance_eigh,
    }
    if _available("scipy"):
        a, b = f1.cpu().numpy(), f2.cpu().numpy()
        variants[SCIPY] = lambda: pytorch_fid_distance(
            a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    if _available("torchmetrics"):
        variants[TORCHMETRICS] = lambda: torchmetrics_distance(
            f1.mean(0), torch.cov(f1.T), f2.mean(0), torch.cov(f2.T))
    return variants


def _repeats(d: int, repeats: int) -> int:
    # scipy's sqrtm takes ~10 s at d = 2048 on 2 cores: three samples give a stable median.
    return min(repeats, 3) if d >= 2048 else repeats


def measure(variants: dict[str, Callable[[], float]], device: torch.device, repeats: int,
            meta: dict) -> list[dict]:
    """One row per variant: ms, speed-up of trustfast (row ms / trustfast ms), value, and
    relative difference of the value to trustfast's (the first variant)."""
    ours_name = next(iter(variants))
    values = {name: fn() for name, fn in variants.items()}
    times = {name: median_time(fn, device, repeats, warmup=1) for name, fn in variants.items()}
    rows = []
    for name, seconds in times.items():
        ref = values[ours_name]
        rows.append({**meta, "variant": name, "ms": seconds * 1e3,
                     "trustfast speed-up": seconds / times[ours_name], "value": values[name],
                     "rel diff vs trustfast": abs(values[name] - ref) / max(abs(ref), 1e-300),
                     "runs on": "cpu" if name == SCIPY else str(device)})
    return rows


def timings(device: torch.device, repeats: int, *, small: bool, backend: str | None = None,
            ceilings: dict | None = None) -> list[Section]:
    """One section per statistics dimension, then the n < d features case (key
    "frechet_timings")."""
    device = torch.device(device)
    sections = []
    for d in SMALL_DIMS if small else DIMS:
        meta = {"case": f"stats d={d}", "d": d, "n": 2 * d, "dtype": "float64"}
        sections.append(Section(
            "frechet_timings", f"frechet timing stats d={d}",
            lambda d=d, meta=meta: measure(stats_variants(d, device), device,
                                           _repeats(d, repeats), meta), meta))
    n, d = SMALL_LOW_RANK if small else LOW_RANK
    meta = {"case": f"features n={n} < d={d}", "d": d, "n": n, "dtype": "float64"}
    sections.append(Section(
        "frechet_timings", f"frechet timing features n={n} d={d}",
        lambda: measure(feature_variants(n, d, device), device, _repeats(d, repeats), meta),
        meta))
    return sections


def check_stats(d: int, device: torch.device, rtol: float = CHECK_RTOL) -> list[dict]:
    """trustfast (auto and eigh) against the pytorch-fid formula on well-conditioned inputs;
    torchmetrics' value recorded next to it."""
    mu1, s1, mu2, s2 = make_stats(d, str(device))
    expected = pytorch_fid_distance(*(t.cpu().numpy() for t in (mu1, s1, mu2, s2)))
    rows = []
    for factor in ("auto", "eigh"):
        got = frechet_distance(mu1, s1, mu2, s2, factor=factor)
        diff = abs(got - expected) / abs(expected)
        rows.append({"case": f"frechet stats d={d} factor={factor}", "d": d,
                     "dtype": "float64", "value": got, "pytorch_fid_value": expected,
                     "rel_diff_vs_pytorch_fid": diff, "rtol": rtol, "passed": diff <= rtol})
    if _available("torchmetrics"):
        rows[0]["torchmetrics_rel_diff"] = abs(
            torchmetrics_distance(mu1, s1, mu2, s2) - expected) / abs(expected)
    return rows


def check_low_rank(n: int, d: int, device: torch.device, rtol: float = 1e-8) -> dict:
    """The low-rank form against the covariance form (eigh) on the same n < d features."""
    f1, f2 = make_features(n, d, str(device))
    low_rank = frechet_distance_from_features(f1, f2)
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    full = frechet_distance(mu1, s1, mu2, s2, factor="eigh")
    diff = abs(low_rank - full) / abs(full)
    return {"case": f"frechet low-rank n={n} d={d}", "d": d, "n": n, "dtype": "float64",
            "value": low_rank, "covariance_value": full, "rel_diff_vs_covariance": diff,
            "rtol": rtol, "passed": diff <= rtol}


def checks(device: torch.device, *, small: bool, backend: str = "triton") -> list[Section]:
    """Key "frechet_checks": `check_stats` per dimension, then `check_low_rank`."""
    device = torch.device(device)
    sections = [Section("frechet_checks", f"check frechet stats d={d}",
                        lambda d=d: check_stats(d, device),
                        {"case": f"frechet stats d={d}", "d": d, "dtype": "float64"})
                for d in (SMALL_CHECK_DIMS if small else CHECK_DIMS)]
    n, d = SMALL_LOW_RANK if small else LOW_RANK
    sections.append(Section("frechet_checks", f"check frechet low-rank n={n} d={d}",
                            lambda: check_low_rank(n, d, device),
                            {"case": f"frechet low-rank n={n} d={d}", "dtype": "float64"}))
    return sections
