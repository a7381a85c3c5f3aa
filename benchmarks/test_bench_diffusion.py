"""pytest-benchmark: diffusion training-step and sampling throughput on the CPU, for the tiny
class-conditional `label_unet` and `tiny_unet` (UNet2DConditionModel), under diffusers'
`AttnProcessor2_0` and trustfast's `FastAttnProcessor` (workloads of `trustfast._bench.diffusion`:
batch 8 at 16 px, float32, DDIM with guidance 2 and 5 steps for sampling). extra_info carries
images per call, so images/s = images / mean time; `trustfast bench --ops diffusion` times the
processors interleaved and reports "fast / default" directly.

Target: FastAttnProcessor at >= 0.95x AttnProcessor2_0's images/s on the CPU (issue 18).
"""

from __future__ import annotations

import functools

import pytest
import torch

from trustfast._bench import diffusion as db
from trustfast._bench.timing import intra_op_threads, loadavg

pytest.importorskip("diffusers")
DEVICE = torch.device("cpu")
THREADS = 2
CASES = [(m, mode, p) for m in db.MODELS for mode in db.MODES for p in db.PROCESSORS]


@functools.lru_cache(maxsize=1)
def _setup(model_name: str):
    return db.build(model_name, DEVICE)


@pytest.mark.parametrize(("model_name", "mode", "processor"), CASES,
                         ids=[f"{m}-{mode}-{p}".replace(" ", "_") for m, mode, p in CASES])
def test_diffusion_throughput(benchmark, model_name, mode, processor):
    model, inputs = _setup(model_name)
    batch, side, steps = db.sizes(DEVICE, small=False)
    layers = db.install(model, processor)
    if mode == "train step":
        model.train()
        work = db.train_step(model, inputs, DEVICE)
    else:
        work = db.sampling(model, inputs, steps)
    with intra_op_threads(THREADS):
        work()  # warm-up
        benchmark.group = f"diffusion {model_name} {mode}"
        benchmark.extra_info.update(bench="diffusion", model=model_name, mode=mode,
                                    processor=processor, images=batch, side=side,
                                    attention_layers=layers, threads=THREADS,
                                    sampling_steps=steps if mode == "sampling" else None,
                                    loadavg=loadavg())
        benchmark.pedantic(work, rounds=3 if mode == "sampling" else 5, warmup_rounds=1)
    db.install(model, db.PROCESSORS[0])
