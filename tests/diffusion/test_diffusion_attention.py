"""trustfast.diffusion.attention: `FastAttnProcessor` is a drop-in for diffusers'
`AttnProcessor2_0` (tiny UNet, DDIM sampling, every option of a standalone `Attention` layer, a
VAE with a 512-dim head, a mask that requires grad), `enable_fast_attention` counts what it
replaces and skips, `disable_fast_attention` gives diffusers its processors back, and forward-mode
AD and double backward through a UNet."""

import types

import pytest
import torch

from trustfast.diffusion import FastAttnProcessor, Replacement, enable_fast_attention
from trustfast.diffusion.attention import disable_fast_attention

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import (  # noqa: E402
    Attention,
    AttnAddedKVProcessor,
    AttnProcessor,
    AttnProcessor2_0,
)
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

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


def test_unet_double_backward_matches_sdpa_math():
    """Reverse-over-reverse (an HVP wrt the prompt) through every attention layer: SDPA's fused CPU
    kernel has no double backward, so the oracle is AttnProcessor2_0 under SDPA's math backend."""
    unet = tiny_unet()
    x, prompt = _unet_inputs(seed=8)
    tangent = torch.randn(prompt.shape, generator=_gen(9))

    def hvp():
        p = prompt.clone().requires_grad_()
        (g,) = torch.autograd.grad(unet(x, 10, encoder_hidden_states=p).sample.square().mean(), p,
                                   create_graph=True)
        return torch.autograd.grad((g * tangent).sum(), p)[0]

    unet.set_attn_processor(AttnProcessor2_0())
    with sdpa_kernel(SDPBackend.MATH):
        ref = hvp()
    enable_fast_attention(unet)
    out = hvp()
    assert ref.abs().max() > 1e-6
    assert _max_err(out, ref) <= 1e-4 * ref.abs().max().item()


def _vae():
    """A Stable-Diffusion-like VAE from a config (random weights): one 512-channel block, so each
    mid-block attention has one head of dim 512, as the SD VAE's."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), block_out_channels=(512,),
                         layers_per_block=1, latent_channels=4, norm_num_groups=32,
                         sample_size=8).eval()


def test_vae_with_a_512_dim_head_decodes_as_attn_processor_2_0():
    vae = _vae()
    heads = [(m.heads, m.inner_dim // m.heads) for m in vae.modules() if isinstance(m, Attention)]
    assert heads == [(1, 512), (1, 512)]
    z = torch.randn(2, 4, 8, 8, generator=_gen(10))
    image = torch.rand(1, 3, 8, 8, generator=_gen(11))
    with torch.no_grad():
        ref = vae.decode(z).sample
        ref_latent = vae.encode(image).latent_dist.mean
        assert enable_fast_attention(vae).replaced == 2
        out = vae.decode(z).sample
        latent = vae.encode(image).latent_dist.mean
    assert out.shape == (2, 3, 8, 8)
    assert _max_err(out, ref) <= ATOL and _max_err(latent, ref_latent) <= ATOL
    assert ref.abs().max() > 0.1
    # and with a tape: the 512-dim head's backward through the torch blocks (forced) and fused
    for backend in ("torch", None):
        enable_fast_attention(vae, backend=backend, block_size=16)
        zz = z.clone().requires_grad_()
        (g,) = torch.autograd.grad(vae.decode(zz).sample.square().sum(), zz)
        vae.set_attn_processor(AttnProcessor2_0())
        zr = z.clone().requires_grad_()
        (g_ref,) = torch.autograd.grad(vae.decode(zr).sample.square().sum(), zr)
        assert _max_err(g, g_ref) <= 1e-4 * g_ref.abs().max().item(), backend


def test_disable_fast_attention_gives_diffusers_its_processors_back(unet):
    """diffusers' set_default_attn_processor accepts only its own processor classes: it raises
    after enable_fast_attention, and works again after disable_fast_attention, which restores the
    very processors that were replaced."""
    unet.set_attn_processor(AttnProcessor2_0())
    before = dict(unet.attn_processors)
    enable_fast_attention(unet)
    enable_fast_attention(unet, block_size=8)  # a second call keeps the first record
    with pytest.raises(ValueError, match="set_default_attn_processor"):
        unet.set_default_attn_processor()
    assert disable_fast_attention(unet) == 8
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert disable_fast_attention(unet) == 0  # nothing left to restore
    unet.set_default_attn_processor()
    assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
    # processors that were AttnProcessor come back as AttnProcessor
    enable_fast_attention(unet)
    disable_fast_attention(unet)
    assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
    unet.set_attn_processor(AttnProcessor2_0())


def test_disable_fast_attention_on_hand_installed_processors_and_pipelines():
    model = _TwoLayers()
    model.plain.set_processor(FastAttnProcessor())  # installed by hand: nothing recorded
    assert model.plain.processor.replaced is None
    assert disable_fast_attention(model) == 1
    assert type(model.plain.processor) is AttnProcessor2_0
    assert isinstance(model.added_kv.processor, AttnAddedKVProcessor)  # never touched
    pipe = types.SimpleNamespace(components={"unet": _TwoLayers(), "vae": _TwoLayers()})
    originals = [c.plain.processor for c in pipe.components.values()]
    assert enable_fast_attention(pipe).replaced == 2
    assert disable_fast_attention(pipe) == 2
    assert [c.plain.processor for c in pipe.components.values()] == originals
    with pytest.raises(TypeError, match="disable_fast_attention takes"):
        disable_fast_attention("unet")


@pytest.mark.parametrize("mask_kind", ["additive", "log-probability"])
def test_mask_that_requires_grad_matches_attn_processor_2_0(mask_kind):
    """AttnProcessor2_0 hands a mask that requires grad to SDPA, which differentiates through it;
    FastAttnProcessor gives the same gradient (dL/dmask = dS, the scores' gradient)."""
    torch.manual_seed(0)
    layer = Attention(query_dim=64, heads=2, dim_head=40, cross_attention_dim=48).eval()
    hidden, context = _seq(50, 64, seed=12), _seq(77, 48, seed=13)
    raw = 0.1 + 0.9 * torch.rand(2, 77, generator=_gen(14), dtype=torch.float32)

    def grads(processor):
        layer.set_processor(processor)
        m = raw.clone().requires_grad_()
        # a learnable soft mask: an additive bias, or the log of a keep probability
        bias = -3.0 * m if mask_kind == "additive" else m.log()
        h = hidden.clone().requires_grad_()
        out = layer(h, encoder_hidden_states=context, attention_mask=bias)
        return out, torch.autograd.grad(out.sin().sum(), (m, h))

    ref, (dm_ref, dh_ref) = grads(AttnProcessor2_0())
    out, (dm, dh) = grads(FastAttnProcessor(block_size=16))
    assert _max_err(out, ref) <= ATOL
    assert dm_ref.abs().max() > 1e-4
    assert _max_err(dm, dm_ref) <= 1e-4 * dm_ref.abs().max().item()
    assert _max_err(dh, dh_ref) <= 1e-4 * dh_ref.abs().max().item()
