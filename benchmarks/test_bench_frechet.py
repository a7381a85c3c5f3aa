"""pytest-benchmark: the exact Fréchet distance (trustfast.metrics) vs pytorch-fid's scipy
`sqrtm` and torchmetrics' `eigvals`, from statistics at d = 64 / 512 / 2048 and from n = 256 < d
= 2048 features (the variants of `trustfast._bench.frechet`). Each benchmark records the value
and its relative difference to trustfast's in extra_info.

Target (issue 18): >= 5x scipy at d = 2048 with the same value to 1e-6.
"""

from __future__ import annotations

import functools

import pytest
import torch

from trustfast._bench import frechet as fb

DEVICE = torch.device("cpu")
CASES = [("stats", 2 * d, d) for d in fb.DIMS] + [("features", *fb.LOW_RANK)]


@functools.lru_cache(maxsize=1)
def _setup(kind: str, n: int, d: int):
    variants = (fb.stats_variants(d, DEVICE) if kind == "stats"
                else fb.feature_variants(n, d, DEVICE))
    values = {name: fn() for name, fn in variants.items()}
    return variants, values


def _names(kind: str) -> list[str]:
    variants = fb.stats_variants(8, DEVICE) if kind == "stats" else fb.feature_variants(4, 8,
                                                                                      DEVICE)
    return list(variants)


PARAMS = [(kind, n, d, v) for kind, n, d in CASES for v in _names(kind)]


@pytest.mark.parametrize(("kind", "n", "d", "variant"), PARAMS,
                         ids=[f"{k}-n{n}-d{d}-{v}" for k, n, d, v in PARAMS])
def test_frechet(benchmark, kind, n, d, variant):
    variants, values = _setup(kind, n, d)
    ours = values[next(iter(values))]
    benchmark.group = f"frechet {kind} n={n} d={d}"
    benchmark.extra_info.update(
        kind=kind, n=n, d=d, variant=variant, value=values[variant],
        rel_diff_vs_trustfast=abs(values[variant] - ours) / abs(ours),
        threads=torch.get_num_threads())
    # scipy's sqrtm takes ~10 s at d = 2048 on 2 cores: 3 rounds keep the file near 2 minutes.
    benchmark.pedantic(variants[variant], rounds=3 if d >= 2048 else 10, warmup_rounds=1)
