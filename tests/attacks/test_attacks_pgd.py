"""trustfast.attacks.PGD against torchattacks 3.5.1 (same arithmetic, so the same images), its
invariants (eps ball, box, seeds, several budgets), restart selection, custom losses, model
modes, bad input, and robust_accuracy end to end on digits."""

import copy
import json

import pytest
import torch
import torchattacks
from conftest import KERNEL_BACKENDS, mismatch_report
from torch import nn
from torch.nn import functional as fn
from torch.utils.data import DataLoader

from trustfast.attacks.pgd import PGD
from trustfast.attacks.robustness import robust_accuracy
from trustfast.data import digits
from trustfast.models import SmallCNN

ALL_BACKENDS = [pytest.param("torch", id="torch")] + KERNEL_BACKENDS
N = 8  # a power of two: torchattacks' batch-mean loss scales the gradient exactly by 1/N
HALF_ULP_BELOW_ONE = {torch.float32: 2.0**-25, torch.float64: 2.0**-54}


@pytest.fixture(scope="module", autouse=True)
def _threads(one_intra_op_thread):
    yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SmallCNN().double()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(N, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (N,), generator=g)
    return x, y


def _assert_equal(actual, expected, name, tol=0.0):
    msg = mismatch_report(actual, expected, tol, 0.0)
    assert not msg, f"{name}: {msg}"


def _per_sample_ce(model, images, labels):
    with torch.no_grad():
        return fn.cross_entropy(model(images), labels, reduction="none")


def _linf_dist(adv, x):
    return (adv.double() - x.double()).abs().flatten(1).amax(1)


# ------------------------------------------------------------------ parity with torchattacks


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_linf_matches_torchattacks(model, batch, backend):
    x, y = batch
    # Triton has no float64 kernel; in float32 with N = 8 the sign of the gradient still agrees
    cases = [(model, x)] if backend != "triton" else []
    m32 = copy.deepcopy(model).float()
    cases.append((m32, x.float()))
    for net, images in cases:
        expected = torchattacks.PGD(net, eps=8 / 255, alpha=2 / 255, steps=10,
                                    random_start=False)(images, y)
        ours = PGD(net, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False,
                   backend=backend)(images, y)
        assert ours.dtype == images.dtype and ours.shape == images.shape
        _assert_equal(ours, expected, f"{images.dtype} PGD", tol=1e-10)
        assert not torch.equal(ours, images)


def test_targeted_matches_torchattacks(model, batch):
    x, _ = batch
    targets = torch.arange(N) % 10
    atk = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)
    atk.set_mode_targeted_by_label(quiet=True)
    expected = atk(x, targets)
    ours = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False,
               targeted=True)(x, targets)
    _assert_equal(ours, expected, "targeted PGD", tol=1e-10)
    untargeted = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(x, targets)
    assert not torch.equal(ours, untargeted)
    # towards the target: its cross-entropy went down
    assert (_per_sample_ce(model, ours, targets) < _per_sample_ce(model, x, targets)).all()


def test_l2_matches_torchattacks_pgdl2(model, batch):
    x, y = batch
    expected = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=10, random_start=False)(x, y)
    ours = PGD(model, eps=0.5, alpha=0.1, steps=10, random_start=False, norm="l2")(x, y)
    # Not bit-exact (measured 7e-10): torchattacks' gradient is of the batch-MEAN loss, ours of
    # the per-sample sum, so its +1e-10 division guard weighs N times more against ||g||.
    _assert_equal(ours, expected, "PGD L2", tol=1e-8)
    assert (ours - x).flatten(1).norm(dim=1).max() > 0.4  # the budget is actually used


def test_normalization_matches_torchattacks(model, batch):
    x, y = batch
    mean, std = [0.5], [0.25]
    atk = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)
    atk.set_normalization_used(mean=mean, std=std)
    # torchattacks takes and returns normalized images; ours takes and returns [0, 1] images
    expected = atk((x - 0.5) / 0.25, y)
    ours = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False,
               normalization=(mean, std))(x, y)
    _assert_equal((ours - 0.5) / 0.25, expected, "normalized PGD")
    plain = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(x, y)
    assert not torch.equal(ours, plain)


# ------------------------------------------------------------------ invariants


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_output_in_ball_and_box(model, batch, norm):
    x, y = batch
    eps = 8 / 255 if norm == "linf" else 0.5
    for seed in range(3):
        adv = PGD(model, eps=eps, alpha=eps / 4, steps=5, norm=norm, seed=seed)(x, y)
        assert adv.min() >= 0 and adv.max() <= 1
        if norm == "linf":
            assert (_linf_dist(adv, x) <= eps + HALF_ULP_BELOW_ONE[torch.float64]).all()
        else:
            assert ((adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-9)).all()
        assert not torch.equal(adv, x)


def test_several_eps_in_one_call(model, batch):
    x, y = batch
    budgets = [0.0, 2 / 255, 8 / 255]
    adv = PGD(model, eps=budgets, alpha=2 / 255, steps=5, seed=0)(x, y)
    assert adv.shape == (3, *x.shape)
    _assert_equal(adv[0], x, "eps = 0 slice")
    for k, eps in enumerate(budgets):
        dist = _linf_dist(adv[k], x)
        assert (dist <= eps + HALF_ULP_BELOW_ONE[torch.float64]).all(), (eps, dist)
        if eps > 0:
            assert dist.max() > eps / 2
    # without random starts (their draws depend on the tiling) a slice is the single-eps attack
    many = PGD(model, eps=budgets[1:], alpha=[0.5 / 255, 2 / 255], steps=5,
               random_start=False)(x, y)
    for k, (eps, alpha) in enumerate(zip(budgets[1:], [0.5 / 255, 2 / 255])):
        one = PGD(model, eps=eps, alpha=alpha, steps=5, random_start=False)(x, y)
        _assert_equal(many[k], one, f"eps {eps} slice vs single call", tol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_returns_clean_images(model, batch, norm):
    x, y = batch
    for random_start in (True, False):
        adv = PGD(model, eps=0, alpha=0.1, steps=3, norm=norm, random_start=random_start,
                  seed=0)(x, y)
        _assert_equal(adv, x, f"{norm} random_start={random_start}")


def test_seed_reproducible_and_different_seeds_differ(model, batch):
    x, y = batch
    a = PGD(model, steps=3, seed=7)(x, y)
    b = PGD(model, steps=3, seed=7)(x, y)
    c = PGD(model, steps=3, seed=8)(x, y)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_inputs_not_modified_and_weights_get_no_grad(model, batch):
    x, y = batch
    x0, y0 = x.clone(), y.clone()
    PGD(model, steps=2, seed=0)(x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------ restarts and best iterate


def _starts(x, eps_per_tile, reps_tiles, seed, norm):
    """PGD._random_start's draws: one call over the (restart, eps, sample)-tiled batch."""
    xt = x.repeat(reps_tiles, 1, 1, 1)
    eps_b = eps_per_tile.view(-1, 1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    if norm == "linf":
        noise = torch.rand(xt.shape, generator=gen, dtype=x.dtype) * 2 - 1
        return torch.clamp(xt + noise * eps_b, 0, 1)
    delta = torch.randn(xt.shape, generator=gen, dtype=x.dtype)
    norms = delta.flatten(1).norm(dim=1).view_as(eps_b)
    radius = torch.rand(eps_b.shape, generator=gen, dtype=x.dtype)
    return torch.clamp(xt + delta * radius / norms * eps_b, 0, 1)


@pytest.mark.parametrize("norm,budgets", [("linf", [2 / 255, 8 / 255]), ("l2", [0.5])])
def test_restarts_pick_the_highest_loss_start(model, batch, norm, budgets):
    """steps=0: the result is one of the random starts, the one with the highest loss."""
    x, y = batch
    reps, n_eps = 4, len(budgets)
    adv = PGD(model, eps=budgets, alpha=0.0, steps=0, restarts=reps, norm=norm, seed=3)(x, y)
    eps = torch.tensor(budgets, dtype=x.dtype).repeat_interleave(N).repeat(reps)
    starts = _starts(x, eps, reps * n_eps, 3, norm)
    losses = _per_sample_ce(model, starts, y.repeat(reps * n_eps)).view(reps, n_eps * N)
    pick = losses.argmax(0)
    assert len(set(pick.tolist())) > 1  # the choice matters
    flat = starts.view(reps, n_eps * N, *x.shape[1:])
    expected = flat[pick, torch.arange(n_eps * N)].view(n_eps, *x.shape)
    _assert_equal(adv, expected, f"{norm} restarts")


def test_restarts_never_worse_than_the_first_restart(model, batch):
    """Restart 0 draws the same numbers as a single-restart run with that seed (one rand call
    over the tiled batch), so more restarts can only raise each example's loss."""
    x, y = batch
    one = PGD(model, steps=10, seed=5)(x, y)
    four = PGD(model, steps=10, seed=5, restarts=4)(x, y)
    gain = _per_sample_ce(model, four, y) - _per_sample_ce(model, one, y)
    assert (gain >= -1e-12).all(), gain
    assert (gain > 1e-9).any()
    assert (_linf_dist(four, x) <= 8 / 255 + HALF_ULP_BELOW_ONE[torch.float64]).all()


@pytest.mark.parametrize("alpha", [2 / 255, 8 / 255])
def test_track_best_never_worse_than_the_last_iterate(model, batch, alpha):
    x, y = batch
    best = PGD(model, alpha=alpha, steps=10, seed=5, track_best=True)(x, y)
    last = PGD(model, alpha=alpha, steps=10, seed=5)(x, y)
    gain = _per_sample_ce(model, best, y) - _per_sample_ce(model, last, y)
    assert (gain >= -1e-12).all(), gain
    assert (gain > 1e-9).any()  # some example peaked before the last step
    assert (_linf_dist(best, x) <= 8 / 255 + HALF_ULP_BELOW_ONE[torch.float64]).all()


def test_track_best_with_no_steps_returns_the_start(model, batch):
    x, y = batch
    best = PGD(model, steps=0, seed=2, track_best=True)(x, y)
    start = PGD(model, steps=0, seed=2)(x, y)
    _assert_equal(best, start, "steps=0 track_best")


# ------------------------------------------------------------------ custom loss


def _margin(outputs, labels):
    """Best other logit minus the true one (> 0: misclassified), per sample."""
    true = outputs.gather(1, labels[:, None]).squeeze(1)
    return outputs.scatter(1, labels[:, None], -torch.inf).amax(1) - true


def test_custom_per_sample_loss_is_maximized(model, batch):
    x, y = batch
    adv = PGD(model, loss=_margin, steps=10, random_start=False)(x, y)
    ce_adv = PGD(model, steps=10, random_start=False)(x, y)
    assert not torch.equal(adv, ce_adv)
    with torch.no_grad():
        assert (_margin(model(adv), y) > _margin(model(x), y)).all()
        assert _margin(model(adv), y).mean() > _margin(model(ce_adv), y).mean()


def test_custom_loss_with_float_targets_targeted(model, batch):
    """MSE to target logits, minimized (targeted): labels need not be class indices."""
    x, _ = batch
    target = torch.randn(N, 10, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    mse = lambda out, t: ((out - t) ** 2).sum(1)
    adv = PGD(model, loss=mse, targeted=True, steps=10, random_start=False)(x, target)
    with torch.no_grad():
        assert (mse(model(adv), target) < mse(model(x), target)).all()


def test_scalar_loss_rejected(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="one value per sample"):
        PGD(model, loss=lambda out, lab: fn.cross_entropy(out, lab), steps=1)(x, y)


# ------------------------------------------------------------------ model modes


def _bn_dropout_model():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(256, 10),
    ).double()


def test_attack_runs_in_eval_mode_and_restores_modes(batch):
    x, y = batch
    net = _bn_dropout_model().train()
    net[1].eval()  # a frozen BatchNorm inside a training model: per-module modes come back
    modes = [m.training for m in net.modules()]
    state = copy.deepcopy(net.state_dict())
    adv = PGD(net, steps=5, random_start=False)(x, y)
    assert [m.training for m in net.modules()] == modes
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed (BatchNorm ran in train mode)"
    assert all(p.grad is None for p in net.parameters())
    # the same attack on an eval-mode copy: identical (dropout off, running statistics used)
    reference = PGD(copy.deepcopy(net).eval(), steps=5, random_start=False)(x, y)
    _assert_equal(adv, reference, "train-mode model attacked in eval mode")


def test_modes_restored_when_the_attack_raises(batch):
    x, y = batch
    net = _bn_dropout_model().train()
    with pytest.raises(ValueError, match="one value per sample"):
        PGD(net, loss=lambda out, lab: out.sum(), steps=1)(x, y)
    assert all(m.training for m in net.modules())


# ------------------------------------------------------------------ bad input


def test_bad_images_and_labels(model, batch):
    x, y = batch
    atk = PGD(model, steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        atk(x + 0.5, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        atk((x - 0.5) / 0.25, y)  # already-normalized images
    with pytest.raises(ValueError, match="one per image"):
        atk(x, y[:-1])
    with pytest.raises(ValueError, match="class indices"):
        atk(x, y.double())
    with pytest.raises(TypeError, match="floating-point"):
        atk((x * 255).long(), y)
    with pytest.raises(TypeError, match="labels must be a tensor"):
        atk(x, y.tolist())


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(eps=-0.1), ValueError, "eps must be a number >= 0"),
    (dict(eps=[0.1, float("nan")]), ValueError, r"eps\[1\] must be a finite number"),
    (dict(eps=8), ValueError, "eps is in the \\[0, 1\\] image scale: 8/255, not 8"),
    (dict(alpha=2), ValueError, "alpha is in the \\[0, 1\\] image scale"),
    (dict(eps=[]), ValueError, "eps must not be empty"),
    (dict(alpha=-1.0), ValueError, "alpha must be a number >= 0"),
    (dict(eps=[0.1, 0.2], alpha=[0.01, 0.02, 0.03]), ValueError, "alpha has 3 values, eps has 2"),
    (dict(restarts=0), ValueError, "restarts must be an integer >= 1"),
    (dict(restarts=2.5), TypeError, "restarts must be an integer"),
    (dict(steps=-1), ValueError, "steps must be an integer >= 0"),
    (dict(steps="10"), TypeError, "steps must be an integer"),
    (dict(norm="l1"), ValueError, "norm must be one of"),
    (dict(loss="ce"), TypeError, "loss must be callable"),
    (dict(normalization=([0.5], [0.0])), ValueError, "std must be > 0"),
    (dict(eps="8/255"), TypeError, "eps must be a number"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_bad_arguments(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        PGD(model, **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        PGD(lambda x: x)


def test_nan_images_rejected(model, batch):
    x, y = batch
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(model, steps=1, backend="torch")(bad, y)


class _Transposed(nn.Module):
    """A model whose first op permutes its input (as ViT patch embeddings do): the input
    gradient autograd returns is a non-contiguous view."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.linear = nn.Linear(64, 10).double()

    def forward(self, x):
        return self.linear(x.transpose(2, 3).flatten(1))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_model_with_non_contiguous_input_gradient(batch, backend):
    x, y = batch
    net, images = _Transposed(), x
    if backend == "triton":
        net, images = net.float(), x.float()
    expected = PGD(net, steps=3, random_start=False, backend="torch")(images, y)
    adv = PGD(net, steps=3, random_start=False, backend=backend)(images, y)
    _assert_equal(adv, expected, f"backend={backend}")


# ------------------------------------------------------------------ robust accuracy


def _train_digits_cnn():
    """SmallCNN on digits, SGD with momentum, seeded: ~97% test accuracy in ~2 s."""
    train, test = digits()
    torch.manual_seed(0)
    net = SmallCNN()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(train, batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    net.train()
    for _ in range(EPOCHS):
        for images, labels in loader:
            opt.zero_grad()
            fn.cross_entropy(net(images), labels).backward()
            opt.step()
    net.zero_grad(set_to_none=True)
    return net.eval(), test


EPOCHS = 6


@pytest.mark.slow
def test_robust_accuracy_on_digits(tmp_path):
    net, test = _train_digits_cnn()
    images, labels = test.tensors
    with torch.no_grad():
        clean = 100.0 * (net(images).argmax(1) == labels).float().mean().item()
    assert clean > 85, clean
    budgets = [0, 2 / 255, 8 / 255, 16 / 255, 32 / 255]
    result = robust_accuracy(net, DataLoader(test, batch_size=128), eps=budgets, steps=10,
                             progress=False)
    acc = result.accuracy
    assert result.n == len(test) and result.eps == [float(e) for e in budgets]
    assert acc[0] == pytest.approx(clean, abs=1e-4)  # robust_accuracy divides in float32
    assert all(a >= b for a, b in zip(acc, acc[1:])), acc  # monotone in eps
    assert acc[-1] < acc[0] - 20, acc
    assert net.training is False and all(p.grad is None for p in net.parameters())

    path = tmp_path / "sub" / "robust.json"
    result.save_json(str(path))
    saved = json.loads(path.read_text())
    assert saved["config"] == {"n": len(test), "steps": 10, "alpha_ratio": 0.25,
                               "norm": "linf", "restarts": 1, "seed": 0}
    assert saved["rows"] == [{"eps": float(e), "robust_acc": a} for e, a in zip(budgets, acc)]


def test_robust_accuracy_rejects_bad_arguments(model, batch):
    loader = [batch]
    with pytest.raises(ValueError, match="at least one budget"):
        robust_accuracy(model, loader, eps=[], progress=False)
    with pytest.raises(ValueError, match="alpha_ratio"):
        robust_accuracy(model, loader, eps=[0.1], alpha_ratio=0.0, progress=False)
    with pytest.raises(ValueError, match="no examples"):
        robust_accuracy(model, [], eps=[0.1], progress=False)


def test_robust_accuracy_scores_in_eval_mode(batch):
    x, y = batch
    net = _bn_dropout_model()
    loader = [(x, y)] * 4
    evaluated = robust_accuracy(copy.deepcopy(net).eval(), loader, eps=[0.0], steps=1,
                                progress=False)
    state = copy.deepcopy(net.state_dict())
    trained_mode = robust_accuracy(net.train(), loader, eps=[0.0], steps=1, progress=False)
    assert net.training
    assert trained_mode.accuracy == evaluated.accuracy  # measured: 9.375 vs 12.5
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed while scoring"
