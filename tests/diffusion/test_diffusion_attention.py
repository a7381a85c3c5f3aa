"""trustfast.diffusion.attention: `FastAttnProcessor` is a drop-in for diffusers'
`AttnProcessor2_0` (tiny UNet, DDIM sampling, every option of a standalone `Attention` layer),
`enable_fast_attention` counts what it replaces and skips, and forward-mode AD through a UNet."""

import types

import pytest
import torch

from trustfast.diffusion import FastAttnProcessor, Replacement, enable_fast_attention

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import (  # noqa: E402
    Attention,
    AttnAddedKVProcessor,
    AttnProcessor2_0,
)

from trustfast.diffusion.tiny import ddim_sample, tiny_unet  # noqa: E402

ATOL = 1e-5  # float32: the two processors differ only in the attention's summation order

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _max_err(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def _unet_inputs(seed=0, dtype=torch.float32):
    g = _gen(seed)
    x = torch.randn(2, 4, 16, 16, generator=g, dtype=dtype)
    prompt = torch.randn(2, 77, 32, generator=g, dtype=dtype)
    return x, prompt


def test_tiny_unet_forward_and_grad_match_attn_processor_2_0(unet):
    x, prompt = _unet_inputs()
    mask = torch.ones(2, 77)
    mask[1, 40:] = 0  # padded prompt tokens; the UNet turns this into an additive -10000 bias

    def run():
        prompt_ = prompt.clone().requires_grad_()
        outs = [unet(x, 10, encoder_hidden_states=prompt_).sample,
                unet(x, 10, encoder_hidden_states=prompt_, encoder_attention_mask=mask).sample]
        return outs, torch.autograd.grad(sum((o ** 2).sum() for o in outs), prompt_)[0]

    unet.set_attn_processor(AttnProcessor2_0())
    (ref, ref_masked), ref_grad = run()
    result = enable_fast_attention(unet, block_size=16)
    assert result.replaced == 8 and result.skipped == {}, str(result)
    processors = list(unet.attn_processors.values())
    assert len(processors) == 8
    assert all(isinstance(p, FastAttnProcessor) and p.block_size == 16 for p in processors)
    (out, out_masked), grad = run()
    assert _max_err(out, ref) <= ATOL
    assert _max_err(out_masked, ref_masked) <= ATOL
    assert _max_err(ref, ref_masked) > 1e-3  # the mask changed something
    assert _max_err(grad, ref_grad) <= 1e-5 * ref_grad.abs().max().item()


def test_ddim_sample_matches_attn_processor_2_0(unet):
    _, prompt = _unet_inputs(seed=1)
    unet.set_attn_processor(AttnProcessor2_0())
    ref = ddim_sample(unet, prompt, steps=10, seed=3)
    enable_fast_attention(unet)
    out = ddim_sample(unet, prompt, steps=10, seed=3)
    assert out.shape == (2, 4, 16, 16)
    assert _max_err(out, ref) <= 1e-4
    assert not torch.equal(ref, ddim_sample(unet, prompt, steps=10, seed=4))  # seed matters


# Standalone diffusers Attention layers, one option each: (constructor kwargs, call kwargs maker)
def _seq(n, c, seed):
    return torch.randn(2, n, c, generator=_gen(seed))


def _cross(seed):
    return dict(encoder_hidden_states=_seq(77, 48, seed))


def _additive_mask(seed):  # diffusers' (B, Nk) mask; prepare_attention_mask repeats it per head
    mask = torch.zeros(2, 77)
    mask[0, 50:] = -10000.0
    mask[1, ::3] = -10000.0
    return _cross(seed) | dict(attention_mask=mask)


def _bool_mask(seed):
    mask = torch.rand(2, 1, 77, generator=_gen(seed + 1)) > 0.3
    mask[..., 0] = True
    return _cross(seed) | dict(attention_mask=mask)


def _self_mask(seed):
    mask = torch.zeros(2, 1, 50)
    mask[:, :, 45:] = -10000.0
    return dict(attention_mask=mask)


def _image(seed):  # (B, C, H, W) hidden states, as the VAE's attention block
    return dict(hidden_states=torch.randn(2, 64, 6, 7, generator=_gen(seed)))


def _spatial(seed):
    return _image(seed) | dict(temb=torch.randn(2, 4, 3, 3, generator=_gen(seed + 1)))


LAYERS = [
    pytest.param(dict(), lambda s: {}, id="self"),
    pytest.param(dict(cross_attention_dim=48), _cross, id="cross-77"),
    pytest.param(dict(cross_attention_dim=48), _additive_mask, id="cross-additive-mask"),
    pytest.param(dict(cross_attention_dim=48), _bool_mask, id="cross-bool-mask"),
    pytest.param(dict(), _self_mask, id="self-mask"),
    pytest.param(dict(norm_num_groups=8), lambda s: {}, id="group-norm"),
    pytest.param(dict(residual_connection=True, rescale_output_factor=2.0), lambda s: {},
                 id="residual-rescale"),
    pytest.param(dict(qk_norm="layer_norm", cross_attention_dim=48), _cross, id="qk-layer-norm"),
    pytest.param(dict(cross_attention_dim=48, cross_attention_norm="layer_norm"), _cross,
                 id="norm-cross"),
    pytest.param(dict(norm_num_groups=8, residual_connection=True), _image, id="4d-input"),
    pytest.param(dict(spatial_norm_dim=4, residual_connection=True), _spatial, id="spatial-norm"),
    pytest.param(dict(heads=3, dim_head=80, bias=True), lambda s: {}, id="3-heads-d80"),
]


@pytest.mark.parametrize("layer_kwargs,call_kwargs", LAYERS)
def test_attention_layer_matches_attn_processor_2_0(layer_kwargs, call_kwargs):
    torch.manual_seed(0)
    layer = Attention(query_dim=64, **(dict(heads=2, dim_head=40) | layer_kwargs)).eval()
    with torch.no_grad():  # a non-trivial residual path and norms
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=_gen(5)))
    kwargs = dict(hidden_states=_seq(50, 64, seed=1)) | call_kwargs(2)
    with torch.no_grad():
        layer.set_processor(AttnProcessor2_0())
        ref = layer(**kwargs)
        layer.set_processor(FastAttnProcessor(block_size=16))
        out = layer(**kwargs)
    assert out.shape == ref.shape == kwargs["hidden_states"].shape
    assert _max_err(out, ref) <= ATOL, _max_err(out, ref)
    assert ref.abs().max() > 0.1


class _TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.plain = Attention(query_dim=32, heads=2, dim_head=16)
        self.added_kv = Attention(query_dim=32, heads=2, dim_head=16, added_kv_proj_dim=24,
                                  processor=AttnAddedKVProcessor())
        self.other = torch.nn.Linear(3, 3)


def test_enable_fast_attention_skips_other_processors():
    model = _TwoLayers()
    result = enable_fast_attention(model)
    assert isinstance(result, Replacement)
    assert result.replaced == 1 and result.skipped == {"AttnAddedKVProcessor": 1}
    assert isinstance(model.plain.processor, FastAttnProcessor)
    assert isinstance(model.added_kv.processor, AttnAddedKVProcessor)
    assert "AttnAddedKVProcessor x1" in str(result)
    again = enable_fast_attention(model, block_size=8)  # idempotent; new settings take effect
    assert again.replaced == 1 and model.plain.processor.block_size == 8


def test_enable_fast_attention_takes_pipelines_and_rejects_other_objects():
    pipe = types.SimpleNamespace(components={"unet": _TwoLayers(), "text_encoder": _TwoLayers(),
                                             "scheduler": object(), "name": "tiny"})
    result = enable_fast_attention(pipe)
    assert result.replaced == 2 and result.skipped == {"AttnAddedKVProcessor": 2}
    assert isinstance(pipe.components["unet"].plain.processor, FastAttnProcessor)
    for bad in (object(), "unet", types.SimpleNamespace(components=[_TwoLayers()])):
        with pytest.raises(TypeError, match="enable_fast_attention takes"):
            enable_fast_attention(bad)


def test_unet_jvp_wrt_prompt_matches_finite_difference():
    """Forward-mode AD through every attention layer: SDPA's fused CPU/GPU kernels have no JVP."""
    unet = tiny_unet().double()
    x, prompt = _unet_inputs(seed=6, dtype=torch.float64)
    tangent = torch.randn(prompt.shape, generator=_gen(7), dtype=torch.float64)
    f = lambda p: unet(x, 10, encoder_hidden_states=p).sample
    assert enable_fast_attention(unet).replaced == 8
    out, t_out = torch.func.jvp(f, (prompt,), (tangent,))
    eps = 1e-6
    with torch.no_grad():
        fd = (f(prompt + eps * tangent) - f(prompt - eps * tangent)) / (2 * eps)
        assert _max_err(out, f(prompt)) == 0
    assert fd.norm() > 1e-3
    rel = ((t_out - fd).norm() / fd.norm()).item()
    assert rel < 1e-5, rel
