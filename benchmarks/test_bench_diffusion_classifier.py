"""pytest-benchmark: the diffusion classifier on the CPU (issue 19), the workloads of
`trustfast._bench.diffusion_classifier`: a random-weight `label_unet(10, preset="tiny")`, 16 digits
images at 16 px, 8 draws, batch_size 512, float32 (`SIZES["cpu"]`), as
  - "per-class loop": `classify_per_class` (the reference's loop over draws and classes);
  - "batched": `DiffusionClassifier.errors`, exhaustive;
  - "batched adaptive auto": `errors` with `adaptive="auto"`.
extra_info carries the images, model evaluations and forwards of one call, so images/s =
images / mean time and evaluations/s = evaluations / mean time; `trustfast bench --ops
diffusion_classifier` times the variants interleaved and reports the ratios directly.

Goal: adaptive spends >= 2x fewer model evaluations (at <= 1 point of accuracy lost, measured
on a trained model by `adaptive_accuracy`).
"""

from __future__ import annotations

import functools

import pytest
import torch

from trustfast._bench import diffusion_classifier as dcb
from trustfast._bench.timing import intra_op_threads, loadavg

pytest.importorskip("diffusers")
DEVICE = torch.device("cpu")
THREADS = 2


@functools.lru_cache(maxsize=1)
def _setup():
    """The workloads, after one image has gone through every variant (first-call allocations
    without paying a whole per-class-loop call)."""
    model, images = dcb.build(DEVICE)
    with intra_op_threads(THREADS):
        for _, warm in dcb.workloads(model, images[:1], DEVICE, small=False).values():
            warm()
    return model, images, dcb.workloads(model, images, DEVICE, small=False)


@pytest.mark.parametrize("variant", dcb.VARIANTS, ids=[v.replace(" ", "_") for v in dcb.VARIANTS])
def test_diffusion_classifier_throughput(benchmark, variant):
    _, images, variants = _setup()
    n, side, channels, draws, batch = dcb.sizes(DEVICE, small=False)
    clf, work = variants[variant]
    with intra_op_threads(THREADS):
        benchmark.group = "diffusion classifier"
        # 2 rounds: the per-class loop's call is seconds (module SIZES)
        errors = benchmark.pedantic(work, rounds=2, warmup_rounds=0)
        evaluations, forwards = clf.stats.evaluations, clf.stats.forwards  # of one call
        benchmark.extra_info.update(
            bench="diffusion_classifier", variant=variant, images=n, side=side,
            channels=channels, draws=draws, classes=dcb.NUM_CLASSES, batch_size=batch,
            evaluations=evaluations, forwards=forwards,
            evaluations_saved=n * draws * dcb.NUM_CLASSES / evaluations, threads=THREADS,
            loadavg=loadavg())
    assert errors.shape == (n, dcb.NUM_CLASSES)
    if variant == "batched adaptive auto":
        assert evaluations == dcb.expected_evaluations(n, clf.schedule, dcb.NUM_CLASSES)
        assert n * draws * dcb.NUM_CLASSES / evaluations >= 2
    else:
        assert evaluations == n * draws * dcb.NUM_CLASSES
