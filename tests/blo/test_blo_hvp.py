"""trustfast.blo.hvp: Hessian-vector products against torch.autograd.functional and an explicit
float64 Hessian, on an MLP, a CNN with BatchNorm (eval) and a hand-written transformer block."""

import copy
import importlib
import math
import warnings

import pytest
import torch
from conftest import assert_close
from torch import nn
from torch.nn import functional as fn

from trustfast import TrustfastWarning
from trustfast.blo import HVP_MODES, gnvp, hvp, hvp_operator, module_loss

DT = torch.float64
EXACT_RTOL = 1e-9  # fwd_rev / rev_rev against H @ v: float64, differ only by summation order
FD_RTOL = 1e-5  # central difference: O(r^2) truncation + O(eps / r) rounding, r ~ 1e-8


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _leaves(tree) -> list[torch.Tensor]:
    return list(tree.values()) if isinstance(tree, dict) else list(tree)


def _flat(tree) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in _leaves(tree)])


def _unflat(vec: torch.Tensor, like):
    out, i = [], 0
    for t in _leaves(like):
        out.append(vec[i:i + t.numel()].reshape(t.shape))
        i += t.numel()
    return dict(zip(like.keys(), out)) if isinstance(like, dict) else type(like)(out)


def _random_like(tree, seed: int):
    g = _gen(seed)
    vals = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in _leaves(tree)]
    return dict(zip(tree.keys(), vals)) if isinstance(tree, dict) else type(tree)(vals)


def _assert_tree_close(got, expected, rtol: float, name: str) -> None:
    """Leafwise, with atol = rtol * max |expected| so near-zero entries do not dominate."""
    assert type(got) is type(expected), f"{name}: got a {type(got).__name__}"
    if isinstance(expected, dict):
        assert list(got) == list(expected), f"{name}: keys {list(got)} != {list(expected)}"
    scale = float(_flat(expected).abs().max())
    for i, (a, e) in enumerate(zip(_leaves(got), _leaves(expected))):
        assert a.shape == e.shape, f"{name}: leaf {i} shape {a.shape} != {e.shape}"
        assert_close(a, e, atol=rtol * scale, rtol=rtol, name=f"{name} leaf {i}")


def _explicit_hessian(f, params, args) -> torch.Tensor:
    """d^2 f / dp^2 on the flattened parameter vector (float64)."""
    return torch.autograd.functional.hessian(
        lambda flat: f(_unflat(flat, params), *args), _flat(params).detach())


def _autograd_hvp(f, params, v, args):
    keys = list(params)
    _, out = torch.autograd.functional.hvp(
        lambda *ps: f(dict(zip(keys, ps)), *args), tuple(params.values()),
        tuple(v[k] for k in keys))
    return dict(zip(keys, out))


# ---- the three models -------------------------------------------------------------------------


def _mlp_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(DT)
    f, params = module_loss(model, fn.cross_entropy)
    g = _gen(1)
    args = (torch.randn(4, 5, generator=g, dtype=DT), torch.randint(0, 3, (4,), generator=g))
    return f, params, args


def _cnn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(27, 3),
    ).to(DT)
    g = _gen(2)
    with torch.no_grad():  # running statistics far from (0, 1) so eval mode visibly uses them
        model[1].running_mean.copy_(torch.randn(3, generator=g, dtype=DT))
        model[1].running_var.copy_(torch.rand(3, generator=g, dtype=DT) + 0.5)
    return model.eval()


def _cnn_case():
    f, params = module_loss(_cnn_model(), fn.cross_entropy)
    g = _gen(9)
    args = (torch.randn(2, 2, 5, 5, generator=g, dtype=DT), torch.tensor([0, 2]))
    return f, params, args


D_MODEL, D_HIDDEN = 4, 8


def _block(p: dict, x: torch.Tensor) -> torch.Tensor:
    """Pre-norm transformer block: x + attn(LN(x)), then + MLP(LN(.)); single head."""
    h = fn.layer_norm(x, (D_MODEL,), p["ln1_w"], p["ln1_b"])
    q, k, v = h @ p["wq"].T, h @ p["wk"].T, h @ p["wv"].T
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D_MODEL), dim=-1)
    x = x + (att @ v) @ p["wo"].T
    h = fn.layer_norm(x, (D_MODEL,), p["ln2_w"], p["ln2_b"])
    return x + fn.gelu(h @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]


def _transformer_case():
    g = _gen(3)
    shapes = {"ln1_w": (D_MODEL,), "ln1_b": (D_MODEL,), "wq": (D_MODEL, D_MODEL),
              "wk": (D_MODEL, D_MODEL), "wv": (D_MODEL, D_MODEL), "wo": (D_MODEL, D_MODEL),
              "ln2_w": (D_MODEL,), "ln2_b": (D_MODEL,), "w1": (D_HIDDEN, D_MODEL),
              "b1": (D_HIDDEN,), "w2": (D_MODEL, D_HIDDEN), "b2": (D_MODEL,)}
    params = {k: 0.5 * torch.randn(s, generator=g, dtype=DT) for k, s in shapes.items()}
    params["ln1_w"] += 1.0
    params["ln2_w"] += 1.0

    def f(p, x, target):
        return ((_block(p, x) - target) ** 2).mean()

    args = (torch.randn(2, 3, D_MODEL, generator=g, dtype=DT),
            torch.randn(2, 3, D_MODEL, generator=g, dtype=DT))
    return f, params, args


CASES = {"mlp": _mlp_case, "cnn_bn_eval": _cnn_case, "transformer_block": _transformer_case}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    f, params, args = CASES[request.param]()
    v = _random_like(params, 10)
    hess = _explicit_hessian(f, params, args)
    assert torch.allclose(hess, hess.T, atol=1e-10), "reference Hessian is not symmetric"
    assert hess.abs().max() > 1e-3, "degenerate case: the Hessian is ~0"
    return dict(f=f, params=params, args=args, v=v, hess=hess,
                explicit=_unflat(hess @ _flat(v), params),
                autograd=_autograd_hvp(f, params, v, args))


def test_reference_hvps_agree(case):
    # The two references must agree before either is used to judge trustfast.
    _assert_tree_close(case["autograd"], case["explicit"], EXACT_RTOL, "autograd.functional.hvp")


@pytest.mark.parametrize("mode", HVP_MODES)
def test_hvp_matches_autograd_and_explicit_hessian(case, mode):
    out = hvp(case["f"], case["params"], case["v"], args=case["args"], mode=mode)
    rtol = FD_RTOL if mode == "finite_diff" else EXACT_RTOL
    _assert_tree_close(out, case["explicit"], rtol, f"hvp[{mode}] vs H @ v")
    _assert_tree_close(out, case["autograd"], rtol, f"hvp[{mode}] vs autograd hvp")
    assert all(not t.requires_grad for t in out.values())


def test_module_loss_uses_running_statistics_and_keeps_them_fixed():
    model = _cnn_model()
    f, params = module_loss(model, fn.cross_entropy)
    _, _, (x, y) = _cnn_case()
    stats = model[1].running_mean.clone(), model[1].running_var.clone()
    loss = f(params, x, y)
    hvp(f, params, params, args=(x, y))
    torch.testing.assert_close(loss, fn.cross_entropy(model(x), y), rtol=1e-14, atol=0)
    torch.testing.assert_close(model[1].running_mean, stats[0], rtol=0, atol=0)
    torch.testing.assert_close(model[1].running_var, stats[1], rtol=0, atol=0)
    # batch statistics give a different loss: the case really exercises eval-mode BatchNorm
    assert not torch.allclose(loss, fn.cross_entropy(copy.deepcopy(model).train()(x), y))
    assert set(params) == {k for k, _ in model.named_parameters()}
    assert all(not t.requires_grad for t in params.values())


@pytest.mark.parametrize("mode", HVP_MODES)
def test_batched_equals_stacked_singles(case, mode):
    vs = [_random_like(case["params"], 20 + i) for i in range(3)]
    batch = {k: torch.stack([v[k] for v in vs]) for k in case["params"]}
    out = hvp(case["f"], case["params"], batch, args=case["args"], mode=mode, batched=True)
    for i, v in enumerate(vs):
        single = hvp(case["f"], case["params"], v, args=case["args"], mode=mode)
        got = {k: t[i] for k, t in out.items()}
        # finite_diff batched shares one step for all vectors, so it differs at the FD error
        _assert_tree_close(got, single, FD_RTOL if mode == "finite_diff" else 1e-12,
                           f"batched[{mode}] row {i}")
        expected = _unflat(case["hess"] @ _flat(v), case["params"])
        _assert_tree_close(got, expected, FD_RTOL if mode == "finite_diff" else EXACT_RTOL,
                           f"batched[{mode}] row {i} vs H @ v")


@pytest.mark.parametrize("mode", HVP_MODES)
def test_hvp_operator_is_reusable(case, mode):
    op = hvp_operator(case["f"], case["params"], args=case["args"], mode=mode)
    rtol = FD_RTOL if mode == "finite_diff" else EXACT_RTOL
    vs = [case["v"]] + [_random_like(case["params"], 30 + i) for i in range(2)]
    first = [op(v) for v in vs]
    for i, (v, out) in enumerate(zip(vs, first)):
        expected = _unflat(case["hess"] @ _flat(v), case["params"])
        _assert_tree_close(out, expected, rtol, f"hvp_operator[{mode}] v{i}")
    again = op(vs[0])  # after other products: the retained graph still gives the same answer
    _assert_tree_close(again, first[0], 1e-13, f"hvp_operator[{mode}] reuse")


def test_hvp_operator_checks_v():
    f, params, args = _mlp_case()
    op = hvp_operator(f, params, args=args)
    with pytest.raises(ValueError, match="v"):
        op({k: t for k, t in list(params.items())[:-1]})


# ---- Gauss-Newton ----------------------------------------------------------------------------


def _gnvp_case():
    g = _gen(4)
    params = {"w1": torch.randn(6, 4, generator=g, dtype=DT), "b1": torch.randn(6, generator=g,
                                                                              dtype=DT),
              "w2": torch.randn(3, 6, generator=g, dtype=DT), "b2": torch.randn(3, generator=g,
                                                                              dtype=DT)}
    x = torch.randn(5, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (5,), generator=g)

    def model_fn(p, inputs):
        return torch.tanh(inputs @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]

    def loss_fn(z):
        return fn.cross_entropy(z, y)

    jac = torch.autograd.functional.jacobian(
        lambda flat: model_fn(_unflat(flat, params), x).reshape(-1), _flat(params))
    z = model_fn(params, x)
    h_loss = torch.autograd.functional.hessian(lambda zf: loss_fn(zf.reshape(z.shape)),
                                               z.reshape(-1))
    return model_fn, loss_fn, params, x, jac.T @ h_loss @ jac


def test_gnvp_equals_explicit_jt_h_j():
    model_fn, loss_fn, params, x, gn = _gnvp_case()
    for seed in range(3):
        v = _random_like(params, 40 + seed)
        out = gnvp(model_fn, loss_fn, params, v, args=(x,))
        _assert_tree_close(out, _unflat(gn @ _flat(v), params), EXACT_RTOL, f"gnvp seed {seed}")


def test_gnvp_batched_and_positive_semidefinite():
    model_fn, loss_fn, params, x, gn = _gnvp_case()
    assert torch.linalg.eigvalsh(gn).min() > -1e-12  # the reference itself is PSD
    vs = [_random_like(params, 50 + i) for i in range(8)]
    batch = {k: torch.stack([v[k] for v in vs]) for k in params}
    out = gnvp(model_fn, loss_fn, params, batch, args=(x,), batched=True)
    for i, v in enumerate(vs):
        gv = {k: t[i] for k, t in out.items()}
        _assert_tree_close(gv, _unflat(gn @ _flat(v), params), EXACT_RTOL, f"batched gnvp {i}")
        quad = float(_flat(v) @ _flat(gv))
        assert quad >= -1e-12, f"v.Gv = {quad} < 0 for v {i}"


# ---- containers, fallback, bad input ----------------------------------------------------------


def _quartic(w, b, x):
    return (torch.tanh(x @ w + b) ** 4).sum() + (w**2).sum() * b.sum()


@pytest.mark.parametrize("mode", HVP_MODES)
def test_dict_and_tuple_params_agree(mode):
    g = _gen(5)
    w, b = torch.randn(3, 2, generator=g, dtype=DT), torch.randn(2, generator=g, dtype=DT)
    vw, vb = torch.randn(3, 2, generator=g, dtype=DT), torch.randn(2, generator=g, dtype=DT)
    x = torch.randn(4, 3, generator=g, dtype=DT)
    as_dict = hvp(lambda p, x: _quartic(p["w"], p["b"], x), {"w": w, "b": b},
                  {"w": vw, "b": vb}, args=(x,), mode=mode)
    as_tuple = hvp(lambda p, x: _quartic(*p, x), (w, b), (vw, vb), args=(x,), mode=mode)
    assert isinstance(as_tuple, tuple) and isinstance(as_dict, dict)
    _, ref = torch.autograd.functional.hvp(lambda w, b: _quartic(w, b, x), (w, b), (vw, vb))
    rtol = FD_RTOL if mode == "finite_diff" else EXACT_RTOL
    _assert_tree_close(as_tuple, tuple(ref), rtol, f"tuple[{mode}]")
    _assert_tree_close(as_dict, {"w": ref[0], "b": ref[1]}, rtol, f"dict[{mode}]")


class _CubeNoJvp(torch.autograd.Function):
    """x^3 with forward/backward only: forward-mode AD through it raises (no jvp defined)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad_out  # differentiable, so rev_rev works


def test_cube_without_jvp_really_lacks_forward_ad():
    x = torch.randn(3, dtype=DT)
    with pytest.raises((RuntimeError, NotImplementedError), match="jvp"):
        torch.func.jvp(_CubeNoJvp.apply, (x,), (torch.ones_like(x),))


def test_fwd_rev_falls_back_to_rev_rev_with_one_warning(monkeypatch):
    monkeypatch.setattr(importlib.import_module("trustfast.blo.hvp"), "_warned_fallback", False)
    g = _gen(6)
    params = {"x": torch.randn(4, generator=g, dtype=DT), "s": torch.randn(2, generator=g,
                                                                           dtype=DT)}
    v = _random_like(params, 7)

    def f(p):
        return _CubeNoJvp.apply(p["x"]).sum() + (p["s"] ** 2).sum() * p["x"].sum()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = hvp(f, params, v)
        second = hvp(f, params, v, mode="fwd_rev")
    ours = [w for w in caught if issubclass(w.category, TrustfastWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "rev_rev" in str(ours[0].message)
    assert ours[0].filename == __file__  # stacklevel points at the caller's line
    expected = _unflat(_explicit_hessian(f, params, ()) @ _flat(v), params)
    rev = hvp(f, params, v, mode="rev_rev")
    for out in (first, second):
        _assert_tree_close(out, rev, 1e-14, "fallback vs rev_rev")
        _assert_tree_close(out, expected, EXACT_RTOL, "fallback vs H @ v")


def test_fwd_rev_through_mse_loss_module(monkeypatch):
    # torch 2.13: forward-over-reverse through F.mse_loss(reduction="mean") raises "ZeroTensors
    # are immutable"; hvp must still give H v (by falling back, with a TrustfastWarning).
    monkeypatch.setattr(importlib.import_module("trustfast.blo.hvp"), "_warned_fallback", False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    f, params = module_loss(model, fn.mse_loss)
    g = _gen(11)
    args = (torch.randn(5, 3, generator=g, dtype=DT), torch.randn(5, 2, generator=g, dtype=DT))
    v = _random_like(params, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrustfastWarning)
        out = hvp(f, params, v, args=args, mode="fwd_rev")
    expected = _unflat(_explicit_hessian(f, params, args) @ _flat(v), params)
    _assert_tree_close(out, expected, EXACT_RTOL, "fwd_rev through mse_loss")


def test_unrelated_runtime_error_is_not_swallowed(monkeypatch):
    monkeypatch.setattr(importlib.import_module("trustfast.blo.hvp"), "_warned_fallback", False)

    def f(p):
        raise RuntimeError("shape mismatch in user code")

    with warnings.catch_warnings():
        warnings.simplefilter("error", TrustfastWarning)  # a fallback would warn: fail loudly
        with pytest.raises(RuntimeError, match="shape mismatch"):
            hvp(f, {"x": torch.ones(2, dtype=DT)}, {"x": torch.ones(2, dtype=DT)})


def _simple():
    params = {"a": torch.ones(3, dtype=DT), "b": torch.ones(2, 2, dtype=DT)}
    return (lambda p: (p["a"] ** 3).sum() + (p["b"] ** 2).sum()), params


@pytest.mark.parametrize(
    "bad_v, match",
    [
        ({"a": torch.ones(3, dtype=DT)}, "v must have the same structure"),
        ((torch.ones(3, dtype=DT), torch.ones(2, 2, dtype=DT)), "v must have the same structure"),
        ({"a": torch.ones(3, dtype=DT), "b": torch.ones(4, dtype=DT)}, "v: leaf 1 has shape"),
        ({"a": torch.ones(3), "b": torch.ones(2, 2, dtype=DT)}, "v: leaf 0 is torch.float32"),
    ],
    ids=["missing-key", "tuple-for-dict", "shape", "dtype"],
)
def test_bad_v_raises_naming_v(bad_v, match):
    f, params = _simple()
    with pytest.raises(ValueError, match=match):
        hvp(f, params, bad_v)


def test_batched_v_needs_consistent_batch_and_leading_dim():
    f, params = _simple()
    with pytest.raises(ValueError, match="batch size"):
        hvp(f, params, {"a": torch.ones(3, 3, dtype=DT), "b": torch.ones(2, 2, 2, dtype=DT)},
            batched=True)
    with pytest.raises(ValueError, match="batched=True expects"):
        hvp(f, params, {"a": torch.ones(3, dtype=DT), "b": torch.ones(2, 2, dtype=DT)},
            batched=True)


@pytest.mark.parametrize("mode", HVP_MODES)
def test_non_scalar_f_raises(mode):
    _, params = _simple()
    with pytest.raises(ValueError, match="scalar"):
        hvp(lambda p: p["a"] ** 2, params, params, mode=mode)


def test_unknown_mode_and_bad_params_raise():
    f, params = _simple()
    with pytest.raises(ValueError, match="mode must be one of"):
        hvp(f, params, params, mode="fwd_fwd")
    with pytest.raises(ValueError, match="mode must be one of"):
        hvp_operator(f, params, mode="exact")
    with pytest.raises(ValueError, match="params holds no tensors"):
        hvp(f, {}, {})
    with pytest.raises(TypeError, match="floating point"):
        hvp(f, {"a": torch.ones(3, dtype=torch.int64)}, {"a": torch.ones(3, dtype=torch.int64)})
    with pytest.raises(TypeError, match="callable"):
        hvp(None, params, params)
    with pytest.raises(ValueError, match="eps must be a number > 0"):
        hvp(f, params, params, mode="finite_diff", eps=0.0)


def test_finite_diff_with_explicit_eps_is_second_order():
    # Central difference error is O(r^2): shrinking r by 10 shrinks the error ~100x (while
    # truncation dominates rounding, i.e. for r >= 1e-3 here).
    g = _gen(8)
    params = (torch.randn(5, generator=g, dtype=DT),)
    v = (torch.randn(5, generator=g, dtype=DT),)
    f = lambda p: torch.sin(p[0]).sum() * torch.cos(p[0]).sum()  # noqa: E731
    exact = hvp(f, params, v, mode="rev_rev")[0]
    errs = [float((hvp(f, params, v, mode="finite_diff", eps=r)[0] - exact).norm())
            for r in (1e-1, 1e-2)]
    assert 30 < errs[0] / errs[1] < 300, errs
