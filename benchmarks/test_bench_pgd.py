"""pytest-benchmark: PGD end to end (trustfast's one batched call for 4 restarts x 3 eps vs
torchattacks called 12 times plus a best-restart selection) on SmallCNN/digits and CIFAR
ResNet-18, and the fused step alone (C++ on the CPU) vs torchattacks' eager update and a copy of
the same bytes (the floor), from `trustfast._bench.pgd`. `benchmarks/report.py` turns the JSON
into throughput, speed-ups and % of the copy floor.

On the CPU ResNet-18 runs at batch 8 and 3 steps (one round is seconds); each row's extra_info
records the setting. Targets: batched >= 2x the looped throughput; fused step >= 2x the eager
sequence.
"""

from __future__ import annotations

import functools

import pytest
import torch

from trustfast._bench import pgd

DEVICE = torch.device("cpu")
E2E_CASES = [(w, v) for w in pgd.WORKLOADS for v in pgd.E2E_VARIANTS]  # one cached model each
STEP_CASES = [(s, v) for s in pgd.STEP_SHAPES for v in pgd.STEP_VARIANTS]


@functools.lru_cache(maxsize=1)
def _e2e(workload: str):
    wl = pgd.build(workload, DEVICE)
    return wl, pgd.e2e_variants(wl)


@functools.lru_cache(maxsize=1)
def _step(shape: tuple[int, ...]):
    return pgd.step_variants(shape, DEVICE), pgd.step_agreement(shape, DEVICE)


@pytest.mark.parametrize(("workload", "variant"), E2E_CASES,
                         ids=[f"{w}-{v}" for w, v in E2E_CASES])
def test_pgd_e2e(benchmark, workload, variant):
    wl, fns = _e2e(workload)
    if variant not in fns:
        pytest.skip(pgd.torchattacks_missing())
    benchmark.group = f"pgd e2e {workload}"
    benchmark.extra_info.update(
        bench="pgd e2e", workload=workload, variant=variant, setting=wl.setting, batch=wl.batch,
        steps=wl.steps, restarts=pgd.RESTARTS, eps=list(pgd.EPS), examples=wl.examples,
        threads=torch.get_num_threads())
    # ResNet-18 rounds take ~4 s on 2 cores: 3 rounds keep the whole file near a minute.
    benchmark.pedantic(fns[variant], rounds=3, warmup_rounds=1)


@pytest.mark.parametrize(("shape", "variant"), STEP_CASES,
                         ids=[f"{pgd.shape_name(s)}-{v}" for s, v in STEP_CASES])
def test_pgd_step(benchmark, shape, variant):
    fns, diff = _step(shape)
    benchmark.group = f"pgd_step {pgd.shape_name(shape)}"
    benchmark.extra_info.update(
        bench="pgd_step", shape=pgd.shape_name(shape), variant=variant, bytes=pgd.step_bytes(shape),
        dtype="float32", backend=pgd.select_backend("pgd_step", DEVICE, None),
        max_abs_diff_vs_eager=diff, threads=torch.get_num_threads())
    benchmark.pedantic(fns[variant], rounds=15, warmup_rounds=3)
