"""A tiny conditional UNet (random weights, built from a config: nothing downloaded) and a DDIM
sampler, for tests, the demo and benchmarks. Its attention layers have head dims 40 and 80, the
Stable Diffusion sizes that most fused kernels pad up to 64 / 128."""

from __future__ import annotations

import torch


def tiny_unet(seed: int = 0, sample_size: int = 16, cross_attention_dim: int = 32):
    """diffusers `UNet2DConditionModel`: blocks of 80 and 160 channels, 2 heads (head dims 40 and
    80), self- and cross-attention in each transformer block."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(80, 160), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=2, norm_num_groups=16).eval()


@torch.no_grad()
def ddim_sample(unet, prompt_embeds: torch.Tensor, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """Latents after `steps` DDIM steps (eta 0) from seeded noise, conditioned on prompt_embeds
    (B, tokens, cross_attention_dim)."""
    from diffusers import DDIMScheduler

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012, clip_sample=False)
    scheduler.set_timesteps(steps)
    size = unet.config.sample_size
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(prompt_embeds.shape[0], unet.config.in_channels, size, size,
                          generator=gen).to(prompt_embeds)
    for t in scheduler.timesteps:
        eps = unet(latents, t, encoder_hidden_states=prompt_embeds).sample
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents
