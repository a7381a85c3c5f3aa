"""Bad input to the masked update ops: a clear error that names the argument."""

import math

import pytest
import torch

from trustfast.ops import masked_adamw_step, masked_sgd_step


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
         r"params\[0\] must be a floating"),
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
        (dict(step=2.0), "step must be an int >= 1"),
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


def test_bad_input_leaves_tensors_untouched():
    p = [torch.ones(3), torch.ones(3)]
    with pytest.raises(TypeError):
        masked_sgd_step(p, [torch.ones(3), torch.ones(3)], None,
                        [None, torch.ones(3)], lr=0.1)  # second mask is not bool
    assert all(torch.equal(t, torch.ones(3)) for t in p)


def test_empty_lists_are_a_no_op():
    assert masked_sgd_step([], [], None, None, lr=0.1) == "torch"
