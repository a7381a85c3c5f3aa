"""Diffusion models: trustfast attention for diffusers (`FastAttnProcessor`,
`enable_fast_attention`) and a tiny UNet sampler for tests and the demo
(`trustfast.diffusion.tiny`). diffusers is imported lazily, on first use."""

from trustfast.diffusion.attention import FastAttnProcessor, Replacement, enable_fast_attention

__all__ = ["FastAttnProcessor", "Replacement", "enable_fast_attention"]
