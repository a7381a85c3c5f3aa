"""T1 for the fused PGD step: the C++ and Triton kernels against the torch reference (bit-exact
for L-inf in float32 / float64), best-iterate tracking, the eps-ball invariants, bad input."""

import math

import pytest
import torch
from conftest import KERNEL_BACKENDS, assert_close, mismatch_report

from trustfast._bench import judge
from trustfast.ops import BackendUnavailableError
from trustfast.ops.pgd_step import pgd_step

# The Triton interpreter evaluates both branches of the L2 kernel's
# tl.where(d_norm > 0, eps / d_norm, 1) in numpy: eps / 0 warns, the branch taken does not.
pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero encountered in divide:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning"),
]

ALL_BACKENDS = [pytest.param("torch", id="torch")] + KERNEL_BACKENDS

# Triton is interpreted on the CPU at ~2 ms per program: L-inf launches (N, cdiv(row, 4096))
# programs, L2 launches N, so these shapes cost 1 + 5 + 3 + 4 programs per call.
SHAPES = [(1, 1), (5, 3, 7, 9), (3, 1, 33, 17), (2, 4097)]
BUDGETS = {"linf": (8 / 255, 2 / 255), "l2": (0.5, 0.2)}
# one rounding of x + delta to the storage dtype may land past eps (torchattacks does the same)
HALF_ULP_BELOW_ONE = {torch.float32: 2.0**-25, torch.float64: 2.0**-54}


def _dtypes(backend):
    base = [torch.float32, torch.float16]
    return base + ([torch.float64, torch.bfloat16] if backend in ("cpp", "torch") else [])


def _batch(shape, dtype, seed, eps_scale, zero_grad_row=False):
    """x_clean in [0, 1], x_adv near it (some entries outside the ball), grad with exact zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    x[..., :1] = 1.0  # on the box boundary
    x_adv = (x + (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * 1.5 * eps_scale)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    grad[torch.rand(shape, generator=g) < 0.1] = 0.0
    if zero_grad_row:
        grad[-1] = 0.0
    return [t.to(dtype) for t in (x_adv.clamp(0, 1), x, grad)]


def _budgets(kind, norm, n, seed):
    eps, alpha = BUDGETS[norm]
    if kind == "scalar":
        return eps, alpha
    if kind == "zero":
        return 0.0, alpha
    g = torch.Generator().manual_seed(seed + 100)
    eps_t = torch.rand(n, generator=g) * 2 * eps
    eps_t[0] = 0.0  # eps = 0 inside a per-sample tensor
    return eps_t, torch.rand(n, generator=g) * 2 * alpha


def _assert_equal(actual, expected, name):
    msg = mismatch_report(actual, expected, 0.0, 0.0)
    assert not msg, f"{name}: {msg}"


# ------------------------------------------------------------------ kernels vs torch reference


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_kernel_matches_torch_reference(backend, norm):
    for dtype in _dtypes(backend):
        for shape in SHAPES:
            for kind in ("scalar", "tensor", "zero"):
                zero_row = norm == "l2"
                x_adv, x, grad = _batch(shape, dtype, 0, BUDGETS[norm][0], zero_row)
                eps, alpha = _budgets(kind, norm, shape[0], 0)
                name = f"{dtype} {shape} {kind}"
                ref = pgd_step(x_adv, x, grad, eps=eps, alpha=alpha, norm=norm, backend="torch")
                out = pgd_step(x_adv, x, grad, eps=eps, alpha=alpha, norm=norm, backend=backend)
                assert out.dtype == dtype and out.shape == x.shape
                if norm == "linf" and dtype in (torch.float32, torch.float64):
                    _assert_equal(out, ref, name)  # same operation order, same rounding
                else:
                    assert_close(out, ref, dtype, name=name)
                if kind == "zero":
                    _assert_equal(out, x, f"{name}: eps = 0 must return x_clean")
                if isinstance(eps, torch.Tensor):
                    _assert_equal(out[0], x[0], f"{name}: per-sample eps[0] = 0")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_half_precision_error_at_most_twice_torch_in_same_precision(backend):
    """STYLE.md's criterion against the float64 reference, both norms, in float16."""
    for norm in ("linf", "l2"):
        for shape in SHAPES[1:]:
            x_adv, x, grad = _batch(shape, torch.float16, 1, BUDGETS[norm][0])
            eps, alpha = BUDGETS[norm]
            exact = pgd_step(x_adv.double(), x.double(), grad.double(), eps=eps, alpha=alpha,
                             norm=norm, backend="torch")
            base = pgd_step(x_adv, x, grad, eps=eps, alpha=alpha, norm=norm, backend="torch")
            ours = pgd_step(x_adv, x, grad, eps=eps, alpha=alpha, norm=norm, backend=backend)
            ours_err = judge.max_abs_error(ours, exact)
            base_err = judge.max_abs_error(base, exact)
            assert judge.within(ours_err, base_err, slack=2.0**-12), (norm, shape, ours_err,
                                                                      base_err)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_l2_zero_gradient_row_does_not_move(backend):
    """||g|| = 0: the step is alpha * 0 / (0 + 1e-10) = 0, so only the projection acts."""
    for dtype in (torch.float32, torch.float64) if backend != "triton" else (torch.float32,):
        x_adv, x, grad = _batch((3, 2, 5, 5), dtype, 2, 0.5, zero_grad_row=True)
        x_adv[-1] = x[-1]
        out = pgd_step(x_adv, x, grad, eps=0.5, alpha=0.2, norm="l2", backend=backend)
        _assert_equal(out[-1], x[-1], f"{dtype} zero-gradient row")
        assert not torch.equal(out[0], x_adv[0])


def test_l2_zero_gradient_row_float16_torch_reference():
    x = torch.full((2, 5), 0.5, dtype=torch.float16)
    grad = torch.zeros(2, 5, dtype=torch.float16)
    grad[1] = 1.0
    out = pgd_step(x, x, grad, eps=0.1, alpha=0.05, norm="l2", backend="torch")
    _assert_equal(out[0], x[0], "zero-gradient row")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_linf_row_of_4097_is_bit_exact_per_block(backend):
    """4097 = one full 4096 block (Triton interpreter) plus a ragged tail of one element."""
    x_adv, x, grad = _batch((3, 4097), torch.float32, 3, 8 / 255)
    eps = torch.tensor([8 / 255, 0.0, 1 / 255])
    ref = pgd_step(x_adv, x, grad, eps=eps, alpha=2 / 255, backend="torch")
    out = pgd_step(x_adv, x, grad, eps=eps, alpha=2 / 255, backend=backend)
    _assert_equal(out, ref, "row of 4097")
    _assert_equal(out[1], x[1], "eps = 0 row")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_automatic_backend_on_cpu_matches_forced(backend):
    x_adv, x, grad = _batch((4, 3, 5, 5), torch.float32, 4, 8 / 255)
    auto = pgd_step(x_adv, x, grad, eps=8 / 255, alpha=2 / 255)
    forced = pgd_step(x_adv, x, grad, eps=8 / 255, alpha=2 / 255, backend=backend)
    _assert_equal(auto, forced, "auto vs forced")


# ------------------------------------------------------------------ best-iterate tracking


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_best_iterate_tracking(backend, norm):
    for dtype in (torch.float32, torch.float16):
        for shape in ((6, 3, 5, 7), (3, 4097)):
            n = shape[0]
            x_adv, x, grad = _batch(shape, dtype, 5, BUDGETS[norm][0])
            g = torch.Generator().manual_seed(6)
            loss = torch.randn(n, generator=g)
            best_loss = torch.randn(n, generator=g)
            best_loss[0] = loss[0]  # a tie is not an improvement
            best_loss[1] = -torch.inf
            best_adv = torch.rand(shape, generator=g).to(dtype)
            old_best_adv, old_best_loss = best_adv.clone(), best_loss.clone()
            improved = loss > old_best_loss
            assert 0 < int(improved.sum()) < n

            eps, alpha = BUDGETS[norm]
            out = pgd_step(x_adv, x, grad, eps=eps, alpha=alpha, norm=norm, loss=loss,
                           best_loss=best_loss, best_adv=best_adv, backend=backend)
            plain = pgd_step(x_adv, x, grad, eps=eps, alpha=alpha, norm=norm, backend=backend)
            name = f"{dtype} {shape}"
            _assert_equal(out, plain, f"{name}: tracking changed the step")
            _assert_equal(best_adv[improved], x_adv[improved], f"{name}: improved rows")
            _assert_equal(best_adv[~improved], old_best_adv[~improved], f"{name}: other rows")
            assert torch.equal(best_loss, torch.maximum(loss, old_best_loss)), name


@pytest.mark.parametrize("missing", ["loss", "best_loss", "best_adv"])
def test_partial_tracking_arguments_rejected(missing):
    x_adv, x, grad = _batch((2, 3), torch.float32, 7, 0.1)
    track = dict(loss=torch.zeros(2), best_loss=torch.zeros(2), best_adv=x_adv.clone())
    track[missing] = None
    with pytest.raises(ValueError, match="loss, best_loss and best_adv"):
        pgd_step(x_adv, x, grad, eps=0.1, alpha=0.01, **track)


def test_tracking_argument_shapes_and_dtypes_checked():
    x_adv, x, grad = _batch((2, 3), torch.float32, 7, 0.1)
    good = dict(loss=torch.zeros(2), best_loss=torch.zeros(2), best_adv=x_adv.clone())
    bad = [
        (dict(loss=torch.zeros(3)), "loss must be a tensor of shape"),
        (dict(best_loss=torch.zeros(2, 1)), "best_loss must be a tensor of shape"),
        (dict(best_adv=torch.zeros(2, 4)), "best_adv must match x_adv"),
        (dict(best_adv=x_adv.double()), "best_adv must match x_adv"),
        (dict(best_loss=torch.zeros(2, dtype=torch.float64)), "best_loss has dtype"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            pgd_step(x_adv, x, grad, eps=0.1, alpha=0.01, **{**good, **change})


# ------------------------------------------------------------------ invariants


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_linf_output_in_ball_and_box(backend):
    """|x_new - x|_inf <= eps up to the one rounding of x + delta, and x_new in [0, 1] exactly."""
    dtypes = (torch.float32,) if backend == "triton" else (torch.float32, torch.float64)
    for dtype in dtypes:
        for seed in range(4):
            g = torch.Generator().manual_seed(seed)
            n = 5
            x_adv = torch.rand(n, 2, 9, 9, generator=g, dtype=dtype)  # anywhere in the box
            x = torch.rand(n, 2, 9, 9, generator=g, dtype=dtype)
            grad = torch.randn(n, 2, 9, 9, generator=g, dtype=dtype)
            eps = torch.rand(n, generator=g, dtype=dtype) * 0.3
            alpha = torch.rand(n, generator=g, dtype=dtype) * 0.1
            out = pgd_step(x_adv, x, grad, eps=eps, alpha=alpha, backend=backend)
            assert out.min() >= 0 and out.max() <= 1
            dist = (out.double() - x.double()).abs().flatten(1).amax(1)
            used = eps.to(torch.float64 if dtype == torch.float64 else torch.float32).double()
            slack = HALF_ULP_BELOW_ONE[dtype]
            assert (dist <= used + slack).all(), (dtype, seed, (dist - used).max().item())


def test_linf_bound_is_exact_up_to_rounding_of_x_plus_eps():
    """A projected delta of exactly eps lands at fl(x + eps), as torchattacks' clamp(x + delta)
    does; it can pass x + eps by half an ulp, never more (the slack used above)."""
    x = torch.rand(1, 20000, generator=torch.Generator().manual_seed(8)) * 0.5 + 0.45
    eps = torch.tensor(8 / 255)
    out = pgd_step(x + 0.0, x, torch.ones_like(x), eps=8 / 255, alpha=1.0, backend="torch")
    _assert_equal(out, torch.clamp(x + eps, 0, 1), "delta = eps everywhere")
    over = out.double() - x.double() - eps.double()
    assert (over > 0).any()  # the reason the invariant tests allow half an ulp
    assert over.max() <= 2.0**-25


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_l2_output_in_ball_and_box(backend):
    dtypes = (torch.float32,) if backend == "triton" else (torch.float32, torch.float64)
    for dtype in dtypes:
        for seed in range(4):
            g = torch.Generator().manual_seed(seed)
            n = 5
            x_adv = torch.rand(n, 3, 8, 8, generator=g, dtype=dtype)
            x = torch.rand(n, 3, 8, 8, generator=g, dtype=dtype)
            grad = torch.randn(n, 3, 8, 8, generator=g, dtype=dtype)
            eps = torch.rand(n, generator=g, dtype=dtype) * 2
            eps[0] = 0.0
            out = pgd_step(x_adv, x, grad, eps=eps, alpha=0.5, norm="l2", backend=backend)
            assert out.min() >= 0 and out.max() <= 1
            dist = (out.double() - x.double()).flatten(1).norm(dim=1)
            assert (dist <= eps.double() * (1 + 1e-6)).all(), (dtype, seed, dist, eps)
            _assert_equal(out[0], x[0], "eps = 0")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_step_from_inside_the_ball_is_not_projected(backend):
    """Small steps from x_clean stay in the ball: x_new = x + alpha * sign(g) exactly (linf)."""
    x = torch.full((2, 7), 0.5)
    grad = torch.tensor([[1.0, -2.0, 0.0, 3.0, -1e-30, 1e-30, -5.0]] * 2)
    out = pgd_step(x, x, grad, eps=0.25, alpha=0.125, backend=backend)
    expected = torch.tensor([[0.625, 0.375, 0.5, 0.625, 0.375, 0.625, 0.375]] * 2)
    _assert_equal(out, expected, "unprojected sign step")


# ------------------------------------------------------------------ bad input


def _bad_cases():
    x_adv, x, grad = _batch((3, 4), torch.float32, 9, 0.1)
    ok = dict(x_adv=x_adv, x_clean=x, grad=grad, eps=0.1, alpha=0.01)
    return [
        (dict(eps=-0.1), ValueError, "eps must be finite and >= 0"),
        (dict(eps=torch.tensor([0.1, -0.1, 0.1])), ValueError, "eps must be finite and >= 0"),
        (dict(alpha=float("nan")), ValueError, "alpha must be finite and >= 0"),
        (dict(alpha=float("inf")), ValueError, "alpha must be finite and >= 0"),
        (dict(eps=torch.tensor([0.1, 0.1])), ValueError, r"eps must be a scalar or have shape"),
        (dict(alpha=torch.zeros(3, 1)), ValueError, r"alpha must be a scalar or have shape"),
        (dict(eps="0.1"), TypeError, "eps must be a number or a tensor"),
        (dict(eps=True), TypeError, "eps must be a number or a tensor"),
        (dict(x_clean=x[:2]), ValueError, "x_clean has shape"),
        (dict(grad=grad.reshape(4, 3)), ValueError, "grad has shape"),
        (dict(grad=grad.double()), ValueError, "grad is torch.float64"),
        (dict(x_clean=x.half()), ValueError, "x_clean is torch.float16"),
        (dict(x_adv=x_adv.long(), x_clean=x.long(), grad=grad.long()), TypeError,
         "x_adv must be a float16 or bfloat16 or float32 or float64 tensor"),
        (dict(x_adv=x_adv.numpy()), TypeError, "x_adv must be a torch.Tensor"),
        (dict(x_clean=torch.full_like(x, 2.0)), ValueError, r"x_clean must lie in \[0, 1\]"),
        (dict(x_adv=x_adv - 1.0), ValueError, r"x_adv must lie in \[0, 1\]"),
        (dict(x_adv=torch.full_like(x, float("nan"))), ValueError, "x_adv must lie in"),
        (dict(grad=torch.full_like(grad, float("inf"))), ValueError, "grad must be finite"),
        (dict(grad=grad.masked_fill(grad > 0, float("nan"))), ValueError, "grad must be finite"),
        (dict(eps=torch.tensor([0.1, 0.1, 0.1j])), TypeError, "eps must be a real"),
        (dict(validate=1), TypeError, "validate must be a bool"),
        (dict(x_adv=x_adv[:0], x_clean=x[:0], grad=grad[:0]), ValueError, "non-empty batch"),
        (dict(norm="l1"), ValueError, "norm must be one of"),
    ], ok


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bad_input_names_the_argument(backend):
    cases, ok = _bad_cases()
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            pgd_step(**{**ok, **change}, backend=backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous_rejected_by_kernels_handled_by_reference(backend):
    x_adv, x, grad = _batch((4, 6), torch.float32, 10, 0.1)
    expected = pgd_step(x_adv, x, grad, eps=0.1, alpha=0.03, backend="torch")
    for name in ("x_adv", "x_clean", "grad"):
        args = dict(x_adv=x_adv, x_clean=x, grad=grad)
        args[name] = args[name].t().contiguous().t()  # same values, transposed strides
        assert not args[name].is_contiguous()
        with pytest.raises(ValueError, match=f"{name} is not contiguous"):
            pgd_step(**args, eps=0.1, alpha=0.03, backend=backend)
        out = pgd_step(**args, eps=0.1, alpha=0.03, backend="torch")
        _assert_equal(out, expected, f"torch backend, non-contiguous {name}")
    best_adv = x_adv.t().contiguous().t()
    with pytest.raises(ValueError, match="best_adv is not contiguous"):
        pgd_step(x_adv, x, grad, eps=0.1, alpha=0.03, loss=torch.ones(4),
                 best_loss=torch.zeros(4), best_adv=best_adv, backend=backend)


def test_triton_rejects_float64_when_forced():
    pytest.importorskip("triton")
    x_adv, x, grad = _batch((2, 3), torch.float64, 11, 0.1)
    with pytest.raises(BackendUnavailableError, match="float64"):
        pgd_step(x_adv, x, grad, eps=0.1, alpha=0.01, backend="triton")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_inputs_not_modified(backend):
    for norm in ("linf", "l2"):
        x_adv, x, grad = _batch((3, 2, 6, 5), torch.float32, 12, BUDGETS[norm][0])
        eps, alpha = torch.tensor([0.1, 0.0, 0.3]), torch.tensor([0.05, 0.1, 0.0])
        before = [t.clone() for t in (x_adv, x, grad, eps, alpha)]
        loss = torch.tensor([1.0, 2.0, 3.0])
        best_adv = torch.zeros_like(x_adv)
        out = pgd_step(x_adv, x, grad, eps=eps, alpha=alpha, norm=norm, loss=loss,
                       best_loss=torch.zeros(3), best_adv=best_adv, backend=backend)
        for t, old, name in zip((x_adv, x, grad, eps, alpha), before,
                                ("x_adv", "x_clean", "grad", "eps", "alpha")):
            _assert_equal(t, old, f"{norm}: {name} modified")
        assert torch.equal(loss, torch.tensor([1.0, 2.0, 3.0]))
        assert out.data_ptr() not in (x_adv.data_ptr(), x.data_ptr(), grad.data_ptr())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_l2_infinite_gradient_is_refused_not_turned_into_nan(backend):
    """Issue 17: an infinite gradient under L2 used to return NaN (inf / inf)."""
    x = torch.full((2, 5), 0.5)
    grad = torch.ones(2, 5)
    grad[1, 3] = float("inf")
    with pytest.raises(ValueError, match="grad must be finite"):
        pgd_step(x, x, grad, eps=0.5, alpha=0.1, norm="l2", backend=backend)
    out = pgd_step(x, x, torch.ones(2, 5), eps=0.5, alpha=0.1, norm="l2", backend=backend)
    assert torch.isfinite(out).all()


def test_validate_false_skips_the_value_checks_for_hot_loops():
    x = torch.full((2, 5), 0.5)
    out = pgd_step(torch.full((2, 5), 1.5), x, torch.ones(2, 5), eps=0.1, alpha=0.1,
                   validate=False)
    assert out.max() <= 1.0  # clamped into the box, as documented


def test_tracking_loss_must_be_finite():
    x = torch.full((2, 5), 0.5)
    best_adv, best_loss = x.clone(), torch.full((2,), -float("inf"))
    with pytest.raises(ValueError, match="loss must be finite"):
        pgd_step(x, x, torch.ones(2, 5), eps=0.1, alpha=0.1, loss=torch.tensor([1.0, math.inf]),
                 best_loss=best_loss, best_adv=best_adv)
    assert torch.equal(best_loss, torch.full((2,), -float("inf")))
