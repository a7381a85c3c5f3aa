"""trustfast attention inside diffusers models.

`FastAttnProcessor` is a drop-in for diffusers' `AttnProcessor2_0`: the same steps (spatial norm,
group norm, q/k/v projections, norm_q / norm_k, cross-attention norm, mask preparation, output
projection, residual, rescale) in the same order, with the attention call replaced by
`trustfast.ops.attention` (O(N) memory, forward-mode AD, any head dim). Like `AttnProcessor2_0`
it uses the default scale 1/sqrt(head_dim), takes any head dim (the Stable Diffusion VAE's
mid-block has one head of 512) and an `attention_mask` that requires grad (it gets one, as under
SDPA). `enable_fast_attention(model_or_pipeline)` installs it on every attention layer that runs
`AttnProcessor` or `AttnProcessor2_0`, each new processor remembering the one it replaced;
`disable_fast_attention(model_or_pipeline)` puts those back, after which diffusers' own
`set_default_attn_processor()` (which accepts only its own processor classes) works again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trustfast.ops.attention import attention

REPLACEABLE = ("AttnProcessor", "AttnProcessor2_0")


class FastAttnProcessor:
    """diffusers attention processor running `trustfast.ops.attention`.

    `replaced` is the processor `enable_fast_attention` took out of the layer (None when the
    processor was installed by hand): `disable_fast_attention` puts it back.
    """

    def __init__(self, block_size: int | None = None, backend: str | None = None,
                 replaced: object | None = None):
        self.block_size, self.backend, self.replaced = block_size, backend, replaced

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length,
                                                         batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1,
                                                 attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # The UNet's own projections: no per-call finiteness check (a host sync on CUDA), as
        # diffusers' processors have none; NaN still propagates to the output.
        hidden_states = attention(query, key, value, attn_mask=attention_mask,
                                  block_size=self.block_size, backend=self.backend,
                                  validate=False)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1,
                                                              attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height,
                                                                    width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@dataclass
class Replacement:
    """What `enable_fast_attention` did: layers replaced, and layers left with their processor."""

    replaced: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # processor class -> layers

    def __str__(self) -> str:
        left = ", ".join(f"{n} x{c}" for n, c in self.skipped.items()) or "none"
        return f"replaced {self.replaced} attention processors (left as they were: {left})"


def _modules(model_or_pipeline, caller: str = "enable_fast_attention") -> list[nn.Module]:
    if isinstance(model_or_pipeline, nn.Module):
        return [model_or_pipeline]
    components = getattr(model_or_pipeline, "components", None)
    if isinstance(components, dict):
        return [c for c in components.values() if isinstance(c, nn.Module)]
    raise TypeError(f"{caller} takes a diffusers model (nn.Module) or pipeline, got "
                    f"{type(model_or_pipeline).__name__}")


def _attention_layers(model_or_pipeline, caller: str):
    from diffusers.models.attention_processor import Attention

    for root in _modules(model_or_pipeline, caller):
        for module in root.modules():
            if isinstance(module, Attention):
                yield module


def enable_fast_attention(model_or_pipeline, block_size: int | None = None,
                          backend: str | None = None) -> Replacement:
    """Install `FastAttnProcessor` on every diffusers attention layer running `AttnProcessor` or
    `AttnProcessor2_0` (others, e.g. added-KV or IP-adapter processors, are left and counted).
    Each new processor records the one it replaced (`disable_fast_attention` restores it); run
    again, it takes the new settings and keeps the first record."""
    result = Replacement()
    for module in _attention_layers(model_or_pipeline, "enable_fast_attention"):
        current = module.processor
        name = type(current).__name__
        if isinstance(current, FastAttnProcessor):
            module.set_processor(FastAttnProcessor(block_size, backend, current.replaced))
            result.replaced += 1
        elif name in REPLACEABLE:
            module.set_processor(FastAttnProcessor(block_size, backend, current))
            result.replaced += 1
        else:
            result.skipped[name] = result.skipped.get(name, 0) + 1
    return result


def disable_fast_attention(model_or_pipeline) -> int:
    """Put back, on every attention layer running `FastAttnProcessor`, the processor that
    `enable_fast_attention` replaced there (diffusers' `AttnProcessor2_0` where it was installed
    by hand), so diffusers' class checks (`set_default_attn_processor`, ...) accept the model
    again. Returns the number of layers restored."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    restored = 0
    for module in _attention_layers(model_or_pipeline, "disable_fast_attention"):
        if isinstance(module.processor, FastAttnProcessor):
            previous = module.processor.replaced
            module.set_processor(AttnProcessor2_0() if previous is None else previous)
            restored += 1
    return restored
