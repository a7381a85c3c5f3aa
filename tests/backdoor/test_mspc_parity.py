"""Parity of `identify_mspc` with the paper's code, OPTML-Group/BackdoorMSPC (`bilevel_full.py`,
`bilevel_losses.py`): its formulas, re-written here in our own words as oracles (one forward per
scale, gradients accumulated scale by scale, SGD with momentum and weight decay written out), on
a tiny random float64 model; and the warm start's shift tau on a case with a known answer."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close
from torch import nn
from torch.nn import functional as fn

from trustfast.backdoor import MSPCConfig, identify_mspc, masked_scaled_prediction_consistency
from trustfast.backdoor.identify import mspc_inner_loss

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SCALES = [2.0, 3.0, 5.0, 7.0, 12.0]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5)).double().eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


# -- the oracles: BackdoorMSPC's formulas, one scale at a time ------------------------------------

def oracle_batch_loss(model, x, w, mask, scales, tau, lam) -> torch.Tensor:
    """bilevel_full.py's inner loss of a batch: for each scale, the w-weighted sum of
    KL(softmax(f(x)) || softmax(f(clip(s (x - tau) m)))) over the batch, over B and over |S|
    (backpropagated scale by scale there; summed here), plus lam times the l1 norm of the mask.
    The KL is SF_loss's: the log of each softmax, P (log P - log Q) summed over classes."""
    total = lam * mask.abs().sum()
    for s in scales:
        p = fn.softmax(model(x), dim=1)
        q = fn.softmax(model(torch.clamp(s * ((x - tau) * mask), 0, 1)), dim=1)
        kl = (p * (torch.log(p) - torch.log(q))).sum(1)
        total = total + torch.dot(w, kl) / len(x) / len(scales)
    return total


@torch.no_grad()
def oracle_mspc(model, x, scales, tau, mask=None) -> torch.Tensor:
    """l_MSPC_tau (mask None: the warm start) and l_MSPC (with the mask): the prediction on x
    against the one on clip(s (x - tau) m), +1 when equal, -1 otherwise, averaged over scales."""
    base = model(x).argmax(1)
    shifted = x - tau if mask is None else (x - tau) * mask
    total = torch.zeros(len(x), dtype=x.dtype)
    for s in scales:
        total += 2.0 * (model(torch.clamp(s * shifted, 0, 1)).argmax(1) == base).to(x) - 1
    return total / len(scales)


def oracle_bilevel(model, images, scales, tau, lam, lr, momentum, weight_decay, batch_size,
                   inner_epochs, outer_rounds):
    """bilevel_full.py's loop in sequential batch order: warm start, then per outer round
    `inner_epochs` passes of SGD steps (heavy-ball momentum over the weight-decayed gradient,
    one buffer for the whole run) each followed by clipping m to [0, 1], then w = 1[MSPC > 0]."""
    n = len(images)
    w = (oracle_mspc(model, images, scales, tau) > 0).to(images)
    warm = w.clone()
    mask = torch.ones(images.shape[-2:], dtype=images.dtype)
    velocity = None
    for _ in range(outer_rounds):
        for _ in range(inner_epochs):
            for start in range(0, n, batch_size):
                m = mask.clone().requires_grad_(True)
                x = images[start:start + batch_size]
                loss = oracle_batch_loss(model, x, w[start:start + batch_size], m, scales, tau,
                                         lam)
                (grad,) = torch.autograd.grad(loss, m)
                grad = grad + weight_decay * mask
                velocity = grad if velocity is None else momentum * velocity + grad
                mask = torch.clamp(mask - lr * velocity, 0, 1)
        scores = oracle_mspc(model, images, scales, tau, mask)
        w = (scores > 0).to(images)
    return warm, mask, scores


# -- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.0, 0.1, 0.2])
def test_inner_loss_and_gradient_match_the_reference_formula(tau):
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    x = _images(7)
    w = (torch.rand(7, generator=gen) > 0.5).double()
    mask = torch.rand(1, 1, 6, 6, generator=gen, dtype=torch.float64).requires_grad_(True)
    logp = fn.log_softmax(model(x), dim=1)
    scales = torch.tensor(SCALES, dtype=torch.float64)
    ours = mspc_inner_loss(model, x, logp, w, mask, scales, tau, lam=0.01)
    (g_ours,) = torch.autograd.grad(ours, mask)
    m2 = mask.detach()[0, 0].clone().requires_grad_(True)  # the reference's (H, W) mask
    ref = oracle_batch_loss(model, x, w, m2, SCALES, tau, lam=0.01)
    (g_ref,) = torch.autograd.grad(ref, m2)
    assert_close(ours.detach(), ref.detach(), name="inner loss")
    assert_close(g_ours[0, 0], g_ref, name="d loss / d mask")
    assert 0 < float(w.sum()) < len(w) and float(g_ref.abs().max()) > 0.01


def test_contrastive_inner_loss_is_its_formula():
    """Our variant: flagged mean KL minus the capped unflagged mean KL, same l1 term."""
    model = _model()
    x = _images(6)
    w = torch.tensor([1.0, 0, 1, 0, 0, 1], dtype=torch.float64)
    mask = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(3),
                      dtype=torch.float64)
    logp = fn.log_softmax(model(x), dim=1)
    scales = torch.tensor(SCALES, dtype=torch.float64)
    # the reference loss with w and with 1 - w gives each group's sum of the KL, over B
    no_l1 = {"tau": 0.1, "lam": 0.0}
    flagged = oracle_batch_loss(model, x, w, mask, SCALES, **no_l1) * len(x) / 3
    clean = oracle_batch_loss(model, x, 1 - w, mask, SCALES, **no_l1) * len(x) / 3
    l1 = 0.01 * mask.sum()
    got = mspc_inner_loss(model, x, logp, w, mask, scales, 0.1, 0.01, "contrastive",
                          kl_cap=float("inf"))
    assert_close(got, flagged - clean + l1, name="contrastive loss")
    capped = mspc_inner_loss(model, x, logp, w, mask, scales, 0.1, 0.01, "contrastive",
                             kl_cap=0.0)  # a cap of 0 removes the clean term
    assert_close(capped, flagged + l1, name="contrastive loss, kl_cap 0")


def test_kl_stays_finite_where_the_reference_formula_is_nan():
    """Saturated logits: the reference's log(softmax) is -inf, and 0 * -inf is NaN; we use
    log_softmax."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 3)).double()
    with torch.no_grad():
        model[1].weight.fill_(0.0)
        model[1].weight[0] = 800.0  # class 0 dominates by 800 x the pixel sum
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.full((2, 3, 2, 2), 0.5, dtype=torch.float64)
    mask = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    w = torch.ones(2, dtype=torch.float64)
    assert torch.isnan(oracle_batch_loss(model, x, w, mask[0, 0], [2.0], 0.0, 0.0))
    logp = fn.log_softmax(model(x), dim=1)
    loss = mspc_inner_loss(model, x, logp, w, mask, torch.tensor([2.0]), 0.0, 0.0)
    assert torch.isfinite(loss) and float(loss) >= 0


@pytest.mark.parametrize("tau", [0.0, 0.15])
def test_scores_match_the_reference_rule(tau):
    model = _model()
    x = _images(30)
    mask = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(4),
                      dtype=torch.float64)
    warm = masked_scaled_prediction_consistency(model, x, None, tau, SCALES)
    ref = oracle_mspc(model, x, SCALES, tau)
    assert torch.allclose(warm.double(), ref, atol=1e-6)  # scores are float32, k / |S| each
    masked = masked_scaled_prediction_consistency(model, x, mask, tau, SCALES)
    assert torch.allclose(masked.double(), oracle_mspc(model, x, SCALES, tau, mask[0, 0]),
                          atol=1e-6)
    assert len(set(ref.tolist())) >= 3  # not a constant


def test_bilevel_loop_matches_the_reference_loop():
    """The whole run (warm start, 2 outer rounds x 2 epochs of 3 batches, SGD momentum + weight
    decay, clipping, the outer rule) against the oracle, in the reference's batch order."""
    model = _model()
    images = _images(24, seed=5)
    cfg = MSPCConfig(scales=SCALES, tau=0.1, lam=0.01, inner_lr=0.5, batch_size=8,
                     inner_epochs=2, outer_rounds=2, shuffle=False)
    got = identify_mspc(model, images, cfg, progress=False)
    warm, mask, scores = oracle_bilevel(model, images, SCALES, cfg.tau, cfg.lam, cfg.inner_lr,
                                        cfg.momentum, cfg.weight_decay, cfg.batch_size,
                                        cfg.inner_epochs, cfg.outer_rounds)
    assert torch.equal(got.warm_start_scores > 0, warm.bool())
    assert_close(got.mask[0, 0], mask, name="mask")
    assert torch.allclose(got.scores.double(), scores, atol=1e-6)
    assert torch.equal(got.flagged, scores > 0)
    assert 0 < float(mask.min()) < float(mask.max()) < 1  # the test moved the mask, unclipped
    assert 0 < int(warm.sum()) < 24


class _Brightness(nn.Module):
    """Class 1 when the image's mean intensity exceeds 0.5, else class 0."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.linear.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x):
        return self.linear(x.mean((1, 2, 3)).unsqueeze(1))


def test_warm_start_respects_tau():
    """Constant images of value v under scales 2..12: with tau = 0 the scaled value is s v,
    with tau = 0.1 it is s (v - 0.1), clipped to [0, 1]. v = 0.12: tau 0 keeps class 0 at
    s = 2, 3, 4 only (MSPC (3 - 8) / 11); tau 0.1 keeps it at every scale (s 0.02 <= 0.24).
    v = 0.3: tau 0 flips at every scale (-1); tau 0.1 keeps it at s = 2 only (0.2 * 2 = 0.4)."""
    values = torch.tensor([0.04, 0.12, 0.3, 0.55, 0.7])
    images = values.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    expected = {0.0: [1.0, -5 / 11, -1.0, 1.0, 1.0], 0.1: [1.0, 1.0, -9 / 11, 1.0, 1.0]}
    for tau, want in expected.items():
        cfg = MSPCConfig(tau=tau, inner_epochs=1, outer_rounds=1, batch_size=5)
        result = identify_mspc(_Brightness(), images, cfg, progress=False)
        assert torch.allclose(result.warm_start_scores, torch.tensor(want)), tau
        assert result.history[0]["n_flagged"] == sum(v > 0 for v in want)
