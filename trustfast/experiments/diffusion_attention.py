"""`trustfast diffusion-attention`: trustfast's attention processor in a diffusers UNet.

A conditional UNet (the built-in tiny one, random weights, head dims 40 and 80, or a local
diffusers UNet folder) sampled with DDIM under diffusers' AttnProcessor2_0 and under
`FastAttnProcessor`: the same latents, the time each takes, and whether a forward-mode JVP
through the UNet works (SDPA's fused CPU kernel has no forward-mode derivative).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from trustfast.experiments.registry import Experiment, ExperimentConfig, Flag, Result, register
from trustfast.utils import resolve_device

PROCESSORS = ("AttnProcessor2_0", "FastAttnProcessor")


@dataclass
class DiffusionAttentionConfig(ExperimentConfig):
    model: str = "tiny"  # "tiny" (built in) or a local diffusers UNet2DConditionModel folder
    steps: int = 10  # DDIM steps
    batch: int = 2
    prompt_tokens: int = 77

    def check(self) -> None:
        super().check()
        for key in ("steps", "batch", "prompt_tokens"):
            self.at_least(key, 1)
        # checked here, not by from_pretrained: a name that is no folder would be looked up
        # on the Hub (no network at run time)
        self.require(self.model == "tiny" or os.path.isdir(self.model), "model",
                     "'tiny' or an existing local diffusers UNet2DConditionModel folder")


def _unet(cfg: DiffusionAttentionConfig):
    from trustfast.config import ConfigError
    from trustfast.diffusion.tiny import tiny_unet

    if cfg.model == "tiny":
        return tiny_unet(seed=cfg.seed)
    from diffusers import UNet2DConditionModel

    try:
        return UNet2DConditionModel.from_pretrained(cfg.model, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise ConfigError("model", f"must be 'tiny' or a local diffusers UNet2DConditionModel "
                                   f"folder, got {cfg.model!r}: {exc}") from None


def run(cfg: DiffusionAttentionConfig, out: str, resume: bool = False) -> Result:
    from diffusers.models.attention_processor import AttnProcessor2_0

    from trustfast.diffusion import enable_fast_attention
    from trustfast.diffusion.tiny import ddim_sample

    device = resolve_device(cfg.device)
    unet = _unet(cfg).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.randn(cfg.batch, cfg.prompt_tokens, unet.config.cross_attention_dim,
                         generator=gen).to(device)
    size = unet.config.sample_size
    x = torch.randn(cfg.batch, unet.config.in_channels, size, size,
                    generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)
    timings, latents, jvp, replaced = {}, {}, {}, {}
    for name in PROCESSORS:
        if name == "AttnProcessor2_0":
            unet.set_attn_processor(AttnProcessor2_0())
            replaced[name] = None
        else:
            replaced[name] = enable_fast_attention(unet).replaced
        ddim_sample(unet, prompt, steps=1, seed=cfg.seed)  # warm-up
        start = time.perf_counter()
        latents[name] = ddim_sample(unet, prompt, steps=cfg.steps, seed=cfg.seed)
        timings[name] = time.perf_counter() - start
        try:
            torch.func.jvp(lambda e: unet(x, 500, encoder_hidden_states=e).sample,
                           (prompt,), (torch.ones_like(prompt),))
            jvp[name] = "ok"
        except (NotImplementedError, RuntimeError) as exc:
            jvp[name] = f"fails: {type(exc).__name__}"
    diff = float((latents["AttnProcessor2_0"] - latents["FastAttnProcessor"]).abs().max())
    rows = [{"stage": f"{name}, {cfg.steps} DDIM steps", "layers_replaced": replaced[name],
             "seconds": timings[name],
             "max_abs_diff_vs_default": 0.0 if name == "AttnProcessor2_0" else diff,
             "jvp_through_unet": jvp[name]} for name in PROCESSORS]
    return Result({}, rows)


register(Experiment(
    name="diffusion-attention", config_cls=DiffusionAttentionConfig, run=run,
    help="DDIM sampling of a conditional UNet with diffusers' AttnProcessor2_0 vs trustfast's "
         "FastAttnProcessor: same latents, time, JVP through the UNet",
    flags=(Flag("--model", "model", "tiny or a local diffusers UNet folder"),
           Flag("--steps", "steps", "DDIM steps")),
))
