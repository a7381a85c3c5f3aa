"""Property test: drawn shapes, hyperparameters and masks; every kernel matches the reference."""

import pytest
import torch
from conftest import KERNEL_BACKENDS, assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustfast.ops import (
    masked_adamw_step,
    masked_adamw_step_reference,
    masked_sgd_step,
    masked_sgd_step_reference,
)

shapes = st.lists(st.lists(st.integers(1, 17), min_size=1, max_size=3).map(tuple),
                  min_size=1, max_size=4)
unit = st.floats(0.0, 0.99)
small = st.floats(0.0, 0.1)


@st.composite
def sgd_case(draw):
    momentum = draw(st.sampled_from([0.0, draw(unit)]))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(
        shapes=draw(shapes), seed=draw(st.integers(0, 2**31 - 1)),
        lr=draw(st.floats(0.0, 1.0)), momentum=momentum,
        dampening=0.0 if nesterov else draw(st.sampled_from([0.0, draw(unit)])),
        nesterov=nesterov, weight_decay=draw(small), l1=draw(small),
        l1_mode=draw(st.sampled_from(["subgradient", "proximal"])),
        mask_p=draw(st.sampled_from([None, 0.0, 0.5, 1.0])),
    )


def _data(shapes, seed, mask_p, n_state):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [torch.randn(s, generator=g) for s in shapes]
    states = [[torch.randn(s, generator=g).abs() for s in shapes] for _ in range(n_state)]
    masks = None if mask_p is None else [torch.rand(s, generator=g) >= mask_p for s in shapes]
    return params, grads, states, masks


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sgd_case())
def test_sgd_any_case(backend, case):
    case = dict(case)
    shapes_, seed, mask_p = case.pop("shapes"), case.pop("seed"), case.pop("mask_p")
    params, grads, (bufs,), masks = _data(shapes_, seed, mask_p, 1)
    ref_p, ref_b = [p.double() for p in params], [b.double() for b in bufs]
    masked_sgd_step_reference(ref_p, [g.double() for g in grads], ref_b, masks, **case)
    masked_sgd_step(params, grads, bufs, masks, backend=backend, **case)
    for i in range(len(params)):
        assert_close(params[i], ref_p[i], name=f"params[{i}]")
        if case["momentum"]:
            assert_close(bufs[i], ref_b[i], name=f"bufs[{i}]")
        if masks is not None:
            assert (params[i][~masks[i]] == 0).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes_=shapes, seed=st.integers(0, 2**31 - 1), step=st.integers(1, 1000),
       lr=st.floats(0.0, 0.1), beta1=unit, beta2=unit, wd=small, l1=small,
       l1_mode=st.sampled_from(["subgradient", "proximal"]),
       mask_p=st.sampled_from([None, 0.0, 0.5, 1.0]))
def test_adamw_any_case(backend, shapes_, seed, step, lr, beta1, beta2, wd, l1, l1_mode, mask_p):
    params, grads, (m, v), masks = _data(shapes_, seed, mask_p, 2)
    hyper = dict(step=step, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd, l1=l1,
                 l1_mode=l1_mode)
    ref = [[t.double() for t in ts] for ts in (params, m, v)]
    masked_adamw_step_reference(ref[0], [g.double() for g in grads], ref[1], ref[2], masks,
                                **hyper)
    masked_adamw_step(params, grads, m, v, masks, backend=backend, **hyper)
    for name, ours, theirs in zip(("params", "exp_avg", "exp_avg_sq"), (params, m, v), ref):
        for i in range(len(params)):
            assert_close(ours[i], theirs[i], name=f"{name}[{i}]")
