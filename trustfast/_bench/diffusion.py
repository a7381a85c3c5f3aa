"""Diffusion training and sampling throughput (images/s) under each attention processor.

Models: the class-conditional `label_unet(preset="tiny")` (pixels, one attention level of 2
heads of 32) and `tiny_unet` (`UNet2DConditionModel`, latents, self- and cross-attention, head
dims 40 and 80). Processors: diffusers' `AttnProcessor2_0` (SDPA) and trustfast's
`FastAttnProcessor` (`enable_fast_attention`). Modes:
  - "train step": one step of `train_diffusion`'s work on a fixed batch (add noise, forward,
    `diffusion_loss`, backward, gradient clipping, AdamW step); images/s = batch / time;
  - "sampling": `generate` with DDIM and classifier-free guidance 2 (two forwards per step);
    images/s = images / time of the whole call.
Sizes: CPU batch 8 at 16 px (label) / 16 x 16 latents with 8 tokens (tiny_unet), float32, 5
sampling steps; CUDA batch 64 at 32 px / 32 x 32 latents, bf16 autocast for the train step, 20
sampling steps. The processors alternate inside each repeat (a load spike on a shared machine
hits both); "fast / default" is FastAttnProcessor's images/s over AttnProcessor2_0's.

Registry interface: `checks` (key "diffusion_checks": FastAttnProcessor's UNet output equals
AttnProcessor2_0's, float32, relative L2 difference <= CHECK_RTOL) and `timings` (key
"diffusion_timings": `measure` per model).
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Callable

import torch

from trustfast._bench.registry import Section
from trustfast._bench.timing import loadavg, synchronize

MODELS = ("label_unet tiny", "tiny_unet")
PROCESSORS = ("AttnProcessor2_0", "FastAttnProcessor")
MODES = ("train step", "sampling")
CHECK_RTOL = 1e-4
# (batch, side, sampling steps) per device type; small=True takes the CPU sizes everywhere.
SIZES = {"cpu": (8, 16, 5), "cuda": (64, 32, 20)}
TOKENS = 8


def sizes(device: torch.device, small: bool) -> tuple[int, int, int]:
    return SIZES["cpu" if small or device.type != "cuda" else "cuda"]


def install(model, processor: str) -> int:
    """Put `processor` on every attention layer of `model`; returns the layers changed."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from trustfast.diffusion.attention import enable_fast_attention

    if processor == "FastAttnProcessor":
        return enable_fast_attention(model).replaced
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for m in layers:
        m.set_processor(AttnProcessor2_0())
    return len(layers)


def build(name: str, device: torch.device, *, small: bool = False, seed: int = 0):
    """(model, inputs) of one workload: inputs holds x0 in [-1, 1], the condition, noise,
    timesteps (all seeded) and the labels / embeddings `generate` takes."""
    from trustfast.diffusion.models import label_unet, token_unet

    batch, side, _ = sizes(device, small)
    gen = torch.Generator().manual_seed(seed)
    if name == "label_unet tiny":
        model = label_unet(4, sample_size=side, seed=seed)
        cond = torch.randint(0, 4, (batch,), generator=gen)
        channels = 3
    elif name == "tiny_unet":
        model = token_unet(sample_size=side, seed=seed)
        cond = torch.randn(batch, TOKENS, model.config.cross_attention_dim, generator=gen)
        channels = 4
    else:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    inputs = {"x0": torch.rand(batch, channels, side, side, generator=gen) * 2 - 1,
              "cond": cond, "noise": torch.randn(batch, channels, side, side, generator=gen),
              "t": torch.randint(0, 1000, (batch,), generator=gen)}
    return model.to(device), {k: v.to(device) for k, v in inputs.items()}


def train_step(model, inputs: dict, device: torch.device) -> Callable[[], object]:
    """One training step of `train_diffusion` on the fixed batch (float32 on the CPU, bf16
    autocast on CUDA), with a fresh AdamW over the model's parameters."""
    from trustfast.diffusion.train import diffusion_loss, noise_scheduler

    sched = noise_scheduler()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss, _ = diffusion_loss(model, sched, inputs["x0"], inputs["cond"], inputs["noise"],
                                     inputs["t"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def sampling(model, inputs: dict, steps: int) -> Callable[[], object]:
    """`generate` for the batch's conditions (DDIM, guidance 2)."""
    from trustfast.diffusion.sampling import generate

    token = type(model).__name__ == "UNet2DConditionModel"
    kwargs = ({"encoder_hidden_states": inputs["cond"]} if token
              else {"labels": inputs["cond"]})
    batch = len(inputs["cond"])
    return lambda: generate(model, steps=steps, guidance_scale=2.0, batch_size=batch,
                            progress=False, **kwargs)


def measure(device: torch.device | str, repeats: int, *, small: bool = False,
            models: tuple[str, ...] = MODELS, modes: tuple[str, ...] = MODES) -> list[dict]:
    """One row per (model, mode, processor): median and minimum ms, images/s (from the
    median), "trustfast speed-up" (the row's median over FastAttnProcessor's) and, on
    FastAttnProcessor's rows, "fast / default" (images/s ratio of the medians and of the
    minima)."""
    device = torch.device(device)
    batch, side, steps = sizes(device, small)
    rows = []
    for name in models:
        model, inputs = build(name, device, small=small)
        for mode in modes:
            if mode == "train step":
                model.train()
                work = train_step(model, inputs, device)
            elif mode == "sampling":
                work = sampling(model, inputs, steps)
            else:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            samples: dict[str, list[float]] = {p: [] for p in PROCESSORS}
            layers = {}
            for p in PROCESSORS:  # warm-up: first-call allocations, kernel selection
                layers[p] = install(model, p)
                work()
            for _ in range(repeats):
                for p in PROCESSORS:
                    install(model, p)
                    synchronize(device)
                    start = time.perf_counter()
                    work()
                    synchronize(device)
                    samples[p].append(time.perf_counter() - start)
            ms = {p: 1e3 * statistics.median(s) for p, s in samples.items()}
            low = {p: 1e3 * min(s) for p, s in samples.items()}
            for p in PROCESSORS:
                row = {"model": name, "workload": f"{name} batch {batch} {side} px",
                       "mode": mode, "variant": p, "processor": p, "batch": batch,
                       "side": side, "attention layers": layers[p], "ms": ms[p],
                       "min ms": low[p], "images/s": batch / ms[p] * 1e3,
                       "repeats": repeats, "threads": torch.get_num_threads(),
                       "loadavg": loadavg()}
                if mode == "sampling":
                    row["sampling steps"] = steps
                # the registry's column: this row's time over trustfast's processor's
                row["trustfast speed-up"] = ms[p] / ms["FastAttnProcessor"]
                if p == "FastAttnProcessor":
                    row["fast / default"] = ms[PROCESSORS[0]] / ms[p]
                    row["fast / default (min)"] = low[PROCESSORS[0]] / low[p]
                rows.append(row)
        install(model, PROCESSORS[0])
    return rows


def check(name: str, device: torch.device | str, *, small: bool = False,
          rtol: float = CHECK_RTOL) -> dict:
    """FastAttnProcessor's forward of the model equals AttnProcessor2_0's (float32, TF32 off):
    relative L2 difference of the predicted noise <= rtol."""
    device = torch.device(device)
    from trustfast.diffusion.train import predict

    model, inputs = build(name, device, small=small)
    model.eval()
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out = {}
            for p in PROCESSORS:
                install(model, p)
                out[p] = predict(model, inputs["noise"], inputs["t"], inputs["cond"]).double()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    ref, got = out[PROCESSORS[0]], out[PROCESSORS[1]]
    diff = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
    return {"case": f"diffusion {name}: FastAttnProcessor vs AttnProcessor2_0", "model": name,
            "dtype": "float32", "rel_diff": diff, "rtol": rtol,
            "passed": bool(math.isfinite(diff) and diff <= rtol)}


def _no_diffusers() -> str | None:
    return None if importlib.util.find_spec("diffusers") is not None \
        else "diffusers is not installed"


def checks(device: torch.device, *, small: bool, backend: str = "triton") -> list[Section]:
    """`check` per model; `backend` is unused (the processor picks trustfast's attention
    backend by device)."""
    device = torch.device(device)
    return [Section("diffusion_checks", f"check diffusion {m}",
                    lambda m=m: check(m, device, small=small),
                    {"case": f"diffusion {m}", "model": m}, skip=_no_diffusers())
            for m in MODELS]


def timings(device: torch.device, repeats: int, *, small: bool, backend: str | None = None,
            ceilings: dict | None = None) -> list[Section]:
    """`measure` per model (at most 5 repeats: a sampling call is seconds on the CPU)."""
    device = torch.device(device)
    return [Section("diffusion_timings", f"diffusion timing {m}",
                    lambda m=m: measure(device, max(1, min(repeats, 5)), small=small,
                                        models=(m,)),
                    {"bench": "diffusion", "model": m}, skip=_no_diffusers())
            for m in MODELS]
