"""pytest-benchmark: Hessian-vector products (trustfast's modes, the reused-graph operator and
batched products) vs `torch.autograd.functional.hvp`, with one gradient as the unit, on the MLP,
CNN (BatchNorm eval) and transformer-block workloads of `trustfast._bench.hvp`.
`benchmarks/report.py` turns the JSON into ratios to the gradient and speed-ups over the peer.

Targets: fwd_rev <= 3x one gradient, >= 1.5x faster than torch.autograd.functional.hvp, and a
batched x8 product <= 4x one product of the same mode.
"""

from __future__ import annotations

import functools

import pytest
import torch

from trustfast._bench import hvp as hb

DEVICE = torch.device("cpu")
CASES = [(w, v) for w in hb.WORKLOADS for v in hb.VARIANTS]  # workload-major: one cached setup


@functools.lru_cache(maxsize=1)
def _setup(workload: str):
    f, params, args, v = hb.build(workload, DEVICE)
    return hb.variants(f, params, args, v), hb.num_params(params)


@pytest.mark.parametrize(("workload", "variant"), CASES, ids=[f"{w}-{v}" for w, v in CASES])
def test_hvp(benchmark, workload, variant):
    variants, n_params = _setup(workload)
    batched = variant in hb.BATCHED
    benchmark.group = f"hvp {workload}"
    benchmark.extra_info.update(
        workload=workload, variant=variant, params=n_params,
        products=hb.BATCH if batched else int(variant != hb.GRADIENT),
        single_variant=hb.BATCHED.get(variant), threads=torch.get_num_threads())
    # Batched rows cost 8 products (seconds each for the CNN on 2 cores): fewer rounds keep the
    # whole file under about 3 minutes.
    benchmark.pedantic(variants[variant], rounds=3 if batched else 5, warmup_rounds=1)
