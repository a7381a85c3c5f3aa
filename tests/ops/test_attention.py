"""trustfast.ops.attention on the CPU, both backends (the fused CPU flash kernel "sdpa", the
default, and the chunked torch path): forward, backward and JVP against the float64 reference and
torch SDPA on odd shapes, head dims above 256, mask gradients, the float32 / bfloat16 precision
rule, higher derivatives through a transformer block, O(N) memory, validation and dispatch."""

import math

import pytest
import torch
from conftest import assert_close
from torch.nn import functional as fn
from torch.nn.attention import SDPBackend, sdpa_kernel

from trustfast._bench import judge
from trustfast.ops import BackendUnavailableError, _dispatch, resolve_backend, select_backend
from trustfast.ops.attention import attention, attention_reference
from trustfast.utils import peak_tensor_bytes

DT = torch.float64
RTOL64 = 1e-12  # float64, chunked vs one-shot softmax: differ only by summation order
CPU_BACKENDS = ["sdpa", "torch"]

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


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("b,h,n_q,n_k,d,block", SHAPES + [
    pytest.param(1, 2, 33, 33, 257, 16, id="n33-self-d257"),
    pytest.param(1, 1, 64, 64, 512, 16, id="n64-self-d512-sd-vae"),
    pytest.param(2, 1, 17, 5, 700, 8, id="cross-17x5-d700")])
def test_forward_backward_jvp_match_reference(b, h, n_q, n_k, d, block, backend):
    q, k, v = _qkv(b, h, n_q, n_k, d)
    fast = lambda q, k, v: attention(q, k, v, block_size=block, backend=backend)
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


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n_q,n_k,block", [(1, 1, 16), (77, 77, 16), (77, 129, 128), (1, 129, 16),
                                           (129, 1000, 128), (33, 33, 1)])
def test_causal_matches_sdpa(n_q, n_k, block, backend):
    q, k, v = _qkv(2, 2, n_q, n_k, 40, seed=3)
    fast = lambda q, k, v: attention(q, k, v, is_causal=True, block_size=block, backend=backend)
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


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("mask_shape", ["b11k", "1hqk", "qk"])
@pytest.mark.parametrize("n_q,n_k,causal", [(77, 77, False), (129, 77, False), (77, 129, True)])
def test_masks_match_sdpa_and_reference(kind, mask_shape, n_q, n_k, causal, backend):
    b, h, d = 2, 2, 64
    q, k, v = _qkv(b, h, n_q, n_k, d, seed=6)
    shape = {"b11k": (b, 1, 1, n_k), "1hqk": (1, h, n_q, n_k), "qk": (n_q, n_k)}[mask_shape]
    m = _mask(kind, shape, seed=7)
    fast = lambda q, k, v: attention(q, k, v, attn_mask=m, is_causal=causal, block_size=16,
                                     backend=backend)
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


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fully_masked_rows_give_zeros_like_sdpa(backend):
    """A query whose keys are all masked: SDPA (torch >= 2.5) returns zeros and zero gradients."""
    q, k, v = _qkv(1, 2, 9, 5, 40, seed=10)
    m = torch.rand(1, 2, 9, 5, generator=_gen(11)) > 0.3
    m[..., 0] = True
    m[:, 1, 4, :] = False
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*ins, attn_mask=m, block_size=4, backend=backend)
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


@pytest.mark.parametrize("n_q,n_k", [(0, 5), (5, 0), (0, 0)])
def test_empty_sequences_match_sdpa(n_q, n_k):
    """The fused CPU kernel dies (SIGFPE) on an empty sequence: auto mode runs the torch path,
    a forced "sdpa" raises instead of crashing the process."""
    q, k, v = _qkv(1, 2, n_q, n_k, 40)
    out = attention(q, k, v)
    assert out.shape == (1, 2, n_q, 40)
    _close64(out, _sdpa_math(q, k, v), "out")
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(attention(*ins).sum(), ins, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
    with pytest.raises(BackendUnavailableError, match="Nq >= 1 and Nk >= 1"):
        attention(q, k, v, backend="sdpa")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_scale_argument_and_non_contiguous_inputs(backend):
    q, k, v = _qkv(2, 5, 77, 33, 40, seed=12)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not q.is_contiguous()
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*ins, scale=0.3, block_size=16, backend=backend)
    ref = _sdpa_math(*ins, scale=0.3)
    _close64(out, ref, "out")
    do = torch.randn(out.shape, generator=_gen(13), dtype=DT).transpose(-1, -2).contiguous()
    do = do.transpose(-1, -2)  # a non-contiguous output gradient too
    for name, a, e in zip(("dq", "dk", "dv"), torch.autograd.grad(out, ins, do),
                          torch.autograd.grad(ref, ins, do)):
        _close64(a, e, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_default_is_sdpas_own_cpu_kernel(dtype, masked):
    """On the CPU the default backend runs the kernel SDPA itself picks there (its fused flash
    kernel): output and first-order gradients bit for bit those of SDPA."""
    q, k, v = _qkv(2, 3, 33, 47, 40, seed=30, dtype=dtype)
    m = _mask("float", (2, 1, 1, 47), seed=31).to(dtype) if masked else None
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*ins, attn_mask=m)
    ref = fn.scaled_dot_product_attention(*ref_ins, attn_mask=m)
    assert torch.equal(out, ref)
    do = torch.randn(out.shape, generator=_gen(32)).to(dtype)
    for a, e in zip(torch.autograd.grad(out, ins, do), torch.autograd.grad(ref, ref_ins, do)):
        assert torch.equal(a, e)


# ---- precision rule: error vs float64 <= 2 x the error of PyTorch's math attention -------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,h,n_q,n_k,d,masked", [(2, 2, 77, 77, 64, False),
                                                  (1, 2, 129, 77, 80, True),
                                                  (1, 1, 1000, 1000, 40, False),
                                                  (1, 2, 33, 1, 160, False),
                                                  (1, 1, 64, 64, 512, False)])
def test_precision_within_twice_torch_math(dtype, b, h, n_q, n_k, d, masked, backend):
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

    ours = errors(lambda q, k, v: attention(q, k, v, attn_mask=m, block_size=16,
                                            backend=backend))
    torch_math = errors(lambda q, k, v: _sdpa_math(q, k, v, attn_mask=m))
    floor = torch.finfo(dtype).eps / 16
    for name, e, base, r in zip(("out", "dq", "dk", "dv"), ours, torch_math, (ref, *ref_grads)):
        # An exactly zero reference (Nk = 1: dq = dk = 0, which math attention also gets
        # exactly): the absolute error, judged against the gradients that do flow (||do||).
        slack = 4 * torch.finfo(dtype).eps * do.double().norm().item() if not r.any() else floor
        assert judge.within(e, base, slack=slack), (f"{dtype} {name}: error {e:.3e} vs torch "
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
    pytest.param(dict(q=_t(1, 1, 3, 0), k=_t(1, 1, 3, 0), v=_t(1, 1, 3, 0)), ValueError,
                 "head dim must be >= 1", id="head-dim-0"),
    pytest.param(dict(scale=float("nan")), TypeError, "scale", id="scale-nan"),
    pytest.param(dict(attn_mask=_t(2, 2, 5, 4)), ValueError, "attn_mask of shape",
                 id="mask-broadcast"),
    pytest.param(dict(attn_mask=_t(3, 1, 1, 5)), ValueError, "attn_mask of shape",
                 id="mask-batch"),
    pytest.param(dict(attn_mask=_t(1, 1, 5, 5, dtype=torch.int64)), TypeError,
                 "attn_mask must be bool", id="mask-int"),
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
    pytest.param(dict(backend="sdpa", q=_t(2, 2, 5, 8, device="meta"),
                      k=_t(2, 2, 5, 8, device="meta"), v=_t(2, 2, 5, 8, device="meta")),
                 BackendUnavailableError, "runs on CPU tensors", id="sdpa-meta-device"),
    pytest.param(dict(backend="sdpa", k=_t(2, 2, 0, 8), v=_t(2, 2, 0, 8)),
                 BackendUnavailableError, "Nq >= 1 and Nk >= 1", id="sdpa-no-keys"),
]


@pytest.mark.parametrize("overrides,error,match", VALIDATION)
def test_validation_names_the_argument(overrides, error, match):
    kwargs = dict(q=Q, k=Q, v=Q) | overrides
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(error, match=match):
        attention(q, k, v, **kwargs)


def test_cpu_dispatch_is_the_fused_kernel_and_torch_on_demand(monkeypatch):
    assert select_backend("attention", torch.device("cpu")) == "sdpa"
    q, k, v = _qkv(1, 2, 9, 9, 8)
    auto = attention(q, k, v, block_size=4)
    assert torch.equal(auto, attention(q, k, v, backend="sdpa"))
    blocks = attention(q, k, v, block_size=4, backend="torch")
    _close64(blocks, auto, "torch path vs fused")
    monkeypatch.setenv("TRUSTFAST_BACKEND", "cpp")
    with pytest.raises(BackendUnavailableError, match="not implemented"):
        attention(q, k, v)
    monkeypatch.setenv("TRUSTFAST_BACKEND", "torch")
    assert torch.equal(attention(q, k, v, block_size=4), blocks)
    monkeypatch.setenv("TRUSTFAST_BACKEND", "sdpa")
    assert torch.equal(attention(q, k, v, block_size=4), auto)
    with pytest.raises(BackendUnavailableError, match="'sdpa'.*Nk=0"):
        attention(q, k[..., :0, :], v[..., :0, :])


def test_head_dims_above_256_route_around_triton():
    """Triton's tiles stop at D = 256: auto mode sends larger heads to the torch path on CUDA
    (decided from the facts: no GPU needed), a forced Triton raises; the CPU keeps its kernel."""
    cuda = dict(device=torch.device("cuda"), dtype=torch.float16, has_mask=False, n_queries=64,
                n_keys=64)
    assert resolve_backend("attention", **cuda, head_dim=512) == "torch"
    assert resolve_backend("attention", device="cpu", dtype=torch.float32, has_mask=False,
                           n_queries=64, n_keys=64, head_dim=512) == "sdpa"
    if _dispatch.triton_available():
        assert resolve_backend("attention", **cuda, head_dim=256) == "triton"
        with pytest.raises(BackendUnavailableError, match="head dim 1..256, got 512"):
            resolve_backend("attention", "triton", **cuda, head_dim=512)


# ---- a float mask that requires grad gets dL/dmask = dS (as under SDPA) ------------------------

MASK_GRAD_SHAPES = [(2, 2, 9, 13), (2, 1, 1, 13), (1, 2, 9, 1), (9, 13), (13,), ()]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", MASK_GRAD_SHAPES, ids=lambda s: "x".join(map(str, s)) or "0d")
@pytest.mark.parametrize("causal", [False, True])
def test_mask_gradient_matches_autograd_of_reference_and_sdpa(shape, causal, backend):
    q, k, v = _qkv(2, 2, 9, 13, 40, seed=40)
    m = _mask("float", shape, seed=41) if shape else torch.tensor(0.7, dtype=DT)
    if len(shape) == 4 and shape[2] > 1:
        m[0, 0, 3, :] = -math.inf  # a fully masked row: no gradient flows through it
    m = m.clone().requires_grad_()
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*ins, attn_mask=m, is_causal=causal, block_size=4, backend=backend)
    ref = attention_reference(*ins, attn_mask=m, is_causal=causal)
    _close64(out, ref, "out")
    do = torch.randn(out.shape, generator=_gen(42), dtype=DT)
    grads = torch.autograd.grad(out, [*ins, m], do)
    ref_grads = torch.autograd.grad(ref, [*ins, m], do)
    assert grads[3].shape == m.shape
    if not shape or shape[-1] == 1:  # one value per row: softmax is shift-invariant, dmask = 0
        assert grads[3].abs().max() < 1e-12
    else:
        assert grads[3].abs().max() > 1e-3
    for name, a, e in zip(("dq", "dk", "dv", "dmask"), grads, ref_grads):
        _close64(a, e, name)
    if not causal and m.isfinite().all():  # SDPA: no is_causal with a mask; -inf gives NaN grads
        sdpa_grads = torch.autograd.grad(_sdpa_math(*ins, attn_mask=m), [*ins, m], do)
        _close64(grads[3], sdpa_grads[3], "dmask vs SDPA")


def test_mask_gradient_second_order_and_jvp():
    """dmask is differentiable (double backward through it) and a mask tangent enters the JVP."""
    q, k, v = _qkv(1, 2, 7, 11, 16, seed=43)
    m = _mask("float", (1, 2, 7, 11), seed=44)
    tm = torch.randn(m.shape, generator=_gen(45), dtype=DT)

    def second(f):
        mm, qq = m.clone().requires_grad_(), q.clone().requires_grad_()
        g = torch.autograd.grad((f(qq, k, v, attn_mask=mm) ** 2).sum(), mm, create_graph=True)[0]
        return torch.autograd.grad((g.sin() * tm).sum(), (mm, qq))

    fast = lambda *a, **kw: attention(*a, block_size=3, **kw)
    for name, a, e in zip(("d2/dmask2", "d2/dmask dq"), second(fast),
                          second(attention_reference)):
        assert e.abs().max() > 1e-3
        assert_close(a, e, atol=1e-10, rtol=1e-10, name=name)
    f = lambda mm: fast(q, k, v, attn_mask=mm)
    _close64(torch.func.jvp(f, (m,), (tm,))[1],
             torch.func.jvp(lambda mm: attention_reference(q, k, v, attn_mask=mm), (m,), (tm,))[1],
             "jvp tangent (mask)")


def test_bool_mask_and_constant_float_mask_need_no_gradient():
    q, k, v = _qkv(1, 2, 7, 11, 16, seed=46)
    for m in (_mask("bool", (1, 1, 7, 11), seed=47), _mask("float", (1, 1, 7, 11), seed=47)):
        qq = q.clone().requires_grad_()
        (dq,) = torch.autograd.grad(attention(qq, k, v, attn_mask=m).sum(), qq)
        (ref,) = torch.autograd.grad(attention_reference(qq, k, v, attn_mask=m).sum(), qq)
        _close64(dq, ref, f"dq ({m.dtype} mask)")


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


def test_value_check_accepts_finite_values_whose_sum_overflows():
    """The check sums each input first (a NaN or inf makes the sum non-finite); a sum that
    overflows on finite values goes to the exact check, which lets them through."""
    big = torch.full((1, 1, 4, 8), 3e38)
    assert torch.isinf(big.sum())
    small = torch.randn(1, 1, 4, 8, generator=torch.Generator().manual_seed(4)) * 1e-3
    assert attention(small, small, big).shape == (1, 1, 4, 8)
    half = torch.full((1, 1, 4, 8), 6e4, dtype=torch.float16)  # an fp16 sum overflows at 65504
    assert attention(half * 0, half * 0, half).shape == (1, 1, 4, 8)
    with pytest.raises(ValueError, match="v must be finite"):
        attention(small, small, torch.cat([big[..., :1, :] * 10, big[..., 1:, :]], dim=-2))
