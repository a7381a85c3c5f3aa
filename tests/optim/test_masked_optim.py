"""MaskedSGD / MaskedAdamW: torch.optim parity, masks, state_dict, non-finite policy."""

import copy
import warnings

import pytest
import torch
from conftest import KERNEL_BACKENDS
from torch import nn

from trustfast import TrustfastWarning
from trustfast.data import digits
from trustfast.models import SmallCNN
from trustfast.optim import MaskedAdamW, MaskedSGD
from trustfast.sparsity import global_magnitude_masks

BACKENDS = ["torch", *KERNEL_BACKENDS]
# The Triton interpreter runs the overflow cases in numpy, which warns on inf / NaN arithmetic.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


def _batches(n_steps, seed=0, batch=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_steps)]


def _model(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(width=4, hidden=16)


def _train(model, opt, batches):
    losses = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


SGD_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
    dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_masked_sgd_matches_torch_sgd_over_50_steps(backend, kw):
    ours, theirs = _model(), _model()
    batches = _batches(50)
    _train(ours, MaskedSGD(ours.parameters(), backend=backend, **kw), batches)
    _train(theirs, torch.optim.SGD(theirs.parameters(), **kw), batches)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_adamw_matches_torch_adamw_over_50_steps(backend):
    ours, theirs = _model(), _model()
    batches = _batches(50, seed=1)
    kw = dict(lr=2e-3, betas=(0.9, 0.99), weight_decay=0.05)
    _train(ours, MaskedAdamW(ours.parameters(), backend=backend, **kw), batches)
    _train(theirs, torch.optim.AdamW(theirs.parameters(), **kw), batches)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt_cls", [MaskedSGD, MaskedAdamW])
def test_pruned_weights_stay_exactly_zero_and_loss_falls(backend, opt_cls):
    torch.manual_seed(3)
    model = SmallCNN()
    masks = global_magnitude_masks(model, 0.5)
    kw = dict(lr=0.05, momentum=0.9, l1=1e-4) if opt_cls is MaskedSGD else dict(lr=5e-3, l1=1e-4)
    opt = opt_cls(model.parameters(), masks=masks, module=model, backend=backend, **kw)
    weights = dict(model.named_parameters())
    x, y = digits()[0].tensors

    def held_out_loss():
        with torch.no_grad():
            return nn.functional.cross_entropy(model(x[-256:]), y[-256:]).item()

    before = held_out_loss()
    _train(model, opt, [(x[i * 32 % 1280:][:32], y[i * 32 % 1280:][:32]) for i in range(100)])
    after = held_out_loss()
    assert after < 0.25 * before, (before, after)
    for name, m in masks.items():
        assert (weights[name][~m] == 0).all(), name
        assert (weights[name][m] != 0).float().mean() > 0.9, name  # kept weights still train
        for key, value in opt.state[weights[name]].items():
            if key not in ("mask", "step"):
                assert (value[~m] == 0).all(), f"{name} state {key}"


def test_set_masks_zeroes_at_once_and_accepts_lists_names_and_01_floats():
    model = _model()
    opt = MaskedSGD(model.parameters(), lr=0.1, momentum=0.9)
    params = list(model.parameters())
    w = params[0]
    float_mask = (torch.rand_like(w) > 0.5).float()
    opt.set_masks({"features.0.weight": float_mask}, module=model)
    assert opt.masks()[0].dtype == torch.bool
    assert (w[float_mask == 0] == 0).all()
    opt.set_masks([None] * len(params))
    assert all(m is None for m in opt.masks())
    opt.set_masks({w: float_mask.bool()})
    assert torch.equal(opt.masks()[0], float_mask.bool())


@pytest.mark.parametrize(
    "masks, kwargs, exc, pattern",
    [
        ({"nope.weight": None}, "module", ValueError, r"no parameter named \['nope.weight'\]"),
        ({"features.0.weight": None}, None, ValueError, "pass module="),
        ([None], None, ValueError, "masks has 1 entries"),
        ({"features.0.weight": torch.full((4, 1, 3, 3), 0.5)}, "module", ValueError,
         "hold only 0 and 1"),
        ({"features.0.weight": torch.ones(3, 3, dtype=torch.bool)}, "module", ValueError,
         "has shape"),
        ({"features.0.weight": torch.ones(4, 1, 3, 3, dtype=torch.bool, device="meta")}, "module",
         ValueError, "is on meta"),
    ],
)
def test_set_masks_rejects_bad_masks(masks, kwargs, exc, pattern):
    model = _model()
    opt = MaskedSGD(model.parameters(), lr=0.1)
    with pytest.raises(exc, match=pattern):
        opt.set_masks(masks, module=model if kwargs == "module" else None)


@pytest.mark.parametrize("opt_cls, kw", [(MaskedSGD, dict(lr=0.05, momentum=0.9, l1=1e-4)),
                                         (MaskedAdamW, dict(lr=1e-3, l1=1e-4))])
def test_state_dict_round_trip_resumes_identically(opt_cls, kw):
    model = _model()
    masks = global_magnitude_masks(model, 0.5)
    opt = opt_cls(model.parameters(), masks=masks, module=model, **kw)
    batches = _batches(10, seed=7)
    _train(model, opt, batches[:5])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, batches[5:])

    clone = _model(seed=99)
    clone.load_state_dict(saved_model)
    opt2 = opt_cls(clone.parameters(), **kw)
    opt2.load_state_dict(saved_opt)
    assert [m is None for m in opt2.masks()] == [m is None for m in opt.masks()]
    assert all(m is None or m.dtype == torch.bool for m in opt2.masks())
    _train(clone, opt2, batches[5:])
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_param_groups_use_their_own_hyperparameters():
    a, b = nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(4))
    opt = MaskedSGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.5, "l1": 0.2}], lr=0.0)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    opt.step()
    assert torch.allclose(a, torch.full((4,), 0.9))
    assert torch.allclose(b, torch.full((4,), 1 - 0.5 * 1.2))


def test_proximal_l1_yields_exact_zeros_subgradient_does_not():
    torch.manual_seed(0)
    zeros = {}
    for mode in ("proximal", "subgradient"):
        p = nn.Parameter(torch.randn(1000) * 0.01)
        opt = MaskedSGD([p], lr=0.1, l1=0.05, l1_mode=mode)
        for _ in range(5):
            p.grad = torch.randn(1000) * 1e-3
            opt.step()
        zeros[mode] = int((p == 0).sum())
    assert zeros["proximal"] > 500 and zeros["subgradient"] < 10, zeros


def test_nonfinite_gradient_skips_group_counts_and_warns_once():
    p = nn.Parameter(torch.ones(3))
    opt = MaskedSGD([p], lr=0.1)
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    with pytest.warns(TrustfastWarning, match="non-finite gradient"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))
    p.grad = torch.tensor([float("inf"), 1.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # second skip: no second warning
    assert opt.param_groups[0]["nonfinite_skips"] == 2
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 0.9))


def test_nonfinite_raise_policy():
    p = nn.Parameter(torch.ones(3))
    opt = MaskedAdamW([p], lr=0.1, nonfinite="raise")
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))
    assert "step" not in opt.state[p] or opt.state[p]["step"].item() == 0


@pytest.mark.parametrize(
    "cls, kw, pattern",
    [
        (MaskedSGD, dict(lr=-1.0), "lr must be a number >= 0"),
        (MaskedSGD, dict(lr=0.1, nesterov=True), "nesterov=True needs momentum"),
        (MaskedSGD, dict(lr=0.1, nonfinite="ignore"), "nonfinite must be one of"),
        (MaskedAdamW, dict(lr=0.1, betas=(0.9, 1.0)), r"betas\[1\] must be a number >= 0 and < 1"),
        (MaskedAdamW, dict(lr=0.1, l1=-1.0), "l1 must be a number >= 0"),
    ],
)
def test_constructor_rejects_bad_hyperparameters(cls, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls([nn.Parameter(torch.ones(2))], **kw)


def test_non_contiguous_parameter_and_gradient_are_handled():
    base = nn.Parameter(torch.randn(6, 4))
    # a parameter that is a transposed view is unusual, but must not break the optimizer
    p = nn.Parameter(torch.randn(4, 6).t())
    assert not p.is_contiguous()
    opt = MaskedSGD([p, base], lr=0.1, momentum=0.9)
    g = torch.randn(6, 4)
    p.grad, base.grad = g.t().contiguous().t(), g.t().contiguous().t()
    expected = p.detach() - 0.1 * g
    opt.step()
    torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(base.detach().clone(), base.detach())


# ---------------------------------------------------------------------- issue 17: bad input


@pytest.mark.parametrize(
    "cls, kw, exc, name",
    [
        (MaskedSGD, dict(lr="0.1"), TypeError, "lr"),
        (MaskedSGD, dict(lr=None), TypeError, "lr"),
        (MaskedSGD, dict(lr=float("nan")), ValueError, "lr"),
        (MaskedSGD, dict(lr=0.1, momentum="0.9"), TypeError, "momentum"),
        (MaskedSGD, dict(lr=0.1, momentum=-0.5), ValueError, "momentum"),
        (MaskedSGD, dict(lr=0.1, dampening=2.0), ValueError, "dampening"),
        (MaskedSGD, dict(lr=0.1, weight_decay=[0.1]), TypeError, "weight_decay"),
        (MaskedSGD, dict(lr=0.1, l1=float("inf")), ValueError, "l1"),
        (MaskedSGD, dict(lr=0.1, l1_mode="prox"), ValueError, "l1_mode"),
        (MaskedSGD, dict(lr=0.1, nesterov="yes"), TypeError, "nesterov"),
        (MaskedSGD, dict(lr=0.1, backend="cuda"), ValueError, "backend"),
        (MaskedSGD, dict(lr=0.1, nonfinite=1), TypeError, "nonfinite"),
        (MaskedAdamW, dict(lr="1e-3"), TypeError, "lr"),
        (MaskedAdamW, dict(betas=0.9), TypeError, "betas"),
        (MaskedAdamW, dict(betas=(0.9,)), ValueError, "betas"),
        (MaskedAdamW, dict(betas=("0.9", 0.999)), TypeError, r"betas\[0\]"),
        (MaskedAdamW, dict(eps="1e-8"), TypeError, "eps"),
        (MaskedAdamW, dict(eps=-1e-8), ValueError, "eps"),
        (MaskedAdamW, dict(weight_decay=True), TypeError, "weight_decay"),
    ],
)
def test_every_hyperparameter_is_checked_by_name(cls, kw, exc, name):
    with pytest.raises(exc, match=name):
        cls([nn.Parameter(torch.ones(2))], **kw)


def test_param_group_hyperparameters_are_checked_and_a_bad_group_is_not_kept():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    with pytest.raises(TypeError, match="lr"):
        MaskedSGD([{"params": [a], "lr": "0.5"}], lr=0.1)
    opt = MaskedSGD([a], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[1\] momentum"):
        opt.add_param_group({"params": [b], "momentum": -1.0})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64])
@pytest.mark.parametrize("cls", [MaskedSGD, MaskedAdamW])
def test_non_floating_parameters_are_refused_when_the_optimizer_is_made(cls, dtype):
    p = torch.ones(3, dtype=dtype)
    with pytest.raises(TypeError, match=r"params\[1\] must be a .*floating"):
        cls([torch.ones(2), p], lr=0.1)


def _overflowing(cls, backend, **kw):
    """A gradient of 1e38 with lr = 10: the update is -inf in float32."""
    p = nn.Parameter(torch.full((5,), 0.5))
    opt = cls([p], lr=10.0, backend=backend, **kw)
    p.grad = torch.full((5,), 1.0)  # one good step first, so the state is not fresh
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    weights = p.detach().clone()
    p.grad = torch.full((5,), 1e38)
    return p, opt, before, weights


def _unchanged(p, opt, before, weights):
    assert torch.equal(p.detach(), weights) and torch.isfinite(p).all()
    for key, value in before.items():
        assert torch.equal(opt.state[p][key], value), key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kw", [(MaskedSGD, {}), (MaskedSGD, dict(momentum=0.9)),
                                     (MaskedAdamW, dict(eps=1e-30, betas=(0.0, 0.0)))])
def test_overflowing_update_is_skipped_with_a_warning(cls, kw, backend):
    p, opt, before, weights = _overflowing(cls, backend, **kw)
    with pytest.warns(TrustfastWarning, match="non-finite gradient or update"):
        opt.step()
    _unchanged(p, opt, before, weights)
    assert opt.param_groups[0]["nonfinite_skips"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_update_raises_under_the_raise_policy(backend):
    p, opt, before, weights = _overflowing(MaskedSGD, backend, momentum=0.9, nonfinite="raise")
    with pytest.raises(FloatingPointError, match="no parameter was updated"):
        opt.step()
    _unchanged(p, opt, before, weights)


@pytest.mark.parametrize("backend", ["torch", KERNEL_BACKENDS[0]])
def test_group_is_updated_whole_or_not_at_all(backend):
    """A float64 tensor (its own bucket) beside a float32 one whose update overflows."""
    ok = nn.Parameter(torch.ones(4, dtype=torch.float64))
    bad = nn.Parameter(torch.ones(4))
    opt = MaskedSGD([ok, bad], lr=10.0, momentum=0.9, backend=backend)
    ok.grad, bad.grad = torch.ones_like(ok), torch.full((4,), 1e38)
    with pytest.warns(TrustfastWarning):
        opt.step()
    assert torch.equal(ok.detach(), torch.ones_like(ok))
    assert all("momentum_buffer" not in opt.state[q] for q in (ok, bad))  # first step undone
    ok.grad, bad.grad = torch.ones_like(ok), torch.ones(4)
    opt.step()  # the next good step is a torch.optim.SGD first step (buffer = d)
    ref = nn.Parameter(torch.ones(4))
    ref.grad = torch.ones(4)
    torch.optim.SGD([ref], lr=10.0, momentum=0.9).step()
    torch.testing.assert_close(bad.detach(), ref.detach())


def test_nan_gradient_at_a_pruned_position_still_skips_the_optimizer_step():
    p = nn.Parameter(torch.ones(4))
    opt = MaskedSGD([p], lr=0.1, masks=[torch.tensor([True, True, False, True])])
    p.grad = torch.tensor([1.0, 1.0, float("nan"), 1.0])
    with pytest.warns(TrustfastWarning):
        opt.step()
    assert torch.equal(p.detach(), torch.tensor([1.0, 1.0, 0.0, 1.0]))
