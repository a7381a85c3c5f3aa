"""Hypergradients (implicit, unrolled, F2SA penalty, custom_root) against the closed-form ridge
hypergradient of trustfast.blo.examples.ridge, plus the data hyper-cleaning run (slow)."""

import math
import warnings

import pytest
import torch
from torch.func import grad

from trustfast import TrustfastWarning
from trustfast.blo import SolveResult, custom_root, implicit_grad, penalty_grad, unrolled_grad
from trustfast.blo.examples import (
    HyperCleaningConfig,
    closed_form_hypergradient,
    hyper_clean,
    learn_ridge_penalty,
    make_ridge_problem,
)

DT = torch.float64
LOG_ALPHAS = [-2.0, -1.0, 0.0]  # alpha = 0.2 Neumann / fixed-point steps need lambda_max(H) < 10


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def problem():
    return make_ridge_problem()


def _point(problem, log_alpha: float):
    a = {"log_alpha": torch.tensor(log_alpha, dtype=DT)}
    return a, problem.solve(a["log_alpha"]), float(closed_form_hypergradient(problem,
                                                                             a["log_alpha"]))


def _rel(got, expected: float) -> float:
    return abs(float(got) - expected) / abs(expected)


def test_closed_form_matches_finite_difference_of_val_loss(problem):
    # The reference itself: dF(w*(a))/da by a central difference of the exact inner solution.
    for la in LOG_ALPHAS:
        a, _, cf = _point(problem, la)
        h = 1e-5

        def val(x):
            return float(problem.outer_loss(problem.solve(torch.tensor(x, dtype=DT)), None))

        assert _rel((val(la + h) - val(la - h)) / (2 * h), cf) < 1e-6


@pytest.mark.parametrize("log_alpha", LOG_ALPHAS)
@pytest.mark.parametrize("solver, kw", [
    ("cg", {}),
    ("neumann", dict(alpha=0.2, max_iter=5000)),
    ("fixed_point", dict(alpha=0.2, max_iter=5000)),
])
def test_implicit_grad_matches_closed_form(problem, log_alpha, solver, kw):
    a, w, cf = _point(problem, log_alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrustfastWarning)
        g, res = implicit_grad(problem.outer_loss, problem.inner_loss, w, a, solver=solver,
                               tol=1e-10, return_result=True, **kw)
    assert isinstance(res, SolveResult) and res.converged and res.reason == "tol reached"
    assert set(g) == {"log_alpha"} and g["log_alpha"].shape == ()
    assert _rel(g["log_alpha"], cf) < 1e-6, (float(g["log_alpha"]), cf)


@pytest.mark.parametrize("solver", [
    "cg",
    "neumann",
    "fixed_point",
])
def test_implicit_grad_is_invariant_to_outer_loss_scale(problem, solver):
    # tol is relative, so measuring the validation loss in other units (x 1e-6) must only
    # scale the hypergradient.
    a, w, cf = _point(problem, -1.0)
    g, res = implicit_grad(lambda t, lm: 1e-6 * problem.outer_loss(t, lm), problem.inner_loss,
                           w, a, solver=solver, alpha=0.2, tol=1e-8, max_iter=5000,
                           return_result=True)
    assert res.converged
    assert _rel(g["log_alpha"] / 1e-6, cf) < 1e-6


@pytest.mark.parametrize("hvp_mode", ["fwd_rev", "finite_diff"])
def test_implicit_grad_other_hvp_modes(problem, hvp_mode):
    a, w, cf = _point(problem, -1.0)
    g = implicit_grad(problem.outer_loss, problem.inner_loss, w, a, tol=1e-10,
                      hvp_mode=hvp_mode)
    assert _rel(g["log_alpha"], cf) < (1e-6 if hvp_mode == "fwd_rev" else 1e-4)


def test_implicit_grad_with_tuple_params(problem):
    a, w, cf = _point(problem, 0.0)
    g = implicit_grad(lambda t, lm: problem.outer_loss({"w": t[0]}, None),
                      lambda t, lm: problem.inner_loss({"w": t[0]}, {"log_alpha": lm[0]}),
                      (w["w"],), (a["log_alpha"],), tol=1e-10)
    assert isinstance(g, tuple) and len(g) == 1
    assert _rel(g[0], cf) < 1e-6


def test_implicit_grad_raise_on_fail(problem):
    a, w, _ = _point(problem, 0.0)
    with pytest.raises(RuntimeError, match="did not converge"):
        implicit_grad(problem.outer_loss, problem.inner_loss, w, a, on_fail="raise", max_iter=1)
    with pytest.warns(TrustfastWarning, match="did not converge"):
        _, res = implicit_grad(problem.outer_loss, problem.inner_loss, w, a, max_iter=1,
                               return_result=True)
    assert not res.converged and res.iterations == 1


def test_unrolled_error_decreases_with_steps(problem):
    # Started at w*, T steps of GD with lr 0.2 give dw_T/da = -lr sum_j (I - lr H)^j d_a grad g,
    # a truncated Neumann series of -H^-1 d_a grad g: the error falls geometrically in T.
    a, w, cf = _point(problem, -1.0)
    errs = []
    for steps in (5, 20, 100, 400):
        g, final = unrolled_grad(problem.outer_loss, problem.inner_loss, w, a, steps=steps,
                                 lr=0.2)
        errs.append(_rel(g["log_alpha"], cf))
        torch.testing.assert_close(final["w"], w["w"], rtol=1e-10, atol=1e-12)  # w* is fixed
    assert all(y < x for x, y in zip(errs, errs[1:])), errs
    assert errs[0] > 1e-2 and errs[-1] < 1e-8, errs


def test_unrolled_truncation(problem):
    a, w, cf = _point(problem, -1.0)
    full, full_w = unrolled_grad(problem.outer_loss, problem.inner_loss, w, a, steps=300, lr=0.2)
    long, long_w = unrolled_grad(problem.outer_loss, problem.inner_loss, w, a, steps=300, lr=0.2,
                                 truncate=200)
    short, _ = unrolled_grad(problem.outer_loss, problem.inner_loss, w, a, steps=300, lr=0.2,
                             truncate=5)
    torch.testing.assert_close(long_w["w"], full_w["w"], rtol=1e-12, atol=1e-14)
    assert _rel(long["log_alpha"], float(full["log_alpha"])) < 1e-6
    # truncating to 5 steps is the 5-term series: far from the full one
    assert _rel(short["log_alpha"], float(full["log_alpha"])) > 1e-2
    assert _rel(full["log_alpha"], cf) < 1e-6


def test_unrolled_truncation_from_a_cold_start_runs_the_first_steps(problem):
    # From w = 0, the un-differentiated first T - K steps must still move the inner iterate.
    a, _, _ = _point(problem, 0.0)
    zero = {"w": torch.zeros(problem.x_train.shape[1], dtype=DT)}
    _, full_w = unrolled_grad(problem.outer_loss, problem.inner_loss, zero, a, steps=50, lr=0.2)
    _, trunc_w = unrolled_grad(problem.outer_loss, problem.inner_loss, zero, a, steps=50, lr=0.2,
                               truncate=3)
    torch.testing.assert_close(trunc_w["w"], full_w["w"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kw, error, match", [
    (dict(steps=10, truncate=0), ValueError, "truncate"),
    (dict(steps=10, truncate=11), ValueError, "truncate"),
    (dict(steps=10, truncate=2.0), TypeError, "truncate"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps="10"), TypeError, "steps"),
    (dict(steps=10, lr=0.0), ValueError, "lr"),
    (dict(steps=10, lr=math.nan), ValueError, "lr"),
])
def test_unrolled_validation(problem, kw, error, match):
    a, w, _ = _point(problem, 0.0)
    kw = {"lr": 0.1, **kw}
    with pytest.raises(error, match=match):
        unrolled_grad(problem.outer_loss, problem.inner_loss, w, a, **kw)


def test_penalty_grad_bias_shrinks_like_one_over_penalty(problem):
    # F2SA's bias is O(1/s). At log_alpha = 0 both inner GDs contract by <= 0.6 per step, so
    # 60 steps leave them converged and the measured error is the bias alone.
    a, w, cf = _point(problem, 0.0)
    errs = []
    for s in (10.0, 100.0, 1000.0):
        out = penalty_grad(problem.outer_loss, problem.inner_loss, w, a, penalty=s, steps=60,
                           lr=0.2)
        errs.append(_rel(out.grads["log_alpha"], cf))
        torch.testing.assert_close(out.z["w"], w["w"], rtol=1e-10, atol=1e-12)
    for x, y in zip(errs, errs[1:]):
        assert 5 < x / y < 20, errs  # ~10x per 10x penalty
    assert errs[-1] < 1e-2


def test_penalty_grad_validation(problem):
    a, w, _ = _point(problem, 0.0)
    for kw, match in [(dict(penalty=0.0), "penalty"), (dict(steps=0), "steps"),
                      (dict(lr=-1.0), "lr")]:
        with pytest.raises(ValueError, match=match):
            penalty_grad(problem.outer_loss, problem.inner_loss, w, a, **kw)
    with pytest.raises(FloatingPointError, match="non-finite"):
        penalty_grad(problem.outer_loss, problem.inner_loss, w, a, lr=10.0, steps=500)


@pytest.mark.parametrize("solver, kw", [
    ("cg", dict(tol=1e-12)),
    ("neumann", dict(alpha=0.2, tol=1e-12, max_iter=5000)),
])
def test_custom_root_backprops_closed_form(problem, solver, kw):
    optimality = grad(problem.inner_loss)  # d g / d w: zero at w*(a)

    @custom_root(optimality, solver=solver, **kw)
    def ridge_solution(outer):
        return problem.solve(outer["log_alpha"])

    assert ridge_solution.last_solve is None
    log_alpha = torch.tensor(-1.0, dtype=DT, requires_grad=True)
    outer = {"log_alpha": log_alpha}
    w = ridge_solution(outer)
    assert w["w"].requires_grad
    torch.testing.assert_close(w["w"], problem.solve(log_alpha.detach())["w"], rtol=0, atol=0)
    problem.outer_loss(w, outer).backward()
    cf = float(closed_form_hypergradient(problem, log_alpha.detach()))
    assert _rel(log_alpha.grad, cf) < 1e-6, (float(log_alpha.grad), cf)
    assert ridge_solution.last_solve.converged


def test_custom_root_raise_and_structure_mismatch(problem):
    optimality = grad(problem.inner_loss)

    @custom_root(optimality, on_fail="raise", max_iter=1)
    def too_short(outer):
        return problem.solve(outer["log_alpha"])

    log_alpha = torch.tensor(0.0, dtype=DT, requires_grad=True)
    with pytest.raises(RuntimeError, match="did not converge"):
        problem.outer_loss(too_short({"log_alpha": log_alpha}), None).backward()

    @custom_root(lambda t, lm: {"z": optimality(t, lm)["w"]})  # keyed unlike the solution
    def mismatched(outer):
        return problem.solve(outer["log_alpha"])

    with pytest.raises(RuntimeError, match="pytree structure"):
        problem.outer_loss(mismatched({"log_alpha": log_alpha}), None).backward()
    with pytest.raises(ValueError, match="solver must be one of"):
        custom_root(optimality, solver="lu")


def test_learn_ridge_penalty_reaches_grid_optimum(problem):
    grid = torch.linspace(-4.0, 4.0, 401, dtype=DT)
    val = torch.stack([problem.outer_loss(problem.solve(x), None) for x in grid])
    best = float(grid[val.argmin()])
    assert -3.5 < best < 3.5  # interior optimum, so the test means something
    hist = learn_ridge_penalty(problem, method="implicit")
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    assert abs(hist["log_alpha"][-1] - best) < 0.2, (hist["log_alpha"][-1], best)
    assert hist["val_loss"][-1] <= float(val.min()) + 1e-3
    with pytest.raises(ValueError, match="method must be one of"):
        learn_ridge_penalty(problem, method="newton")


def test_bad_inputs_raise_clear_errors(problem):
    a, w, _ = _point(problem, 0.0)
    vector_outer = lambda t, lm: (problem.x_val @ t["w"] - problem.y_val) ** 2  # noqa: E731
    vector_inner = lambda t, lm: (problem.x_train @ t["w"] - problem.y_train) ** 2  # noqa: E731
    with pytest.raises(ValueError, match="outer_loss must return a scalar"):
        implicit_grad(vector_outer, problem.inner_loss, w, a)
    with pytest.raises(ValueError, match="scalar"):
        implicit_grad(problem.outer_loss, vector_inner, w, a)
    with pytest.raises(ValueError, match="outer_loss must return a scalar"):
        unrolled_grad(vector_outer, problem.inner_loss, w, a, steps=2, lr=0.1)
    with pytest.raises(ValueError, match="inner_loss must return a scalar"):
        penalty_grad(problem.outer_loss, vector_inner, w, a, steps=2)
    with pytest.raises(ValueError, match="inner_params holds no tensors"):
        implicit_grad(problem.outer_loss, problem.inner_loss, {}, a)
    with pytest.raises(TypeError, match="outer_params: leaf 0"):
        implicit_grad(problem.outer_loss, problem.inner_loss, w, {"log_alpha": torch.tensor(0)})
    with pytest.raises(TypeError, match="inner_params: leaf 0"):
        unrolled_grad(problem.outer_loss, problem.inner_loss, {"w": [1.0]}, a, steps=2, lr=0.1)
    with pytest.raises(ValueError, match="solver must be one of"):
        implicit_grad(problem.outer_loss, problem.inner_loss, w, a, solver="lu")
    with pytest.raises(ValueError, match="on_fail must be one of"):
        implicit_grad(problem.outer_loss, problem.inner_loss, w, a, on_fail="ignore")


@pytest.mark.slow
def test_hyper_cleaning_finds_flipped_labels():
    res = hyper_clean(HyperCleaningConfig(), progress=False)
    assert res.f1_flipped >= 0.8, res.to_dict()
    assert res.val_acc_cleaned >= res.val_acc_noisy + 3, res.to_dict()
    assert res.test_acc_cleaned >= res.test_acc_noisy + 1, res.to_dict()
    assert len(res.val_loss) == HyperCleaningConfig().outer_steps
    assert res.val_loss[-1] < res.val_loss[0]
