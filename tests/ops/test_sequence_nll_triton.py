"""T1 for sequence_nll's Triton fused linear + cross-entropy kernels (kernels/sequence_nll.py)
under TRITON_INTERPRET=1: nll, lse and both gradients against a float64 reference,
F.cross_entropy(h W^T, labels, reduction="none", ignore_index=-100) and its autograd.

Tolerance (STYLE.md): the kernel's max error against float64 is at most twice that of torch
computing the same thing in the same precision (logits h W^T in that dtype, cross_entropy in
float32, autograd back to that dtype), with a floor of 1e-5 (fp32) / 2e-3 (fp16) times the largest
exact value (at least 1) where the baseline happens to be exact. float32 and float16 only:
bfloat16 is checked by benchmarks/gpu_suite.py --check on a GPU.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import mismatch_report

from trustfast._bench import judge
from trustfast.ops import triton_available

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not triton_available(), reason="triton not installed"),
]

if triton_available():
    from trustfast.kernels.sequence_nll import (
        linear_cross_entropy_backward,
        linear_cross_entropy_forward,
    )

IGNORE = -100
DTYPES = [torch.float32, torch.float16]
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3}

# (N, V, Hd, logit scale, labels, layout). The interpreter runs 16-wide token, vocab and Hd tiles
# at ~2 ms a program plus its loop: V = 1000 (63 vocab tiles, 63 grad_weight programs) is kept to
# one token. Labels: "mixed" ignores every third token from token 2 and puts token 1 (token 0 when
# N = 1) on the last vocab index, in the ragged edge tile; "block" also ignores tokens 16..31, a
# whole program's block; "ignored" ignores every token. Layouts: "contiguous"; "strided" hidden
# states as a (B, T, Hd) slice h[:, :-1] flattened by a non-unit row stride, the head as a
# transposed (Hd, V) tensor (unit stride on V, not Hd) and grad_nll expanded from one value
# (stride 0). "peaky" scales the logits to a standard deviation of 8 (max ~ 30).
CASES = [
    pytest.param(1, 1000, 16, 1.0, "mixed", "contiguous", id="n1-v1000-d16"),
    pytest.param(17, 77, 40, 1.0, "mixed", "contiguous", id="n17-v77-d40"),
    pytest.param(37, 33, 72, 1.0, "block", "contiguous", id="n37-v33-d72-ignored-block"),
    pytest.param(17, 33, 40, 8.0, "mixed", "strided", id="n17-v33-d40-peaky-strided"),
    pytest.param(37, 77, 16, 1.0, "mixed", "contiguous", id="n37-v77-d16"),
    pytest.param(1, 77, 72, 1.0, "ignored", "contiguous", id="n1-v77-d72-all-ignored"),
]
CASE_ARGS = "n,v,d,scale,label_kind,layout"


def _labels(n, v, kind, gen):
    y = torch.randint(0, v, (n,), generator=gen)
    if kind == "ignored":
        return torch.full_like(y, IGNORE)
    y[2::3] = IGNORE
    y[min(1, n - 1)] = v - 1
    if kind == "block":
        y[16:32] = IGNORE
    return y


def _inputs(n, v, d, scale, label_kind, layout, dtype, seed=0):
    """h (N, Hd), weight (V, Hd) of `dtype` in the given layout, labels, and a float32 upstream
    gradient per token; logits have standard deviation about `scale`."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) * (scale / d**0.5)
    y = _labels(n, v, label_kind, gen)
    grad = torch.randn(n, generator=gen)
    if layout == "strided":
        # (N, T=2, Hd) hidden states; position 0 of each is h, as h[:, :-1] of a causal LM
        padded = torch.randn(n, 2, d, generator=gen, dtype=torch.float64)
        padded[:, 0] = h
        h = padded.to(dtype)[:, 0]
        w = w.to(dtype).T.contiguous().T
        grad = grad[:1].expand(n)
        assert h.stride() == (2 * d, 1) and w.stride() == (1, v) and grad.stride() == (0,)
        return h, w, y, grad
    return h.to(dtype), w.to(dtype), y, grad


def _torch_nll(h, w, y):
    """(nll, lse) as torch computes them from h's precision: logits h W^T in that dtype, then
    cross_entropy and logsumexp in float32 (float64 for float64 inputs)."""
    logits = h @ w.T
    if logits.dtype != torch.float64:
        logits = logits.float()
    nll = F.cross_entropy(logits, y, reduction="none", ignore_index=IGNORE)
    lse = torch.where(y != IGNORE, torch.logsumexp(logits, 1), torch.zeros_like(nll))
    return nll, lse


def _torch_grads(h, w, y, grad, dtype):
    leaves = [t.detach().to(dtype).requires_grad_() for t in (h, w)]
    nll, _ = _torch_nll(*leaves, y)
    return torch.autograd.grad(nll, leaves, grad.to(nll.dtype))


def _assert_within_baseline(name, actual, baseline, exact, dtype):
    """Kernel error <= max(2 x the same-precision torch baseline's error, floor x max |exact|)."""
    base_err = judge.max_abs_error(baseline, exact)
    magnitude = exact.abs().max().item() if exact.numel() else 0.0
    bound = judge.bound(base_err, floor=FLOOR[dtype] * max(1.0, magnitude))
    msg = mismatch_report(actual, exact, atol=bound, rtol=0.0)
    assert not msg, f"{name} (bound {bound:.3g}, baseline error {base_err:.3g}): {msg}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(CASE_ARGS, CASES)
def test_forward(n, v, d, scale, label_kind, layout, dtype):
    h, w, y, _ = _inputs(n, v, d, scale, label_kind, layout, dtype)
    nll, lse = linear_cross_entropy_forward(h, w, y)
    assert nll.shape == lse.shape == (n,)
    assert nll.dtype == lse.dtype == torch.float32
    nll_exact, lse_exact = _torch_nll(h.double(), w.double(), y)
    nll_base, lse_base = _torch_nll(h, w, y)
    _assert_within_baseline("nll", nll, nll_base, nll_exact, dtype)
    # lse is float32 whatever the input dtype; its baseline is torch.logsumexp of the same logits
    _assert_within_baseline("lse", lse, lse_base, lse_exact, dtype)
    ignored = y == IGNORE
    assert torch.all(nll[ignored] == 0) and torch.all(lse[ignored] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(CASE_ARGS, CASES)
def test_backward(n, v, d, scale, label_kind, layout, dtype):
    """The backward alone, from the exact lse (rounded to float32), so a forward error cannot
    hide or cause a backward one."""
    h, w, y, grad = _inputs(n, v, d, scale, label_kind, layout, dtype)
    _, lse = _torch_nll(h.double(), w.double(), y)
    grad_h, grad_w = linear_cross_entropy_backward(h, w, y, lse.float(), grad)
    assert grad_h.shape == h.shape and grad_h.dtype == dtype and grad_h.is_contiguous()
    assert grad_w.shape == w.shape and grad_w.dtype == dtype and grad_w.is_contiguous()
    exact = _torch_grads(h, w, y, grad, torch.float64)
    baseline = _torch_grads(h, w, y, grad, dtype)
    for name, got, base, want in zip(("grad_h", "grad_weight"), (grad_h, grad_w), baseline, exact):
        _assert_within_baseline(name, got, base, want, dtype)
    assert torch.all(grad_h[y == IGNORE] == 0)


def test_forward_then_backward_is_deterministic():
    """Same inputs, bit-identical outputs: every output row is owned by one program (no
    atomics), so the summation order is fixed."""
    h, w, y, grad = _inputs(37, 33, 40, 1.0, "mixed", "contiguous", torch.float32, seed=1)
    first = linear_cross_entropy_forward(h, w, y)
    second = linear_cross_entropy_forward(h, w, y)
    grads = [linear_cross_entropy_backward(h, w, y, first[1], grad) for _ in range(2)]
    for a, b in zip((*first, *grads[0]), (*second, *grads[1])):
        assert torch.equal(a, b)


def test_ignore_index_is_configurable():
    """ignore_index=5: class 5 is never scored, label -100 would be out of range."""
    h, w, _, grad = _inputs(17, 33, 16, 1.0, "mixed", "contiguous", torch.float32, seed=2)
    y = torch.randint(0, 33, (17,), generator=torch.Generator().manual_seed(2))
    y[::4] = 5
    keep = y != 5
    nll, lse = linear_cross_entropy_forward(h, w, y, ignore_index=5)
    nll_exact = F.cross_entropy(h.double() @ w.double().T, y, reduction="none", ignore_index=5)
    msg = mismatch_report(nll, nll_exact, atol=1e-5, rtol=0.0)
    assert not msg, msg
    assert torch.all(lse[~keep] == 0) and torch.all(lse[keep] > 0)
    grad_h, _ = linear_cross_entropy_backward(h, w, y, lse, grad, ignore_index=5)
    assert torch.all(grad_h[~keep] == 0) and torch.all(grad_h[keep].abs().sum(1) > 0)


def test_out_of_range_label_gives_nan_not_a_plausible_loss():
    h, w, y, grad = _inputs(3, 20, 16, 1.0, "mixed", "contiguous", torch.float32, seed=3)
    y = torch.tensor([20, 4, -1])
    nll, lse = linear_cross_entropy_forward(h, w, y)
    assert nll[0].isnan() and nll[2].isnan() and nll[1].isfinite() and lse.isfinite().all()
    grad_h, grad_w = linear_cross_entropy_backward(h, w, y, lse, grad)
    assert grad_h[0].isnan().all() and grad_h[1].isfinite().all() and grad_w.isnan().any()


def test_empty_tokens():
    h, w = torch.zeros(0, 16), torch.randn(20, 16)
    y = torch.zeros(0, dtype=torch.int64)
    nll, lse = linear_cross_entropy_forward(h, w, y)
    assert nll.shape == lse.shape == (0,)
    grad_h, grad_w = linear_cross_entropy_backward(h, w, y, lse, nll)
    assert grad_h.shape == (0, 16) and torch.equal(grad_w, torch.zeros(20, 16))


def _bad(**changes):
    args = dict(h=torch.zeros(4, 16), weight=torch.zeros(20, 16),
                labels=torch.zeros(4, dtype=torch.int64))
    args.update(changes)
    return args


@pytest.mark.parametrize("args,error,match", [
    (_bad(h=torch.zeros(4, 16, dtype=torch.float64)), TypeError, "h must be float16"),
    (_bad(weight=torch.zeros(20, 16, dtype=torch.float16)), TypeError, "weight must have h's"),
    (_bad(labels=torch.zeros(4, dtype=torch.int32)), TypeError, "labels must be int64"),
    (_bad(weight=torch.zeros(20, 8)), ValueError, r"h must be \(N, Hd\)"),
    (_bad(h=torch.zeros(2, 4, 16)), ValueError, r"h must be \(N, Hd\)"),
    (_bad(weight=torch.zeros(0, 16)), ValueError, "empty vocabulary"),
    (_bad(labels=torch.zeros(5, dtype=torch.int64)), ValueError, r"labels must be \(4,\)"),
    (_bad(labels=torch.zeros(4, dtype=torch.int64, device="meta")), ValueError, "one device"),
], ids=["h-float64", "weight-dtype", "labels-int32", "hidden-mismatch", "h-3d", "vocab-0",
        "labels-shape", "labels-device"])
def test_launchers_reject(args, error, match):
    with pytest.raises(error, match=match):
        linear_cross_entropy_forward(**args)
    lse = grad = torch.zeros(args["h"].shape[0])
    with pytest.raises(error, match=match):
        linear_cross_entropy_backward(**args, lse=lse, grad_nll=grad)


@pytest.mark.parametrize("arg,value,error,match", [
    ("lse", torch.zeros(4, dtype=torch.float64), TypeError, "lse must be a float32"),
    ("grad_nll", torch.zeros(5), ValueError, r"grad_nll must be \(4,\)"),
    ("grad_nll", torch.zeros(4, 1), ValueError, r"grad_nll must be \(4,\)"),
])
def test_backward_rejects(arg, value, error, match):
    args = dict(_bad(), lse=torch.zeros(4), grad_nll=torch.zeros(4))
    args[arg] = value
    with pytest.raises(error, match=match):
        linear_cross_entropy_backward(**args)


def test_sequence_nll_op_runs_the_kernels():
    """`trustfast.ops.sequence_nll(backend="triton")` forward and backward against the float64
    reference, with per-sequence upstream gradients."""
    from trustfast.ops.sequence_nll import sequence_nll, sequence_nll_reference

    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 9, 16, generator=gen)
    weight = torch.randn(77, 16, generator=gen) / 4
    labels = torch.randint(0, 77, (2, 9), generator=gen)
    labels[1, 3] = -100
    leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    got = sequence_nll(leaves[0], leaves[1], labels, backend="triton")
    ref_leaves = [hidden.double().requires_grad_(), weight.double().requires_grad_()]
    want = sequence_nll_reference(ref_leaves[0], ref_leaves[1], labels)
    torch.testing.assert_close(got.sum.double(), want.sum, atol=1e-5, rtol=1e-6)
    assert torch.equal(got.tokens, want.tokens)
    w = torch.tensor([0.5, -2.0])
    grads = torch.autograd.grad((got.sum * w).sum() + got.mean.sum(), leaves)
    ref = torch.autograd.grad((want.sum * w.double()).sum() + want.mean.sum(), ref_leaves)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-5)
