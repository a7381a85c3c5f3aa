"""T0: the torch reference of the masked update against torch.optim and closed forms (float64)."""

import math

import pytest
import torch

from trustfast.ops import masked_adamw_step_reference, masked_sgd_step_reference


def _tensors(seed, shapes=((5, 3), (7,), (2, 2, 2)), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


@pytest.mark.parametrize(
    "kw",
    [dict(momentum=0.0), dict(momentum=0.9, weight_decay=1e-2),
     dict(momentum=0.9, dampening=0.3, weight_decay=5e-4),
     dict(momentum=0.8, nesterov=True, weight_decay=1e-3)],
)
def test_sgd_reference_equals_torch_optim_sgd(kw):
    params = [p.requires_grad_() for p in _tensors(0)]
    mine = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in mine]
    opt = torch.optim.SGD(params, lr=0.1, foreach=False, **kw)
    for step in range(10):
        grads = _tensors(100 + step)
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        hyper = dict(kw)
        if step == 0:
            hyper["dampening"] = 0.0  # torch starts the buffer at d, undampened
        masked_sgd_step_reference(mine, grads, bufs, None, lr=0.1, **hyper)
    for p, q in zip(params, mine):
        torch.testing.assert_close(q, p.detach(), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.9)])  # lerp weight < and >= 0.5
def test_adamw_reference_equals_torch_optim_adamw(betas):
    params = [p.requires_grad_() for p in _tensors(1)]
    mine = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in mine]
    v = [torch.zeros_like(p) for p in mine]
    opt = torch.optim.AdamW(params, lr=0.01, betas=betas, weight_decay=0.1, foreach=False)
    for step in range(1, 11):
        grads = _tensors(200 + step)
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        masked_adamw_step_reference(mine, grads, m, v, None, step=step, lr=0.01, beta1=betas[0],
                                    beta2=betas[1], weight_decay=0.1)
    for p, q in zip(params, mine):
        torch.testing.assert_close(q, p.detach(), rtol=1e-12, atol=1e-13)


def test_proximal_l1_is_soft_thresholding():
    p = [torch.tensor([0.5, -0.05, 0.02, -1.0, 0.0], dtype=torch.float64)]
    g = [torch.zeros(5, dtype=torch.float64)]
    masked_sgd_step_reference(p, g, None, None, lr=0.1, l1=0.3, l1_mode="proximal")
    # lam = lr * l1 = 0.03: shrink toward 0, entries with |p| <= 0.03 become exactly 0
    expected = torch.tensor([0.47, -0.02, 0.0, -0.97, 0.0], dtype=torch.float64)
    torch.testing.assert_close(p[0], expected, rtol=0, atol=1e-15)
    assert p[0][2] == 0 and p[0][4] == 0


def test_subgradient_l1_adds_sign_to_gradient():
    p = [torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64)]
    g = [torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)]
    masked_sgd_step_reference(p, g, None, None, lr=0.1, l1=0.2, weight_decay=0.5)
    # d = g + wd * p + l1 * sign(p)
    expected = torch.tensor([0.5 - 0.1 * (1 + 0.25 + 0.2), -0.5 - 0.1 * (1 - 0.25 - 0.2), -0.1],
                            dtype=torch.float64)
    torch.testing.assert_close(p[0], expected, rtol=0, atol=1e-15)


def test_mask_zeroes_weights_and_state_even_with_nan_gradient():
    p = [torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)]
    g = [torch.tensor([0.1, math.nan, math.inf, 0.1], dtype=torch.float64)]
    keep = [torch.tensor([True, False, False, True])]
    buf = [torch.ones(4, dtype=torch.float64)]
    masked_sgd_step_reference(p, g, buf, keep, lr=0.5, momentum=0.5)
    assert p[0][1] == 0 and p[0][2] == 0 and buf[0][1] == 0 and buf[0][2] == 0
    # kept entries: b = 0.5 * 1 + 0.1 = 0.6, p = p - 0.5 * 0.6
    torch.testing.assert_close(p[0][[0, 3]], torch.tensor([0.7, 3.7], dtype=torch.float64))
    m, v = [torch.ones(4, dtype=torch.float64)], [torch.ones(4, dtype=torch.float64)]
    masked_adamw_step_reference(p, g, m, v, keep, step=3, lr=0.1)
    for t in (p[0], m[0], v[0]):
        assert t[1] == 0 and t[2] == 0 and torch.isfinite(t).all()
