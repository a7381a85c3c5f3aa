"""pytest-benchmark: scoring a dataset for poisoned samples with SPC (SCALE-UP), trustfast's
`scaled_prediction_consistency` (the 11 scaled copies of a chunk of images in one forward pass)
vs `scaled_prediction_consistency_loop` (the way research code does it: one forward per scale),
same model, images, scales and batch_size, both timed in the same run. `benchmarks/report.py`
turns the JSON into images/s and the speed-up of trustfast over the loop.

Workload: 10,000 images 3x16x16 in [0, 1] (`colored_digits(size=16)` training images repeated),
scales 2..12, batch_size 256, `SmallCNN(in_channels=3, image_size=16)` with seeded random
weights (the time does not depend on what the model learned). Setup asserts that both variants
return identical scores. Both run at 1 intra-op thread (see THREADS); the file takes ~2 minutes.

Reading the figure on the CPU: both variants run forwards of about BATCH inputs (ours: a chunk of
BATCH // 12 images at scale 1 and the 11 scales; the loop: BATCH images at one scale), because
on the CPU a forward of 2,816 inputs (all scales of 256 images) was 1.4x slower per image than
one of 256: its ~90 MB of activations fall out of cache and are mmapped afresh by glibc. The conv
FLOPs are the same either way, so the CPU ratio is about 1; batching pays off where per-call
overhead dominates (a GPU, with a larger batch_size).
"""

from __future__ import annotations

import functools
import math
import os

import pytest
import torch

from trustfast._bench.timing import intra_op_threads, loadavg
from trustfast.backdoor import scaled_prediction_consistency, scaled_prediction_consistency_loop
from trustfast.backdoor.scores import DEFAULT_SCALES
from trustfast.data import colored_digits
from trustfast.models import SmallCNN

IMAGES, SIZE, BATCH = 10_000, 16, 256
SCALES = DEFAULT_SCALES  # 2..12, as SCALE-UP and MSPC
# As in test_bench_unlearn.py: on the 2-vCPU CI VM, 2 intra-op threads make every op wait for a
# descheduled worker whenever anything else runs; 1 thread gives stable, comparable rows.
THREADS = 1

OURS = "trustfast scaled_prediction_consistency (batched scales)"
PEER = "scaled_prediction_consistency_loop (one forward per scale)"
VARIANTS = {OURS: scaled_prediction_consistency, PEER: scaled_prediction_consistency_loop}




@functools.lru_cache(maxsize=1)
def _workload() -> dict:
    """Model and images, after checking that both variants give identical scores (this also
    warms both up)."""
    x = colored_digits(size=SIZE)[0].tensors[0]
    images = x.repeat(math.ceil(IMAGES / len(x)), 1, 1, 1)[:IMAGES].contiguous()
    torch.manual_seed(0)
    model = SmallCNN(in_channels=3, image_size=SIZE).eval()
    with intra_op_threads(THREADS):
        ours = scaled_prediction_consistency(model, images, SCALES, BATCH)
        peer = scaled_prediction_consistency_loop(model, images, SCALES, BATCH)
    assert torch.equal(ours, peer), (
        f"SPC batched and looped differ on {int((ours != peer).sum())} of {IMAGES} images")
    return dict(model=model, images=images, mean_spc=float(ours.mean()),
                params=sum(p.numel() for p in model.parameters()))


@pytest.mark.parametrize("variant", [OURS, PEER])
def test_backdoor_spc(benchmark, variant):
    wl = _workload()
    chunks = math.ceil(IMAGES / BATCH)
    ours_forwards = math.ceil(IMAGES / (BATCH // (1 + len(SCALES))))
    benchmark.group = f"backdoor SPC {IMAGES} images"
    benchmark.extra_info.update(
        bench="backdoor spc", variant=variant, images=IMAGES, scales=len(SCALES),
        batch_size=BATCH, forwards=ours_forwards if variant == OURS else chunks * (1 + len(SCALES)),
        setting=f"SmallCNN 3x{SIZE}x{SIZE}, {len(SCALES)} scales, batch {BATCH}",
        params=wl["params"], identical_to_peer=True, mean_spc=wl["mean_spc"], threads=THREADS,
        malloc_mmap_threshold=os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default"),
        loadavg=loadavg())
    with intra_op_threads(THREADS):
        # One call is 10-25 s on 1 thread; setup's agreement check already warmed both.
        benchmark.pedantic(VARIANTS[variant], args=(wl["model"], wl["images"], SCALES, BATCH),
                           rounds=3, warmup_rounds=0)
