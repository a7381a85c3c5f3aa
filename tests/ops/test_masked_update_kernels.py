"""T1: the C++ and Triton kernels against the float64 torch reference (Triton interpreted)."""

import itertools

import pytest
import torch
from conftest import KERNEL_BACKENDS, assert_close

from trustfast._bench import judge
from trustfast.ops import (
    cpp_available,
    masked_adamw_step,
    masked_adamw_step_reference,
    masked_sgd_step,
    masked_sgd_step_reference,
)

SMALL_SHAPES = [(1,), (7,), (123,), (3, 5, 7), (431, 3)]
LARGE_SHAPES = [(1000003,), (7,)]

SGD_CONFIGS = [
    dict(momentum=0.0, weight_decay=0.0, l1=0.0),
    dict(momentum=0.9, weight_decay=5e-4, l1=1e-3),
    dict(momentum=0.9, dampening=0.25, weight_decay=1e-2, l1=1e-2, l1_mode="proximal"),
    dict(momentum=0.8, nesterov=True, weight_decay=1e-3, l1=5e-3),
    dict(momentum=0.0, weight_decay=1e-3, l1=5e-2, l1_mode="proximal"),
]
ADAMW_CONFIGS = [
    dict(step=1, weight_decay=0.0, l1=0.0),
    dict(step=7, weight_decay=1e-2, l1=1e-3),
    dict(step=3, beta1=0.3, beta2=0.9, weight_decay=0.1, l1=1e-2, l1_mode="proximal"),
]


def _make(shapes, dtype, seed, n_state, mask_kind):
    g = torch.Generator().manual_seed(seed)

    def rnd(s, scale=1.0):
        return (torch.randn(s, generator=g) * scale).to(dtype)

    params = [rnd(s) for s in shapes]
    grads = [rnd(s, 0.5) for s in shapes]
    # second moments must be >= 0; first moments / momentum any sign
    states = [[rnd(s).abs() if k == 1 else rnd(s, 0.1) for s in shapes] for k in range(n_state)]
    if mask_kind == "none":
        masks = None
    else:
        masks = [torch.rand(s, generator=g) < 0.6 for s in shapes]
        if mask_kind == "mixed":
            masks[0] = None
    return params, grads, states, masks


def _f64(ts):
    return [t.double() for t in ts]


def _check_masked_zero(tensors, masks, name):
    if masks is None:
        return
    for i, (t, m) in enumerate(zip(tensors, masks)):
        if m is not None:
            assert (t[~m] == 0).all(), f"{name}[{i}] has non-zero entries where the mask is False"


def _dtypes(backend):
    base = [torch.float32, torch.float16]
    return base + ([torch.float64, torch.bfloat16] if backend == "cpp" else [])


def _cases(backend):
    return list(itertools.product(_dtypes(backend), ["none", "all", "mixed"]))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=str)
def test_sgd_kernel_matches_float64_reference(backend, cfg):
    for dtype, mask_kind in _cases(backend):
        params, grads, (bufs,), masks = _make(SMALL_SHAPES, dtype, 0, 1, mask_kind)
        ref_p, ref_b = _f64(params), _f64(bufs)
        masked_sgd_step_reference(ref_p, _f64(grads), ref_b, masks, lr=0.1, **cfg)
        used = masked_sgd_step(params, grads, bufs, masks, lr=0.1, backend=backend, **cfg)
        assert used == backend
        for i in range(len(params)):
            assert_close(params[i], ref_p[i], dtype, name=f"{dtype} {mask_kind} params[{i}]")
            if cfg["momentum"]:
                assert_close(bufs[i], ref_b[i], dtype, name=f"{dtype} {mask_kind} bufs[{i}]")
        _check_masked_zero(params, masks, "params")
        if cfg["momentum"]:
            _check_masked_zero(bufs, masks, "momentum_bufs")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cfg", ADAMW_CONFIGS, ids=str)
def test_adamw_kernel_matches_float64_reference(backend, cfg):
    for dtype, mask_kind in _cases(backend):
        params, grads, (m, v), masks = _make(SMALL_SHAPES, dtype, 1, 2, mask_kind)
        ref = [_f64(params), _f64(m), _f64(v)]
        masked_adamw_step_reference(ref[0], _f64(grads), ref[1], ref[2], masks, lr=0.05, **cfg)
        used = masked_adamw_step(params, grads, m, v, masks, lr=0.05, backend=backend, **cfg)
        assert used == backend
        for name, ours, theirs in zip(("params", "exp_avgs", "exp_avg_sqs"), (params, m, v), ref):
            for i in range(len(params)):
                assert_close(ours[i], theirs[i], dtype, name=f"{dtype} {mask_kind} {name}[{i}]")
            _check_masked_zero(ours, masks, name)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_large_odd_sizes_float32(backend):
    """1000003 elements: several blocks / chunks, with a ragged tail."""
    params, grads, (bufs,), masks = _make(LARGE_SHAPES, torch.float32, 2, 1, "all")
    ref_p, ref_b = _f64(params), _f64(bufs)
    cfg = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, l1=1e-3)
    masked_sgd_step_reference(ref_p, _f64(grads), ref_b, masks, **cfg)
    masked_sgd_step(params, grads, bufs, masks, backend=backend, **cfg)
    for i in range(len(params)):
        assert_close(params[i], ref_p[i], name=f"params[{i}]")
        assert_close(bufs[i], ref_b[i], name=f"bufs[{i}]")
    _check_masked_zero(params, masks, "params")

    params, grads, (m, v), masks = _make(LARGE_SHAPES, torch.float32, 3, 2, "mixed")
    ref = [_f64(params), _f64(m), _f64(v)]
    masked_adamw_step_reference(ref[0], _f64(grads), ref[1], ref[2], masks, step=5, lr=1e-2)
    masked_adamw_step(params, grads, m, v, masks, step=5, lr=1e-2, backend=backend)
    for ours, theirs in zip((params, m, v), ref):
        for i in range(len(params)):
            assert_close(ours[i], theirs[i], name=f"adamw[{i}]")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_half_precision_error_at_most_twice_torch_in_same_precision(backend):
    """STYLE.md's criterion: kernel error vs float64 <= 2x the torch baseline's in fp16."""
    shapes = [(4099,), (33, 17)]
    params, grads, (bufs,), masks = _make(shapes, torch.float16, 4, 1, "all")
    cfg = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, l1=1e-3)
    ref_p = _f64(params)
    masked_sgd_step_reference(ref_p, _f64(grads), _f64(bufs), masks, **cfg)
    base_p, base_b = [p.clone() for p in params], [b.clone() for b in bufs]
    # torch computing in fp16 itself (no fp32 upcast): the baseline a user would get
    for p, g, b, k in zip(base_p, grads, base_b, masks):
        d = g + cfg["weight_decay"] * p + cfg["l1"] * torch.sign(p)
        b.mul_(cfg["momentum"]).add_(d)
        p.sub_(cfg["lr"] * b).mul_(k)
    masked_sgd_step(params, grads, bufs, masks, backend=backend, **cfg)
    for ours, base, ref in zip(params, base_p, ref_p):
        ours_err = judge.max_abs_error(ours, ref)
        base_err = judge.max_abs_error(base, ref)
        assert judge.within(ours_err, base_err, slack=1e-7), (ours_err, base_err)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous_rejected_by_kernels_handled_by_reference(backend):
    base = torch.randn(6, 8)
    p = base.t()  # non-contiguous view
    g = torch.randn(8, 6)
    with pytest.raises(ValueError, match=r"params\[0\] is not contiguous"):
        masked_sgd_step([p], [g], None, None, lr=0.1, backend=backend)
    expected = p - 0.1 * g
    masked_sgd_step([p], [g], None, None, lr=0.1, backend="torch")
    torch.testing.assert_close(base.t(), expected)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_many_tensors_one_call(backend):
    """A model-like list (40 tensors, sizes 1..~5000) in one multi-tensor call."""
    g = torch.Generator().manual_seed(5)
    shapes = [(int(s),) for s in torch.randint(1, 5000, (40,), generator=g)]
    params, grads, (bufs,), masks = _make(shapes, torch.float32, 6, 1, "mixed")
    ref_p, ref_b = _f64(params), _f64(bufs)
    cfg = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    masked_sgd_step_reference(ref_p, _f64(grads), ref_b, masks, **cfg)
    masked_sgd_step(params, grads, bufs, masks, backend=backend, **cfg)
    for i in range(len(params)):
        assert_close(params[i], ref_p[i], name=f"params[{i}]")
        assert_close(bufs[i], ref_b[i], name=f"bufs[{i}]")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_nan_gradient_under_mask_never_reaches_weights(backend):
    p = [torch.ones(10)]
    g = [torch.full((10,), float("nan"))]
    g[0][:5] = 0.5
    keep = [torch.arange(10) < 5]
    b = [torch.zeros(10)]
    masked_sgd_step(p, g, b, keep, lr=0.1, momentum=0.9, backend=backend)
    assert torch.equal(p[0][5:], torch.zeros(5)) and torch.equal(b[0][5:], torch.zeros(5))
    assert torch.allclose(p[0][:5], torch.full((5,), 0.95))



@pytest.mark.cpp
@pytest.mark.skipif(not cpp_available(), reason="trustfast._C not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cpp_all_finite_finds_any_nan_or_inf(dtype):
    from trustfast._ext import cpp_extension

    all_finite = cpp_extension().all_finite
    g = torch.Generator().manual_seed(7)
    tensors = [torch.randn(n, generator=g).to(dtype) for n in (1, 7, 40000, 100003)]
    assert all_finite(tensors) and all_finite([])
    for which, index in ((0, 0), (2, 39999), (3, 65537)):
        for bad in (float("nan"), float("inf"), -float("inf")):
            broken = [t.clone() for t in tensors]
            broken[which][index] = bad
            assert not all_finite(broken), (which, index, bad)
    big = torch.full((3,), torch.finfo(dtype).max, dtype=dtype)  # large but finite
    assert all_finite([big])
