"""pytest-benchmark: the adversarial watermarking attack on 256 faces, with all messages of a step
in one batch (`AdversarialWatermarkAttack`) vs a straightforward per-message loop
(`trustfast._bench.watermark_attack.loop_attack`: a forward and backward per message).

The setup is the tiny IResNet and the HiDDeN encoder of the watermark-attack experiment, at
32x32, with 4 random messages per step (expectation over messages), eps 4/255 and 3 steps.
Timing does not depend on the weights, so both models keep their seeded initial weights. The
two variants return the same images (tests/test_watermark_attack.py).
"""

from __future__ import annotations

import functools

import pytest

from trustfast._bench.timing import intra_op_threads, loadavg
from trustfast._bench.watermark_attack import loop_attack, setup

FACES, STEPS, MESSAGES = 256, 3, 4
THREADS = 2
OURS = "trustfast (messages batched)"
PEER = "per-message loop"


@functools.lru_cache(maxsize=1)
def _setup():
    return setup(FACES, STEPS, MESSAGES)


@pytest.mark.parametrize("variant", [OURS, PEER])
def test_watermark_attack_cpu(benchmark, variant):
    attack, probes, references, same = _setup()
    run = {OURS: lambda: attack(probes, references, same),
           PEER: lambda: loop_attack(attack, probes, references, same)}[variant]
    benchmark.group = "watermark attack cpu"
    benchmark.extra_info.update(bench="watermark attack", variant=variant, faces=FACES,
                                steps=STEPS, messages=MESSAGES, threads=THREADS,
                                loadavg=loadavg())
    with intra_op_threads(THREADS):
        benchmark.pedantic(run, rounds=3, warmup_rounds=1)
