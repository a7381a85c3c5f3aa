"""Bad input to the masked update ops: a clear error that names the argument."""

import math

import pytest
import torch
from conftest import KERNEL_BACKENDS

from trustfast import TrustfastWarning
from trustfast.ops import (
    masked_adamw_step,
    masked_adamw_step_reference,
    masked_sgd_step,
    masked_sgd_step_reference,
)

BACKENDS = ["torch", *KERNEL_BACKENDS]
# The Triton interpreter runs the overflow cases in numpy, which warns on inf / NaN arithmetic.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


def _sgd(**over):
    args = dict(params=[torch.ones(3, 4)], grads=[torch.ones(3, 4)], momentum_bufs=None,
                masks=None, lr=0.1)
    args.update(over)
    params, grads, bufs, masks = (args.pop(k) for k in ("params", "grads", "momentum_bufs",
                                                        "masks"))
    return masked_sgd_step(params, grads, bufs, masks, **args)


@pytest.mark.parametrize(
    "over, exc, pattern",
    [
        (dict(masks=[torch.ones(4, 3, dtype=torch.bool)]), ValueError, r"masks\[0\] has shape"),
        (dict(masks=[torch.ones(3, 4)]), TypeError, r"masks\[0\] must have dtype torch.bool"),
        (dict(masks=[torch.ones(3, 4, dtype=torch.bool, device="meta")]), ValueError,
         r"masks\[0\] is on meta"),
        (dict(masks=[]), ValueError, "masks has 0 entries"),
        (dict(masks=torch.ones(3, 4, dtype=torch.bool)), TypeError, "masks must be None or a list"),
        (dict(lr=-0.1), ValueError, "lr must be >= 0"),
        (dict(lr=math.nan), ValueError, "lr must be finite"),
        (dict(lr="0.1"), TypeError, "lr must be a real number"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay must be >= 0"),
        (dict(l1=-1e-3), ValueError, "l1 must be >= 0"),
        (dict(dampening=1.5), ValueError, "dampening must be <= 1.0"),
        (dict(l1_mode="prox"), ValueError, "l1_mode must be one of"),
        (dict(momentum=0.9), ValueError, "momentum_bufs is required"),
        (dict(nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
        (dict(grads=[torch.ones(3, 4, dtype=torch.float64)]), TypeError, r"grads\[0\] has dtype"),
        (dict(grads=[torch.ones(12)]), ValueError, r"grads\[0\] has shape"),
        (dict(grads=[]), ValueError, "grads has 0 tensors"),
        (dict(params=torch.ones(3)), TypeError, "params must be a list of tensors"),
        (dict(params=[torch.ones(3, 4, dtype=torch.int64)]), TypeError,
         r"params\[0\] must be a .*floating"),
        (dict(params=[torch.ones(3, 4, dtype=torch.complex64)], grads=[torch.ones(3, 4)]),
         TypeError, r"params\[0\] must be a .*complex"),
        (dict(nesterov=1), TypeError, "nesterov"),
        (dict(nonfinite="ignore"), ValueError, "nonfinite"),
        (dict(momentum=0.9, momentum_bufs=[torch.ones(3)]), ValueError,
         r"momentum_bufs\[0\] has shape"),
    ],
)
def test_sgd_rejects_bad_input(over, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _sgd(**over)


def test_params_on_two_devices_rejected():
    with pytest.raises(ValueError, match=r"params\[1\] is on meta"):
        masked_sgd_step([torch.ones(2), torch.ones(2, device="meta")],
                        [torch.ones(2), torch.ones(2, device="meta")], None, None, lr=0.1)


@pytest.mark.parametrize(
    "over, pattern",
    [
        (dict(step=0), "step must be an int >= 1"),
        (dict(beta1=1.0), "beta1 must be < 1.0"),
        (dict(beta2=-0.1), "beta2 must be >= 0"),
        (dict(eps=-1e-8), "eps must be >= 0"),
    ],
)
def test_adamw_rejects_bad_input(over, pattern):
    args = dict(step=1, lr=1e-3)
    args.update(over)
    t = [torch.ones(3)]
    with pytest.raises(ValueError, match=pattern):
        masked_adamw_step(t, [torch.ones(3)], [torch.zeros(3)], [torch.zeros(3)], None, **args)


def test_adamw_step_of_the_wrong_type_is_a_type_error():
    t = [torch.ones(3)]
    with pytest.raises(TypeError, match="step must be an int"):
        masked_adamw_step(t, [torch.ones(3)], [torch.zeros(3)], [torch.zeros(3)], None, step=2.0,
                          lr=1e-3)


def test_bad_input_leaves_tensors_untouched():
    p = [torch.ones(3), torch.ones(3)]
    with pytest.raises(TypeError):
        masked_sgd_step(p, [torch.ones(3), torch.ones(3)], None,
                        [None, torch.ones(3)], lr=0.1)  # second mask is not bool
    assert all(torch.equal(t, torch.ones(3)) for t in p)


def test_empty_lists_are_a_no_op():
    assert masked_sgd_step([], [], None, None, lr=0.1) == "torch"


# ---------------------------------------------------------------------- issue 17: non-finite


def _sgd_case(grad_value, dtype=torch.float32, p_value=0.5):
    p = [torch.full((7,), p_value, dtype=dtype), torch.full((3,), p_value, dtype=dtype)]
    g = [torch.full((7,), 0.1, dtype=dtype), torch.full((3,), 0.1, dtype=dtype)]
    g[1][2] = grad_value
    b = [torch.full_like(t, 0.25) for t in p]
    return p, g, b


def _same(tensors, values):
    return all(torch.equal(t, torch.full_like(t, v)) for t, v in zip(tensors, values))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e38])
def test_sgd_op_never_writes_nonfinite(backend, bad):
    """NaN/Inf gradients and an overflowing update (lr 10 x 1e38 = inf) write nothing."""
    p, g, b = _sgd_case(bad)
    with pytest.raises(FloatingPointError, match="nothing was written"):
        masked_sgd_step(p, g, b, None, lr=10.0, momentum=0.9, backend=backend)
    assert _same(p, (0.5, 0.5)) and _same(b, (0.25, 0.25))
    with pytest.warns(TrustfastWarning, match="skipped"):
        assert masked_sgd_step(p, g, b, None, lr=10.0, momentum=0.9, backend=backend,
                               nonfinite="skip") is None
    assert _same(p, (0.5, 0.5)) and _same(b, (0.25, 0.25))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_op_catches_float16_overflow_on_store(backend):
    """60000 + 10000 is finite in float32 but inf once rounded to float16 (max 65504)."""
    p, g, _ = _sgd_case(-10000.0, torch.float16, p_value=60000.0)
    with pytest.raises(FloatingPointError):
        masked_sgd_step(p, g, None, None, lr=1.0, backend=backend)
    assert _same(p, (60000.0, 60000.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [math.nan, 1e38])
def test_adamw_op_never_writes_nonfinite(backend, bad):
    p, g, m = _sgd_case(bad)
    v = [torch.ones_like(t) for t in p]
    with pytest.raises(FloatingPointError, match="nothing was written"):
        masked_adamw_step(p, g, m, v, None, step=3, lr=0.1, backend=backend)
    assert _same(p, (0.5, 0.5)) and _same(m, (0.25, 0.25)) and _same(v, (1.0, 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_op_overflow_of_the_update_itself(backend):
    """eps tiny and a tiny second moment: m / sqrt(v) is huge, lr * that overflows."""
    p = [torch.full((5,), 0.5)]
    g = [torch.full((5,), 1e-30)]
    m, v = [torch.full((5,), 1e30)], [torch.zeros(5)]
    with pytest.raises(FloatingPointError):
        masked_adamw_step(p, g, m, v, None, step=1, lr=1e30, eps=0.0, weight_decay=0.0,
                          beta1=0.5, backend=backend)
    assert _same(p, (0.5,)) and _same(m, (1e30,)) and _same(v, (0.0,))


def test_references_raise_and_write_nothing():
    p, g, b = _sgd_case(1e38)
    with pytest.raises(FloatingPointError):
        masked_sgd_step_reference(p, g, b, None, lr=10.0, momentum=0.9)
    assert _same(p, (0.5, 0.5)) and _same(b, (0.25, 0.25))
    p, g, m = _sgd_case(math.inf)
    v = [torch.ones_like(t) for t in p]
    with pytest.raises(FloatingPointError):
        masked_adamw_step_reference(p, g, m, v, None, step=1, lr=0.1)
    assert _same(p, (0.5, 0.5)) and _same(m, (0.25, 0.25))
    with pytest.warns(TrustfastWarning, match="skipped"):
        masked_adamw_step_reference(p, g, m, v, None, step=1, lr=0.1, nonfinite="skip")
    assert _same(p, (0.5, 0.5)) and _same(m, (0.25, 0.25)) and _same(v, (1.0, 1.0))
