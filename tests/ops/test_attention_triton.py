"""T1 for the Triton flash-attention kernels (kernels/attention.py) under TRITON_INTERPRET=1:
forward, backward and JVP against a float64 explicit-softmax reference and its autograd / jvp.

Tolerance (STYLE.md): the kernel's max error against float64 is at most twice that of torch's own
math attention, softmax((q @ k^T) * scale) @ v, run in the same precision, with a floor
(1e-6 fp32, 1e-3 fp16) where the baseline happens to be exact. float32 and float16 only: bfloat16
is broken in the interpreter and is checked by benchmarks/gpu_suite.py --check on a GPU.
"""

import pytest
import torch
from conftest import mismatch_report

from trustfast._bench import judge
from trustfast.ops import triton_available

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not triton_available(), reason="triton not installed"),
]

if triton_available():
    from trustfast.kernels.attention import attention_backward, attention_forward, attention_jvp

DTYPES = [torch.float32, torch.float16]
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3}

# (B, H, Nq, Nk, D, causal, layout, scale factor on 1/sqrt(D)). The interpreter runs 16 x 16
# tiles at ~2 ms a program: the largest case launches 5 row blocks x 2 heads, each over 5 key tiles.
# Layouts: "bhnd" contiguous, "bnhd" a transpose(1, 2) of (B, N, H, D) as diffusers reshapes,
# "bhdn" a transpose of (B, H, D, N) (head-dim stride != 1).
CASES = [
    pytest.param(1, 2, 17, 23, 40, False, "bnhd", 1.0, id="cross-17x23-d40-bnhd"),
    pytest.param(2, 1, 77, 77, 80, True, "bhnd", 1.0, id="self-77-d80-causal"),
    pytest.param(1, 2, 1, 1, 64, False, "bhnd", 1.0, id="self-1-d64"),
    pytest.param(1, 2, 1, 77, 40, False, "bnhd", 1.0, id="cross-1x77-d40-bnhd"),
    pytest.param(2, 1, 77, 1, 64, False, "bhdn", 1.0, id="cross-77x1-d64-bhdn"),
    pytest.param(1, 2, 17, 77, 80, True, "bnhd", 1.0, id="cross-17x77-d80-causal-bnhd"),
    pytest.param(2, 1, 23, 23, 64, False, "bhnd", 3.0, id="self-23-d64-peaky"),
    pytest.param(1, 2, 77, 23, 40, False, "bhnd", 1.0, id="cross-77x23-d40"),
    pytest.param(1, 1, 17, 23, 160, True, "bhdn", 1.0, id="cross-17x23-d160-causal-bhdn"),
]
CASE_ARGS = "b,h,n_q,n_k,d,causal,layout,scale_factor"


def _make(shape, dtype, layout, gen):
    """A random (B, H, N, D) tensor of `dtype` in the given memory layout."""
    b, h, n, d = shape
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if layout == "bnhd":
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "bhdn":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x


def _inputs(b, h, n_q, n_k, d, dtype, layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = _make((b, h, n_q, d), dtype, layout, gen)
    k = _make((b, h, n_k, d), dtype, layout, gen)
    v = _make((b, h, n_k, d), dtype, layout, gen)
    return q, k, v


def _math_attention(q, k, v, scale, causal):
    """softmax(scale q k^T [masked j > i, top-left as torch SDPA]) v in the inputs' precision."""
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        n_q, n_k = s.shape[-2:]
        above = torch.ones(n_q, n_k, dtype=torch.bool).triu(1)
        s = s.masked_fill(above, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def _scores_logsumexp(q, k, scale, causal):
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    return torch.logsumexp(s, dim=-1)


def _assert_within_baseline(name, actual, baseline, exact, dtype, magnitude=None):
    """Kernel error <= max(2 x the same-precision torch baseline's error, floor x magnitude).

    magnitude (default max |exact|, at least 1) scales the floor for a baseline that is exact by
    construction: with Nk = 1, dk is 0 and torch's softmax backward gets exactly 0, while
    FlashAttention's dS = P (do v^T - rowsum(do * o)) cancels two equal fp32 sums of size |do||v|.
    """
    base_err = judge.max_abs_error(baseline, exact)
    if magnitude is None:
        magnitude = exact.abs().max().item()
    bound = judge.bound(base_err, floor=FLOOR[dtype] * max(1.0, magnitude))
    msg = mismatch_report(actual, exact, atol=bound, rtol=0.0)
    assert not msg, f"{name} (bound {bound:.3g}, baseline error {base_err:.3g}): {msg}"


def _scale(d, factor):
    return factor / d**0.5


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(CASE_ARGS, CASES)
def test_forward(b, h, n_q, n_k, d, causal, layout, scale_factor, dtype):
    q, k, v = _inputs(b, h, n_q, n_k, d, dtype, layout)
    scale = _scale(d, scale_factor)
    o, lse = attention_forward(q, k, v, scale, causal)
    assert o.shape == q.shape and o.dtype == dtype and o.is_contiguous()
    assert lse.shape == (b, h, n_q) and lse.dtype == torch.float32
    exact = _math_attention(q.double(), k.double(), v.double(), scale, causal)
    baseline = _math_attention(q, k, v, scale, causal)
    _assert_within_baseline("o", o, baseline, exact, dtype)
    lse_exact = _scores_logsumexp(q.double(), k.double(), scale, causal)
    # lse is float32 whatever the input dtype: baseline is the fp32 logsumexp
    lse_base = _scores_logsumexp(q.float(), k.float(), scale, causal)
    _assert_within_baseline("lse", lse, lse_base, lse_exact, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(CASE_ARGS, CASES)
def test_backward(b, h, n_q, n_k, d, causal, layout, scale_factor, dtype):
    q, k, v = _inputs(b, h, n_q, n_k, d, dtype, layout)
    do = _make(q.shape, dtype, layout, torch.Generator().manual_seed(1))
    scale = _scale(d, scale_factor)
    o, lse = attention_forward(q, k, v, scale, causal)
    grads = attention_backward(q, k, v, o, lse, do, scale, causal)

    def autograd(dt):
        prim = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        return torch.autograd.grad(_math_attention(*prim, scale, causal), prim, do.to(dt))

    exact = autograd(torch.float64)
    magnitude = max(g.abs().max().item() for g in exact)
    for name, got, base, want, like in zip(("dq", "dk", "dv"), grads, autograd(dtype), exact,
                                           (q, k, v)):
        assert got.shape == like.shape and got.dtype == dtype
        _assert_within_baseline(name, got, base, want, dtype, magnitude)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(CASE_ARGS, CASES)
def test_jvp(b, h, n_q, n_k, d, causal, layout, scale_factor, dtype):
    q, k, v = _inputs(b, h, n_q, n_k, d, dtype, layout)
    tq, tk, tv = _inputs(b, h, n_q, n_k, d, dtype, layout, seed=2)
    scale = _scale(d, scale_factor)
    o, lse, to = attention_jvp(q, k, v, tq, tk, tv, scale, causal)
    assert to.shape == q.shape and to.dtype == dtype

    def jvp(dt):
        return torch.func.jvp(lambda *p: _math_attention(*p, scale, causal),
                              tuple(t.to(dt) for t in (q, k, v)),
                              tuple(t.to(dt) for t in (tq, tk, tv)))

    (o_base, to_base), (o_exact, to_exact) = jvp(dtype), jvp(torch.float64)
    _assert_within_baseline("o", o, o_base, o_exact, dtype)
    _assert_within_baseline("to", to, to_base, to_exact, dtype)
    lse_exact = _scores_logsumexp(q.double(), k.double(), scale, causal)
    lse_base = _scores_logsumexp(q.float(), k.float(), scale, causal)
    _assert_within_baseline("lse", lse, lse_base, lse_exact, torch.float32)


@pytest.mark.parametrize("n_q,n_k", [(17, 23), (23, 17)])
def test_causal_is_top_left_like_sdpa(n_q, n_k):
    """causal=True masks j > i whatever Nq and Nk, as F.scaled_dot_product_attention(is_causal)."""
    q, k, v = _inputs(1, 1, n_q, n_k, 40, torch.float32, "bhnd", seed=3)
    o, _ = attention_forward(q, k, v, 40**-0.5, True)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), is_causal=True)
    msg = mismatch_report(o, sdpa, atol=1e-6, rtol=0.0)
    assert not msg, msg


def test_backward_is_deterministic():
    q, k, v = _inputs(1, 2, 23, 23, 40, torch.float32, "bhnd")
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(4))
    o, lse = attention_forward(q, k, v, 0.2, True)
    first = attention_backward(q, k, v, o, lse, do, 0.2, True)
    second = attention_backward(q, k, v, o, lse, do, 0.2, True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_empty_batch():
    q = torch.randn(0, 2, 5, 40)
    o, lse = attention_forward(q, q, q, 1.0, False)
    assert o.shape == (0, 2, 5, 40) and lse.shape == (0, 2, 5)
    dq, dk, dv = attention_backward(q, q, q, o, lse, o, 1.0, False)
    assert dq.shape == dk.shape == dv.shape == q.shape


@pytest.mark.parametrize("shape,dtype,match", [
    ((1, 1, 4, 257), torch.float32, "head dim"),
    ((1, 1, 4, 8), torch.float64, "unsupported dtype"),
])
def test_launcher_rejects(shape, dtype, match):
    q = torch.zeros(shape, dtype=dtype)
    with pytest.raises((ValueError, TypeError), match=match):
        attention_forward(q, q, q, 1.0, False)


def test_op_dispatches_every_derivative_to_the_kernels():
    """`trustfast.ops.attention(backend="triton")`: forward, backward, torch.func.jvp (through
    torch.func's wrappers), forward-over-reverse and double backward (the differentiable block
    backward) all match the float64 reference."""
    from trustfast.ops.attention import attention, attention_reference

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 40, generator=gen) for n in (17, 23, 23))
    ref = [t.double() for t in (q, k, v)]
    tangents = tuple(torch.randn(t.shape, generator=gen) for t in (q, k, v))

    def tri(a, b, c):
        return attention(a, b, c, backend="triton")

    torch.testing.assert_close(tri(q, k, v).double(), attention_reference(*ref),
                               atol=2e-6, rtol=0)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(tri(*leaves).square().sum(), leaves)
    leaves64 = [t.clone().requires_grad_() for t in ref]
    grads64 = torch.autograd.grad(attention_reference(*leaves64).square().sum(), leaves64)
    for got, want in zip(grads, grads64):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    _, tan = torch.func.jvp(tri, (q, k, v), tangents)
    _, tan64 = torch.func.jvp(attention_reference, tuple(ref),
                              tuple(t.double() for t in tangents))
    torch.testing.assert_close(tan.double(), tan64, atol=1e-5, rtol=0)

    def loss(a):
        return tri(a, k, v).square().sum()

    def loss64(a):
        return attention_reference(a, ref[1], ref[2]).square().sum()

    hvp = torch.func.jvp(torch.func.grad(loss), (q,), (tangents[0],))[1]
    hvp64 = torch.func.jvp(torch.func.grad(loss64), (ref[0],), (tangents[0].double(),))[1]
    torch.testing.assert_close(hvp.double(), hvp64, atol=2e-5, rtol=1e-5)
    leaf = q.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(leaf), leaf, create_graph=True)
    (hvp2,) = torch.autograd.grad(g, leaf, tangents[0])
    torch.testing.assert_close(hvp2.double(), hvp64, atol=2e-5, rtol=1e-5)
