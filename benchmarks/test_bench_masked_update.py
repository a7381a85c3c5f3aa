"""pytest-benchmark: fused masked update (C++ on the CPU) vs torch peers at 1M / 10M / 50M fp32
parameters, plus a copy of the same bytes (the floor). `make bench` runs it and
`benchmarks/report.py` turns the JSON into ratios, GB/s and % of the copy floor.

Targets (2-core CI machine): >= 2x the torch foreach equivalent at 10M, >= 60 % of copy.
"""

from __future__ import annotations

import functools

import pytest
import torch

from trustfast._bench import masked_update as mu

SIZES = [1_000_000, 10_000_000, 50_000_000]
DEVICE = torch.device("cpu")
OPS = {
    "masked_sgd_step": (mu.sgd_variants, mu.sgd_bytes),
    "masked_adamw_step": (mu.adamw_variants, mu.adamw_bytes),
}


@functools.lru_cache(maxsize=2)
def _setup(op: str, n: int):
    make_variants, nbytes = OPS[op]
    pb = mu.make_problem(n, DEVICE)
    half = nbytes(pb) // 2
    src = torch.ones(half, dtype=torch.uint8)
    variants = make_variants(pb, backend=None)
    variants["copy of the same bytes (floor)"] = functools.partial(src.clone().copy_, src)
    return variants, nbytes(pb)


def _variant_names(op: str) -> list[str]:
    variants, _ = _setup(op, 16)
    return list(variants)


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("variant", _variant_names("masked_sgd_step"))
def test_masked_sgd_step(benchmark, n, variant):
    _run(benchmark, "masked_sgd_step", n, variant)


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("variant", _variant_names("masked_adamw_step"))
def test_masked_adamw_step(benchmark, n, variant):
    _run(benchmark, "masked_adamw_step", n, variant)


def _run(benchmark, op: str, n: int, variant: str) -> None:
    variants, nbytes = _setup(op, n)
    benchmark.group = f"{op} {n:.0e}"
    benchmark.extra_info.update(op=op, params=n, variant=variant, bytes=nbytes,
                                threads=torch.get_num_threads())
    benchmark.pedantic(variants[variant], rounds=15, warmup_rounds=3)
