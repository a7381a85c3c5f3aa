"""trustfast.ops.attention on the CPU (the chunked torch path): forward, backward and JVP against
the float64 reference and torch SDPA on odd shapes, the float32 / bfloat16 precision rule, higher
derivatives through a transformer block, O(N) memory, validation and dispatch."""

import math

import pytest
import torch
from conftest import assert_close
from torch.nn import functional as fn
from torch.nn.attention import SDPBackend, sdpa_kernel

from trustfast._bench import judge
from trustfast.ops import BackendUnavailableError, select_backend
from trustfast.ops.attention import attention, attention_reference
from trustfast.utils import peak_tensor_bytes

DT = torch.float64
RTOL64 = 1e-12  # float64, chunked vs one-shot softmax: differ only by summation order

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qkv(b, h, n_q, n_k, d, seed=0, dtype=DT):
    g = _gen(seed)
    return tuple(torch.randn(b, h, n, d, generator=g, dtype=DT).to(dtype)
                 for n in (n_q, n_k, n_k))


def _close64(actual, expected, name):
    """float64: RTOL64 relative to the largest element of the expected tensor."""
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    assert_close(actual, expected, atol=RTOL64 * scale, rtol=RTOL64, name=name)


def _sdpa_math(q, k, v, **kw):
    with sdpa_kernel(SDPBackend.MATH):
        return fn.scaled_dot_product_attention(q, k, v, **kw)


# (B, H, Nq, Nk, D, block_size): self and cross attention, blocks that divide N and that do not.
SHAPES = [
    pytest.param(2, 2, 1, 1, 40, 16, id="n1-self-d40"),
    pytest.param(2, 3, 77, 77, 64, 16, id="n77-self-d64-b16"),
    pytest.param(1, 2, 129, 129, 80, 128, id="n129-self-d80-b128"),
    pytest.param(1, 2, 129, 129, 160, 1, id="n129-self-d160-b1"),
    pytest.param(1, 1, 1000, 1000, 40, 128, id="n1000-self-d40-b128"),
    pytest.param(1, 1, 1000, 1000, 40, 8, id="n1000-self-d40-b8"),
    pytest.param(2, 2, 129, 77, 80, 16, id="cross-129x77-d80"),
    pytest.param(1, 2, 1000, 77, 160, 128, id="cross-1000x77-d160"),
    pytest.param(2, 2, 77, 1, 64, 16, id="cross-77x1-d64"),
    pytest.param(2, 1, 1, 77, 160, 128, id="cross-1x77-d160"),
    pytest.param(1, 2, 129, 1, 40, 1, id="cross-129x1-d40-b1"),
]


@pytest.mark.parametrize("b,h,n_q,n_k,d,block", SHAPES)
def test_forward_backward_jvp_match_reference(b, h, n_q, n_k, d, block):
    q, k, v = _qkv(b, h, n_q, n_k, d)
    fast = lambda q, k, v: attention(q, k, v, block_size=block)
    _close64(fast(q, k, v), attention_reference(q, k, v), "out")

    g = _gen(1)
    do = torch.randn(b, h, n_q, d, generator=g, dtype=DT)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(fast(*ins), ins, do)
    ref_grads = torch.autograd.grad(attention_reference(*ins), ins, do)
    for name, a, e in zip(("dq", "dk", "dv"), grads, ref_grads):
        _close64(a, e, name)

    tq, tk, tv = (torch.randn(t.shape, generator=g, dtype=DT) for t in (q, k, v))
    out, t_out = torch.func.jvp(fast, (q, k, v), (tq, tk, tv))
    _, t_ref = torch.func.jvp(attention_reference, (q, k, v), (tq, tk, tv))
    _close64(out, attention_reference(q, k, v), "jvp primal")
    _close64(t_out, t_ref, "jvp tangent (q, k, v)")
    # tangents on one input only: the jvp rule gets None for the others
    _, t_out = torch.func.jvp(lambda q: fast(q, k, v), (q,), (tq,))
    _, t_ref = torch.func.jvp(lambda q: attention_reference(q, k, v), (q,), (tq,))
    _close64(t_out, t_ref, "jvp tangent (q only)")
    _, t_out = torch.func.jvp(lambda v: fast(q, k, v), (v,), (tv,))
    _close64(t_out, fast(q, k, tv), "jvp tangent (v only) = attention(q, k, tv)")


@pytest.mark.parametrize("n_q,n_k,block", [(1, 1, 16), (77, 77, 16), (77, 129, 128), (1, 129, 16),
                                           (129, 1000, 128), (33, 33, 1)])
def test_causal_matches_sdpa(n_q, n_k, block):
    q, k, v = _qkv(2, 2, n_q, n_k, 40, seed=3)
    fast = lambda q, k, v: attention(q, k, v, is_causal=True, block_size=block)
    sdpa = lambda q, k, v: _sdpa_math(q, k, v, is_causal=True)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out, ref = fast(*ins), sdpa(*ins)
    _close64(out, ref, "out")
    do = torch.randn(out.shape, generator=_gen(4), dtype=DT)
    for name, a, e in zip(("dq", "dk", "dv"), torch.autograd.grad(out, ins, do),
                          torch.autograd.grad(ref, ins, do)):
        _close64(a, e, name)
    tangents = tuple(torch.randn(t.shape, generator=_gen(5), dtype=DT) for t in (q, k, v))
    _, t_out = torch.func.jvp(fast, (q, k, v), tangents)
    _, t_ref = torch.func.jvp(
        lambda q, k, v: attention_reference(q, k, v, is_causal=True), (q, k, v), tangents)
    _close64(t_out, t_ref, "jvp tangent")
    if n_q > 1 and n_k == n_q:  # the first query sees only the first key
        _close64(out[..., 0, :], v[..., 0, :], "row 0 = v[0]")


def _mask(kind, shape, seed):
    g = _gen(seed)
    if kind == "bool":
        m = torch.rand(shape, generator=g) > 0.4
        m[..., 0] = True  # no row fully masked (that case has its own test)
        return m
    blocked = torch.rand(shape, generator=g) > 0.7
    return torch.randn(shape, generator=g, dtype=DT) * 3.0 - blocked * 1e4


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("mask_shape", ["b11k", "1hqk"])
@pytest.mark.parametrize("n_q,n_k,causal", [(77, 77, False), (129, 77, False), (77, 129, True)])
def test_masks_match_sdpa_and_reference(kind, mask_shape, n_q, n_k, causal):
    b, h, d = 2, 2, 64
    q, k, v = _qkv(b, h, n_q, n_k, d, seed=6)
    shape = (b, 1, 1, n_k) if mask_shape == "b11k" else (1, h, n_q, n_k)
    m = _mask(kind, shape, seed=7)
    fast = lambda q, k, v: attention(q, k, v, attn_mask=m, is_causal=causal, block_size=16)
    ref = lambda q, k, v: attention_reference(q, k, v, attn_mask=m, is_causal=causal)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fast(*ins)
    if not causal:  # SDPA refuses attn_mask together with is_causal
        _close64(out, _sdpa_math(q, k, v, attn_mask=m), "out vs SDPA")
    _close64(out, ref(*ins), "out vs reference")
    do = torch.randn(out.shape, generator=_gen(8), dtype=DT)
    for name, a, e in zip(("dq", "dk", "dv"), torch.autograd.grad(out, ins, do),
                          torch.autograd.grad(ref(*ins), ins, do)):
        _close64(a, e, name)
    tangents = tuple(torch.randn(t.shape, generator=_gen(9), dtype=DT) for t in (q, k, v))
    _close64(torch.func.jvp(fast, (q, k, v), tangents)[1],
             torch.func.jvp(ref, (q, k, v), tangents)[1], "jvp tangent")


def test_fully_masked_rows_give_zeros_like_sdpa():
    """A query whose keys are all masked: SDPA (torch >= 2.5) returns zeros and zero gradients."""
    q, k, v = _qkv(1, 2, 9, 5, 40, seed=10)
    m = torch.rand(1, 2, 9, 5, generator=_gen(11)) > 0.3
    m[..., 0] = True
    m[:, 1, 4, :] = False
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*ins, attn_mask=m, block_size=4)
    ref = _sdpa_math(*ins, attn_mask=m)
    assert torch.equal(out[:, 1, 4], torch.zeros_like(out[:, 1, 4]))
    _close64(out, ref, "out")
    _close64(attention_reference(*ins, attn_mask=m), ref, "reference out")
    for name, a, e in zip(("dq", "dk", "dv"), torch.autograd.grad(out.sum(), ins),
                          torch.autograd.grad(ref.sum(), ins)):
        _close64(a, e, name)
    tangents = tuple(torch.ones_like(t) for t in (q, k, v))
    t_out = torch.func.jvp(lambda q, k, v: attention(q, k, v, attn_mask=m), (q, k, v),
                           tangents)[1]
    assert not t_out.isnan().any() and torch.equal(t_out[:, 1, 4], torch.zeros_like(t_out[:, 1, 4]))


@pytest.mark.parametrize("n_q,n_k", [(0, 5), (5, 0)])
def test_empty_sequences_match_sdpa(n_q, n_k):
    q, k, v = _qkv(1, 2, n_q, n_k, 40)
    out = attention(q, k, v)
    assert out.shape == (1, 2, n_q, 40)
    _close64(out, _sdpa_math(q, k, v), "out")


def test_scale_argument_and_non_contiguous_inputs():
    q, k, v = _qkv(2, 5, 77, 33, 40, seed=12)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not q.is_contiguous()
    _close64(attention(q, k, v, scale=0.3, block_size=16), _sdpa_math(q, k, v, scale=0.3), "out")


# ---- precision rule: error vs float64 <= 2 x the error of PyTorch's math attention -------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,h,n_q,n_k,d,masked", [(2, 2, 77, 77, 64, False),
                                                  (1, 2, 129, 77, 80, True),
                                                  (1, 1, 1000, 1000, 40, False),
                                                  (1, 2, 33, 1, 160, False)])
def test_precision_within_twice_torch_math(dtype, b, h, n_q, n_k, d, masked):
    q, k, v = _qkv(b, h, n_q, n_k, d, seed=13, dtype=dtype)
    do = torch.randn(b, h, n_q, d, generator=_gen(14)).to(dtype)
    m = _mask("float", (b, 1, 1, n_k), seed=15).to(dtype) if masked else None
    ins64 = [t.double().requires_grad_() for t in (q, k, v)]
    m64 = None if m is None else m.double()
    ref = attention_reference(*ins64, attn_mask=m64)
    ref_grads = torch.autograd.grad(ref, ins64, do.double())

    def errors(f):
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        out = f(*ins)
        assert out.dtype == dtype
        grads = torch.autograd.grad(out, ins, do)
        return [judge.relative_l2_error(a, e) for a, e in zip((out, *grads), (ref, *ref_grads))]

    ours = errors(lambda q, k, v: attention(q, k, v, attn_mask=m, block_size=16))
    torch_math = errors(lambda q, k, v: _sdpa_math(q, k, v, attn_mask=m))
    floor = torch.finfo(dtype).eps / 16  # both can be exact (Nk = 1: dq = dk = 0)
    for name, e, base in zip(("out", "dq", "dk", "dv"), ours, torch_math):
        assert judge.within(e, base, slack=floor), (f"{dtype} {name}: error {e:.3e} vs torch "
                                                    f"math {base:.3e}")


# ---- higher derivatives through a transformer block (float64) ----------------------------------

C, HEADS, HEAD_DIM = 80, 2, 40


def _block_params(seed=20):
    g = _gen(seed)
    w = lambda *s: torch.randn(*s, generator=g, dtype=DT) / math.sqrt(s[0])
    small = lambda n: 0.1 * torch.randn(n, generator=g, dtype=DT)
    return (1 + small(C), small(C), w(C, C), w(C, C), w(C, C), w(C, C), w(C, 2 * C),
            small(2 * C), w(2 * C, C))


def _block(params, x, attn):
    """LayerNorm -> q/k/v -> attention (2 heads, D=40) -> out proj -> residual -> MLP residual."""
    ln_w, ln_b, wq, wk, wv, wo, w1, b1, w2 = params
    b, n, _ = x.shape
    h = fn.layer_norm(x, (C,), ln_w, ln_b)
    split = lambda t: t.view(b, n, HEADS, HEAD_DIM).transpose(1, 2)
    a = attn(split(h @ wq), split(h @ wk), split(h @ wv))
    x = x + a.transpose(1, 2).reshape(b, n, C) @ wo
    return x + fn.gelu(fn.layer_norm(x, (C,)) @ w1 + b1) @ w2


FAST = lambda q, k, v: attention(q, k, v, block_size=4)
CAUSAL_FAST = lambda q, k, v: attention(q, k, v, is_causal=True, block_size=4)
CAUSAL_REF = lambda q, k, v: attention_reference(q, k, v, is_causal=True)


def _loss(params, x, attn):
    return (_block(params, x, attn).sin() ** 2).sum()


@pytest.mark.parametrize("fast,ref", [(FAST, attention_reference), (CAUSAL_FAST, CAUSAL_REF)],
                         ids=["full", "causal"])
def test_block_jvp_and_hvps_match_reference(fast, ref):
    params = _block_params()
    g = _gen(21)
    x = torch.randn(2, 11, C, generator=g, dtype=DT)
    tangent = tuple(torch.randn(p.shape, generator=g, dtype=DT) for p in params)

    # forward mode through the block
    out, t_out = torch.func.jvp(lambda p: _block(p, x, fast), (params,), (tangent,))
    out_r, t_ref = torch.func.jvp(lambda p: _block(p, x, ref), (params,), (tangent,))
    _close64(out, out_r, "block out")
    _close64(t_out, t_ref, "block jvp")

    # forward-over-reverse HVP
    grad_f, hvp_f = torch.func.jvp(torch.func.grad(lambda p: _loss(p, x, fast)), (params,),
                                   (tangent,))
    grad_r, hvp_r = torch.func.jvp(torch.func.grad(lambda p: _loss(p, x, ref)), (params,),
                                   (tangent,))
    for i, (a, e) in enumerate(zip(grad_f, grad_r)):
        _close64(a, e, f"grad[{i}]")
    for i, (a, e) in enumerate(zip(hvp_f, hvp_r)):
        _close64(a, e, f"fwd-over-rev hvp[{i}]")
    assert any(h.abs().max() > 1e-3 for h in hvp_r)

    # reverse-over-reverse HVP
    ps = [p.clone().requires_grad_() for p in params]
    grads = torch.autograd.grad(_loss(ps, x, fast), ps, create_graph=True)
    dot = sum((gr * t).sum() for gr, t in zip(grads, tangent))
    for i, (a, e) in enumerate(zip(torch.autograd.grad(dot, ps), hvp_r)):
        _close64(a, e, f"rev-over-rev hvp[{i}]")


def test_block_jacfwd_jacrev_and_vmap():
    params = _block_params(seed=22)
    x = torch.randn(1, 3, C, generator=_gen(23), dtype=DT)
    jac = torch.func.jacfwd(lambda x: _block(params, x, FAST))(x)
    jac_ref = torch.func.jacfwd(lambda x: _block(params, x, attention_reference))(x)
    assert jac.shape == (1, 3, C, 1, 3, C)
    _close64(jac, jac_ref, "jacfwd")
    _close64(torch.func.jacrev(lambda x: _block(params, x, FAST))(x), jac_ref, "jacrev")
    # vmap over an extra leading dim
    q, k, v = (t.unsqueeze(0).expand(3, -1, -1, -1, -1) * torch.arange(1., 4., dtype=DT).view(
        3, 1, 1, 1, 1) for t in _qkv(2, 2, 13, 7, 40, seed=24))
    _close64(torch.func.vmap(FAST)(q, k, v), attention_reference(q.flatten(0, 1), k.flatten(0, 1),
                                                                 v.flatten(0, 1)).view(q.shape),
             "vmap")


# ---- memory: O(N) for the chunked path, O(N^2) for the reference -------------------------------

def _peaks(n):
    """Peak bytes of (forward + backward, JVP, reference forward) at B=1, H=2, N=n, D=64, fp32."""
    q, k, v = (t.float() for t in _qkv(1, 2, n, n, 64, seed=25))
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    return (
        peak_tensor_bytes(lambda: torch.autograd.grad(attention(*ins), ins, torch.ones_like(q))),
        peak_tensor_bytes(lambda: torch.func.jvp(attention, (q, k, v), (q, k, v))),
        peak_tensor_bytes(lambda: attention_reference(q, k, v)),
    )


def test_memory_grows_linearly():
    peaks = {n: _peaks(n) for n in (1024, 2048, 4096)}
    fwd_bwd, jvp, reference = (peaks[4096][i] / peaks[1024][i] for i in range(3))
    assert all(peaks[2048][i] / peaks[1024][i] <= 2.75 for i in range(2)), peaks
    assert fwd_bwd <= 5.5, f"forward + backward peak grew {fwd_bwd:.1f}x for 4x N"
    assert jvp <= 5.5, f"JVP peak grew {jvp:.1f}x for 4x N"
    assert reference >= 12, f"reference peak grew {reference:.1f}x for 4x N (expected ~16)"
    scores_4096 = 2 * 4096 * 4096 * 4  # one fp32 (H, N, N) score matrix
    assert peaks[4096][0] < scores_4096 / 2


def test_peak_tensor_bytes_counts_new_storage_only():
    x = torch.randn(1000, 1000)
    assert peak_tensor_bytes(lambda: x.t().sum()) < 100  # a view of an input allocates nothing
    assert peak_tensor_bytes(lambda: x.mul_(1.0)) == 0
    assert peak_tensor_bytes(lambda: (x + 1).t().contiguous()) == 2 * x.numel() * 4


# ---- validation and dispatch -------------------------------------------------------------------

def _t(*shape, dtype=torch.float32, **kw):
    return torch.zeros(*shape, dtype=dtype, **kw)


Q = _t(2, 2, 5, 8)
VALIDATION = [
    pytest.param(dict(q=_t(2, 5, 8)), ValueError, "q must be 4-D", id="q-3d"),
    pytest.param(dict(k=_t(2, 2, 5, 8, dtype=torch.float64)), TypeError, "share a dtype",
                 id="dtype-mismatch"),
    pytest.param(dict(q=_t(2, 2, 5, 8, dtype=torch.int64)), TypeError, "q must be float",
                 id="int-q"),
    pytest.param(dict(k=_t(1, 2, 5, 8), v=_t(1, 2, 5, 8)), ValueError, "q's B, H", id="batch"),
    pytest.param(dict(k=_t(2, 3, 5, 8), v=_t(2, 3, 5, 8)), ValueError, "q's B, H", id="heads"),
    pytest.param(dict(v=_t(2, 2, 6, 8)), ValueError, "k and v", id="v-length"),
    pytest.param(dict(k=_t(2, 2, 5, 16), v=_t(2, 2, 5, 16)), ValueError, "head dim D",
                 id="head-dim-mismatch"),
    pytest.param(dict(q=_t(1, 1, 3, 257), k=_t(1, 1, 3, 257), v=_t(1, 1, 3, 257)), ValueError,
                 "head dim must be in 1..256", id="head-dim-257"),
    pytest.param(dict(scale=float("nan")), TypeError, "scale", id="scale-nan"),
    pytest.param(dict(attn_mask=_t(2, 2, 5, 4)), ValueError, "attn_mask of shape",
                 id="mask-broadcast"),
    pytest.param(dict(attn_mask=_t(3, 1, 1, 5)), ValueError, "attn_mask of shape",
                 id="mask-batch"),
    pytest.param(dict(attn_mask=_t(1, 1, 5, 5, dtype=torch.int64)), TypeError,
                 "attn_mask must be bool", id="mask-int"),
    pytest.param(dict(attn_mask=_t(1, 1, 5, 5, requires_grad=True)), ValueError,
                 "attn_mask must not require grad", id="mask-requires-grad"),
    pytest.param(dict(attn_mask=[[True]]), TypeError, "attn_mask must be a tensor",
                 id="mask-list"),
    pytest.param(dict(q=_t(2, 2, 6, 8), is_causal=True), ValueError, "is_causal needs Nq <= Nk",
                 id="causal-nq-gt-nk"),
    pytest.param(dict(is_causal=1), TypeError, "is_causal must be a bool", id="causal-int"),
    pytest.param(dict(block_size=0), ValueError, "block_size", id="block-0"),
    pytest.param(dict(block_size=2.0), ValueError, "block_size", id="block-float"),
    pytest.param(dict(backend="cpp"), BackendUnavailableError, "'cpp' is not implemented",
                 id="backend-cpp"),
    pytest.param(dict(backend="cuda"), ValueError, "backend must be one of", id="backend-name"),
    pytest.param(dict(backend="triton", attn_mask=torch.ones(1, 1, 5, 5, dtype=torch.bool)),
                 BackendUnavailableError, "attention", id="triton-with-mask"),
    pytest.param(dict(backend="triton", q=_t(2, 2, 5, 8, dtype=DT), k=_t(2, 2, 5, 8, dtype=DT),
                      v=_t(2, 2, 5, 8, dtype=DT)), BackendUnavailableError, "attention",
                 id="triton-float64"),
]


@pytest.mark.parametrize("overrides,error,match", VALIDATION)
def test_validation_names_the_argument(overrides, error, match):
    kwargs = dict(q=Q, k=Q, v=Q) | overrides
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(error, match=match):
        attention(q, k, v, **kwargs)


def test_cpu_dispatch_is_the_torch_path(monkeypatch):
    assert select_backend("attention", torch.device("cpu")) == "torch"
    q, k, v = _qkv(1, 2, 9, 9, 8)
    auto = attention(q, k, v, block_size=4)
    assert torch.equal(auto, attention(q, k, v, block_size=4, backend="torch"))
    monkeypatch.setenv("TRUSTFAST_BACKEND", "cpp")
    with pytest.raises(BackendUnavailableError, match="not implemented"):
        attention(q, k, v)
    monkeypatch.setenv("TRUSTFAST_BACKEND", "torch")
    assert torch.equal(attention(q, k, v, block_size=4), auto)


# ---------------------------------------------------------------------- issue 17: NaN inputs


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_nan_or_inf_input_is_refused_naming_it(name):
    g = torch.Generator().manual_seed(0)
    args = {n: torch.randn(1, 2, 5, 8, generator=g) for n in ("q", "k", "v")}
    args[name][0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        attention(args["q"], args["k"], args["v"])
    args[name][0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        attention(args["q"], args["k"], args["v"])
    out = attention(args["q"], args["k"], args["v"], validate=False)  # hot loops: unchecked
    assert out.shape == (1, 2, 5, 8)


def test_additive_mask_may_hold_minus_inf_but_not_nan():
    q = torch.randn(1, 1, 4, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(4, 4)
    mask[0, 1] = -float("inf")
    assert torch.isfinite(attention(q, q, q, attn_mask=mask)).all()
    mask[0, 2] = float("nan")
    with pytest.raises(ValueError, match="attn_mask must not hold NaN"):
        attention(q, q, q, attn_mask=mask)


def test_value_check_stays_out_of_torch_func_transforms():
    """Under vmap / jvp the values cannot be read: the check is skipped, results unchanged."""
    g = torch.Generator().manual_seed(2)
    q, t = torch.randn(3, 1, 1, 4, 8, generator=g), torch.randn(1, 1, 4, 8, generator=g)
    out = torch.func.vmap(lambda x: attention(x, x, x))(q)
    torch.testing.assert_close(out[1], attention(q[1], q[1], q[1]))
    _, tangent = torch.func.jvp(lambda x: attention(x, x, x), (q[0],), (t,))
    assert torch.isfinite(tangent).all()


def test_value_check_is_not_traced_by_torch_compile():
    q = torch.randn(1, 2, 5, 8, generator=torch.Generator().manual_seed(3))
    compiled = torch.compile(lambda x: attention(x, x, x), backend="eager")
    torch.testing.assert_close(compiled(q), attention(q, q, q))
