"""Exact Fréchet distance: parity with pytorch-fid's formula, the low-rank form, known answers.

The oracle is pytorch-fid's `calculate_frechet_distance` (fid_score.py) ported as a formula:
scipy.linalg.sqrtm(S1 @ S2), the eps * I offset when that is not finite, the real part.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

# pytorch-fid's calculate_frechet_distance ported as the oracle (one copy, shared with the
# benchmark): scipy's sqrtm of sigma1 @ sigma2, its eps offset when not finite, the real part
from trustfast._bench.frechet import pytorch_fid_distance
from trustfast.metrics import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    trace_sqrt_product,
)


def gaussian(d: int, seed: int, low: float = 0.5, high: float = 2.0):
    """A mean and a covariance with eigenvalues in [low, high] (well-conditioned)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    sigma = (q * rng.uniform(low, high, d)) @ q.T
    return rng.standard_normal(d) * 0.5, 0.5 * (sigma + sigma.T)


def features(n: int, d: int, seed: int, rank: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    r = rank or d
    mix = torch.randn(r, d, generator=gen, dtype=torch.float64) / math.sqrt(r)
    return torch.randn(n, r, generator=gen, dtype=torch.float64) @ mix + 0.3 * seed


def covariance_form(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """The distance from explicit float64 covariances through the eigh factor."""
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    return frechet_distance(mu1, s1, mu2, s2, factor="eigh")


@pytest.mark.parametrize("d", [8, 64, 256])
@pytest.mark.parametrize("factor", ["auto", "eigh", "cholesky"])
def test_parity_with_pytorch_fid_formula(d, factor):
    mu1, s1 = gaussian(d, seed=d)
    mu2, s2 = gaussian(d, seed=d + 1)
    expected = pytorch_fid_distance(mu1, s1, mu2, s2)
    got = frechet_distance(mu1, s1, mu2, s2, factor=factor)
    assert got == pytest.approx(expected, rel=1e-6), (got, expected)
    # The same numbers as torch tensors (float32 inputs are read in float64).
    t = [torch.from_numpy(a) for a in (mu1, s1, mu2, s2)]
    assert frechet_distance(*t, factor=factor) == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("d", [8, 64, 256])
def test_parity_from_features_with_pytorch_fid_statistics(d):
    f1, f2 = features(3 * d, d, 1), features(4 * d, d, 2)
    a, b = f1.numpy(), f2.numpy()
    expected = pytorch_fid_distance(a.mean(0), np.cov(a, rowvar=False),
                                    b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance_from_features(f1, f2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-6)


def test_feature_statistics_are_pytorch_fids():
    f = features(50, 7, 3)
    mu, sigma = feature_statistics(f)
    np.testing.assert_allclose(mu.numpy(), f.numpy().mean(0), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(sigma.numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize(("n1", "n2", "d"), [(20, 30, 64), (10, 10, 40), (20, 90, 64),
                                             (90, 15, 64), (2, 3, 16)])
def test_low_rank_form_equals_covariance_form(n1, n2, d):
    f1, f2 = features(n1, d, 1), features(n2, d, 2)
    low_rank = frechet_distance_from_features(f1, f2)
    assert low_rank == pytest.approx(covariance_form(f1, f2), rel=1e-8)
    assert math.isfinite(low_rank) and low_rank > 0


def test_identical_distributions_give_zero():
    mu, s = gaussian(64, seed=5)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-10 * np.trace(s)
    for n in (30, 200):  # low-rank form (n < d) and covariance form
        f = features(n, 64, 4)
        assert frechet_distance_from_features(f, f) < 1e-9 * float(f.var(0).sum())
        # A shifted copy: only the mean term remains.
        shift = torch.full((64,), 0.25, dtype=torch.float64)
        assert frechet_distance_from_features(f, f + shift) == pytest.approx(64 * 0.25**2,
                                                                             rel=1e-8)


def test_known_answer_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    d = 50
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    a[:5] = 0.0  # rank-deficient sigma1: the eigh fallback
    b[3:8] = 0.0
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2))
    for factor in ("auto", "eigh"):
        got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), factor=factor)
        assert got == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="sigma1 must be positive definite"):
        frechet_distance(mu1, np.diag(a), mu2, np.diag(b), factor="cholesky")


def test_rank_deficient_covariances_are_finite_and_exact():
    # Rank-8 features in 32 dimensions, many samples: both covariances are singular.
    f1, f2 = features(400, 32, 1, rank=8), features(300, 32, 2, rank=8)
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    assert torch.linalg.matrix_rank(s1) == 8
    got = frechet_distance(mu1, s1, mu2, s2)
    assert math.isfinite(got) and got >= 0
    # The low-rank form on the first 30 rows of each (n < d) against the covariance form of
    # the same rows: both exact, no eps offset.
    assert frechet_distance_from_features(f1[:30], f2[:30]) == pytest.approx(
        covariance_form(f1[:30], f2[:30]), rel=1e-8)
    # pytorch-fid's eps offset moves the answer by O(sqrt(eps)); we agree to that order.
    ref = pytorch_fid_distance(*(t.numpy() for t in (mu1, s1, mu2, s2)))
    assert got == pytest.approx(ref, rel=1e-3, abs=1e-3)


def test_symmetric_in_its_arguments():
    mu1, s1 = gaussian(40, seed=1)
    mu2, s2 = gaussian(40, seed=2, low=0.01, high=5.0)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    f1, f2 = features(20, 40, 1), features(35, 40, 2)
    assert frechet_distance_from_features(f1, f2) == pytest.approx(
        frechet_distance_from_features(f2, f1), rel=1e-10)


def test_trace_sqrt_product_matches_eigvals_of_the_product():
    _, s1 = gaussian(30, seed=7)
    _, s2 = gaussian(30, seed=8)
    t1, t2 = torch.from_numpy(s1), torch.from_numpy(s2)
    expected = torch.linalg.eigvals(t1 @ t2).sqrt().real.sum()  # torchmetrics' route
    for factor in ("auto", "eigh", "cholesky"):
        assert float(trace_sqrt_product(t1, t2, factor)) == pytest.approx(float(expected),
                                                                          rel=1e-10)


def test_asymmetric_round_off_in_the_covariance_is_symmetrised():
    mu1, s1 = gaussian(16, seed=1)
    mu2, s2 = gaussian(16, seed=2)
    noise = np.triu(np.full((16, 16), 1e-13), 1)
    assert frechet_distance(mu1, s1 + noise, mu2, s2) == pytest.approx(
        frechet_distance(mu1, s1, mu2, s2), rel=1e-10)


def test_bad_inputs_name_the_argument():
    mu, s = gaussian(4, seed=0)
    with pytest.raises(ValueError, match="mu2 must have the length of mu1"):
        frechet_distance(mu, s, mu[:3], s)
    with pytest.raises(ValueError, match=r"sigma2 must have shape \(4, 4\)"):
        frechet_distance(mu, s, mu, s[:3, :3])
    with pytest.raises(ValueError, match="sigma1 must have 2 dimensions"):
        frechet_distance(mu, mu, mu, s)
    bad = s.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="sigma1 must be finite"):
        frechet_distance(mu, bad, mu, s)
    with pytest.raises(TypeError, match="mu1 must be a torch.Tensor or a numpy array"):
        frechet_distance(list(mu), s, mu, s)
    with pytest.raises(TypeError, match="sigma2 must hold real floating-point"):
        frechet_distance(mu, s, mu, s.astype(np.int64))
    with pytest.raises(ValueError, match="factor must be one of"):
        frechet_distance(mu, s, mu, s, factor="schur")
    with pytest.raises(ValueError, match="sigma1 must be a non-empty square matrix"):
        trace_sqrt_product(s[:3], s)
    with pytest.raises(ValueError, match=r"sigma2 must have the shape of sigma1 \(4, 4\)"):
        trace_sqrt_product(s, s[:3, :3])
    f = features(10, 4, 0)
    with pytest.raises(ValueError, match="f1 must hold at least 2 samples"):
        frechet_distance_from_features(f[:1], f)
    with pytest.raises(ValueError, match="f2 must have the feature dimension of f1"):
        frechet_distance_from_features(f, f[:, :3])
    with pytest.raises(ValueError, match="f2 must have 2 dimensions"):
        frechet_distance_from_features(f, f[0])
    with pytest.raises(TypeError, match="f1 must be a floating-point tensor"):
        frechet_distance_from_features(f.long(), f)
    with pytest.raises(ValueError, match="f2 must be finite"):
        frechet_distance_from_features(f, f.clone().fill_(math.inf))


def test_importing_the_metrics_loads_no_peer_library():
    import subprocess
    import sys

    code = ("import sys, trustfast.metrics; "
            "print([m for m in ('scipy', 'sklearn', 'fairlearn', 'torchmetrics', 'diffusers', "
            "'transformers', 'torchvision', 'safetensors') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.stdout.strip() == "[]", out.stdout
