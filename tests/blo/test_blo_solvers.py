"""trustfast.blo.solvers: cg / neumann / fixed_point / solve on float64 SPD systems given only as
a matvec over a dict pytree, against torch.linalg.solve."""

import json
import math
import warnings

import pytest
import torch

from trustfast import TrustfastWarning
from trustfast.blo import SOLVERS, SolveResult, cg, fixed_point, neumann, solve

DT = torch.float64
N = 7  # split into leaves "u" (3,) and "v" (2, 2)


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _tree(vec: torch.Tensor) -> dict:
    return {"u": vec[:3].clone(), "v": vec[3:].reshape(2, 2).clone()}


def _vec(tree: dict) -> torch.Tensor:
    return torch.cat([tree["u"], tree["v"].reshape(-1)])


def _matvec(a: torch.Tensor):
    def apply(t: dict) -> dict:
        return _tree(a @ _vec(t))

    return apply


def _spd(seed: int = 0):
    """A = M M^T + I (eigenvalues ~1 to ~30, so ~700 Neumann steps at alpha = 1/lambda_max)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(N, N, generator=g, dtype=DT)
    a = m @ m.T + torch.eye(N, dtype=DT)
    b = torch.randn(N, generator=g, dtype=DT)
    return a, b, float(torch.linalg.eigvalsh(a).max())


def _rel_err(x: dict, expected: torch.Tensor) -> float:
    return float((_vec(x) - expected).norm() / expected.norm())


def _rel_residual(a, b, x) -> float:
    return float((b - a @ _vec(x)).norm() / b.norm())


def _run(name: str, a, b, lam_max, **kw) -> SolveResult:
    """One call per solver; iterative ones step at alpha = 1/lambda_max (rate 1 - 1/kappa)."""
    mv, bt = _matvec(a), _tree(b)
    if name == "cg":
        return cg(mv, bt, **kw)
    if name == "neumann":
        return neumann(mv, bt, alpha=1 / lam_max, **kw)
    if name == "fixed_point":  # the raw iteration x <- x + alpha (b - A x), from x0 = 1
        alpha = 1 / lam_max

        def step(x: dict) -> dict:
            return _tree(_vec(x) + alpha * (b - a @ _vec(x)))

        return fixed_point(step, _tree(torch.ones(N, dtype=DT)), **kw)
    return solve(name.removeprefix("solve_"), mv, bt,
                 **({} if name == "solve_cg" else {"alpha": 1 / lam_max}), **kw)


ALL = ["cg", "neumann", "fixed_point", "solve_cg", "solve_neumann", "solve_fixed_point"]


@pytest.mark.parametrize("name", ALL)
def test_solution_matches_linalg_solve(name):
    a, b, lam_max = _spd()
    res = _run(name, a, b, lam_max, tol=1e-13, max_iter=5000)
    assert res.converged and res.reason == "tol reached", res.reason
    assert set(res.x) == {"u", "v"} and res.x["v"].shape == (2, 2)
    err = _rel_err(res.x, torch.linalg.solve(a, b))
    assert err < 1e-8, f"{name}: relative error {err:.3g} after {res.iterations} iterations"
    # cg also records the residual of its start; neumann and fixed_point one per product
    assert res.iterations == len(res.residuals) - (1 if name.endswith("cg") else 0)


@pytest.mark.parametrize("name", [n for n in ALL if n != "fixed_point"])  # it takes no matvec
def test_damping_solves_shifted_system(name):
    a, b, lam_max = _spd(1)
    d = 0.7
    res = _run(name, a, b, lam_max + d, damping=d, tol=1e-13, max_iter=5000)
    assert res.converged, res.reason
    shifted = a + d * torch.eye(N, dtype=DT)
    assert _rel_err(res.x, torch.linalg.solve(shifted, b)) < 1e-8
    assert _rel_err(res.x, torch.linalg.solve(a, b)) > 1e-2  # the damping really changed x


def test_cg_converges_in_at_most_n_steps_and_reports_true_residuals():
    # Exact arithmetic: CG on an n x n SPD matrix ends in <= n steps (Hestenes & Stiefel 1952).
    a, b, _ = _spd(2)
    res = cg(_matvec(a), _tree(b), tol=1e-12, max_iter=50)
    assert res.converged and res.iterations <= N + 1, res.iterations
    assert res.residuals[0] == pytest.approx(1.0)  # x0 = 0: r0 = b
    assert res.residuals[-1] == pytest.approx(_rel_residual(a, b, res.x), rel=1e-3, abs=1e-15)


def test_cg_error_decreases_monotonically_and_residuals_are_those_of_the_iterates():
    # CG minimizes the A-norm error over growing Krylov spaces, so ||x* - x_k||_A decreases at
    # every step, and so does ||x* - x_k||_2 (Hestenes & Stiefel 1952, thm 6:3). The residual
    # norm ||b - A x_k|| carries no such guarantee (it can rise on ill-conditioned A), so it is
    # checked against the true residual of each iterate here and for monotonicity only below.
    a, b, _ = _spd(3)
    x_star = torch.linalg.solve(a, b)
    full = cg(_matvec(a), _tree(b), tol=1e-14, max_iter=N, warn=False)
    a_err, two_err = [float(x_star @ a @ x_star) ** 0.5], [float(x_star.norm())]
    for k in range(1, N):
        x_k = cg(_matvec(a), _tree(b), tol=1e-14, max_iter=k, warn=False).x  # deterministic
        e = x_star - _vec(x_k)
        a_err.append(float(e @ a @ e) ** 0.5)
        two_err.append(float(e.norm()))
        assert full.residuals[k] == pytest.approx(_rel_residual(a, b, x_k), rel=1e-8)
    assert all(y < x for x, y in zip(a_err, a_err[1:])), a_err
    assert all(y < x for x, y in zip(two_err, two_err[1:])), two_err


def test_cg_residual_history_decreases_on_well_conditioned_problem():
    # Spectrum in [1, 2] (kappa = 2): each CG step cuts the residual by ~(sqrt2-1)/(sqrt2+1);
    # with eigenvalues this clustered the residual norm falls at every step in practice.
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=DT))
    a = q @ torch.diag(torch.linspace(1.0, 2.0, N, dtype=DT)) @ q.T
    b = torch.randn(N, generator=g, dtype=DT)
    res = cg(_matvec(a), _tree(b), tol=1e-12, max_iter=50)
    assert res.converged
    assert len(res.residuals) >= 4
    assert all(y < x for x, y in zip(res.residuals, res.residuals[1:])), res.residuals


def test_cg_warm_start_residual_and_solution():
    a, b, _ = _spd(5)
    x0 = torch.linalg.solve(a, b) + 0.1 * torch.ones(N, dtype=DT)
    res = cg(_matvec(a), _tree(b), x0=_tree(x0), tol=1e-12, max_iter=50)
    assert res.residuals[0] == pytest.approx(_rel_residual(a, b, _tree(x0)), rel=1e-12)
    assert res.converged and _rel_err(res.x, torch.linalg.solve(a, b)) < 1e-9


def test_cg_exact_warm_start_is_converged():
    a, b = torch.diag(torch.arange(1.0, N + 1, dtype=DT)), torch.arange(1.0, N + 1, dtype=DT)
    x0 = torch.ones(N, dtype=DT)  # A x0 = b exactly in floating point
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrustfastWarning)
        res = cg(_matvec(a), _tree(b), x0=_tree(x0))
    assert res.converged
    assert _rel_err(res.x, x0) == 0.0


def test_neumann_residuals_decrease_and_match_returned_x():
    # I - alpha A is symmetric with norm 1 - lambda_min/lambda_max < 1: the residual of each
    # partial sum, (I - alpha A)^k b, shrinks at every term.
    a, b, lam_max = _spd(6)
    res = neumann(_matvec(a), _tree(b), alpha=1 / lam_max, tol=1e-10, max_iter=5000)
    assert res.converged
    assert all(y < x for x, y in zip(res.residuals, res.residuals[1:]))
    assert res.residuals[-1] == pytest.approx(_rel_residual(a, b, res.x), rel=1e-6)
    assert res.residuals[-1] <= 1e-10


def test_neumann_last_residual_is_that_of_returned_x_at_max_iter():
    a, b, lam_max = _spd(6)
    res = neumann(_matvec(a), _tree(b), alpha=1 / lam_max, max_iter=10, warn=False)
    assert not res.converged and res.iterations == 10
    assert res.residuals[-1] == pytest.approx(_rel_residual(a, b, res.x), rel=1e-6)


def test_neumann_diverges_when_alpha_too_large():
    a, b, lam_max = _spd(7)
    with pytest.warns(TrustfastWarning, match="diverged"):
        res = neumann(_matvec(a), _tree(b), alpha=3 / lam_max, max_iter=1000)
    assert not res.converged
    assert "diverged" in res.reason and "2 / lambda_max" in res.reason
    assert res.iterations < 1000  # stopped on growth, not by running out of iterations
    assert res.residuals[-1] > 1e6 * res.residuals[0]


def test_cg_on_indefinite_matrix_is_not_converged():
    a = torch.diag(torch.tensor([3.0, -1.0, 2.0, 1.0, -2.0, 1.0, 4.0], dtype=DT))
    b = torch.ones(N, dtype=DT)
    with pytest.warns(TrustfastWarning, match="cg did not converge"):
        res = cg(_matvec(a), _tree(b), max_iter=50)
    assert not res.converged
    assert "positive definite" in res.reason
    # the same matrix shifted to SPD by damping solves fine
    ok = cg(_matvec(a), _tree(b), damping=3.0, tol=1e-12, max_iter=50)
    assert ok.converged
    assert _rel_err(ok.x, torch.linalg.solve(a + 3.0 * torch.eye(N, dtype=DT), b)) < 1e-10


def test_fixed_point_known_answer_dottie_number():
    # x = cos x has the unique root 0.7390851332151607 (the Dottie number); |cos'| < 0.68 there.
    res = fixed_point(lambda t: {"x": torch.cos(t["x"])}, {"x": torch.zeros(3, dtype=DT)},
                      tol=1e-14, max_iter=500)
    assert res.converged
    torch.testing.assert_close(res.x["x"], torch.full((3,), 0.7390851332151607, dtype=DT),
                               rtol=0, atol=1e-13)


def test_fixed_point_divergence_and_bad_step():
    with pytest.warns(TrustfastWarning, match="diverged"):
        res = fixed_point(lambda t: {"x": 2 * t["x"] + 1}, {"x": torch.ones(2, dtype=DT)},
                          max_iter=5000)
    assert not res.converged and "diverged" in res.reason and res.iterations < 5000
    with pytest.raises(ValueError, match="step"):
        fixed_point(lambda t: {"y": t["x"]}, {"x": torch.ones(2, dtype=DT)})


def test_solve_fixed_point_tolerance_is_relative():
    a, b, lam_max = _spd(8)
    small = 1e-8 * b
    res = solve("fixed_point", _matvec(a), _tree(small), alpha=1 / lam_max, tol=1e-10,
                max_iter=5000)
    assert res.converged
    assert _rel_err(res.x, torch.linalg.solve(a, small)) < 1e-6


@pytest.mark.parametrize("name", ALL)
def test_max_iter_too_small_warns_unless_warn_false(name):
    a, b, lam_max = _spd(9)
    with pytest.warns(TrustfastWarning, match="did not converge.*max_iter reached"):
        res = _run(name, a, b, lam_max, max_iter=2)
    assert not res.converged and res.reason == "max_iter reached" and res.iterations == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrustfastWarning)
        quiet = _run(name, a, b, lam_max, max_iter=2, warn=False)
    assert not quiet.converged and quiet.reason == "max_iter reached"


@pytest.mark.parametrize("name", ["cg", "neumann", "solve_fixed_point"])
def test_zero_rhs_returns_zeros(name):
    a, _, lam_max = _spd(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrustfastWarning)
        res = _run(name, a, torch.zeros(N, dtype=DT), lam_max)
    assert res.converged
    assert all(bool((t == 0).all()) for t in res.x.values())
    assert res.x["v"].shape == (2, 2)


@pytest.mark.parametrize("kw, error, match", [
    (dict(tol=0.0), ValueError, "tol must be a number > 0"),
    (dict(tol=-1e-6), ValueError, "tol must be a number > 0"),
    (dict(tol=math.nan), ValueError, "tol must be a finite number"),
    (dict(tol="1e-6"), TypeError, "tol must be a number"),
    (dict(max_iter=0), ValueError, "max_iter must be an integer >= 1"),
    (dict(max_iter=2.5), TypeError, "max_iter must be an integer"),
    (dict(max_iter="10"), TypeError, "max_iter must be an integer"),
    (dict(damping=-0.1), ValueError, "damping must be a number >= 0"),
    (dict(damping=math.inf), ValueError, "damping must be a finite number"),
])
@pytest.mark.parametrize("name", ["cg", "neumann", "solve_fixed_point"])
def test_bad_options_raise(name, kw, error, match):
    a, b, lam_max = _spd(11)
    with pytest.raises(error, match=match):
        _run(name, a, b, lam_max, **kw)


def test_bad_alpha_solver_name_and_rhs_raise():
    a, b, _ = _spd(12)
    with pytest.raises(ValueError, match="alpha must be a number > 0"):
        neumann(_matvec(a), _tree(b), alpha=0.0)
    with pytest.raises(ValueError, match="solver must be one of"):
        solve("gmres", _matvec(a), _tree(b))
    with pytest.raises(ValueError, match="b holds no tensors"):
        cg(_matvec(a), {})
    with pytest.raises(TypeError, match="floating point"):
        cg(_matvec(a), {"u": torch.ones(3, dtype=torch.int64)})
    assert SOLVERS == ("cg", "neumann", "fixed_point")


def test_solve_result_to_dict_is_json():
    a, b, lam_max = _spd(13)
    ok = cg(_matvec(a), _tree(b), tol=1e-10)
    with pytest.warns(TrustfastWarning):
        bad = neumann(_matvec(a), _tree(b), alpha=3 / lam_max)
    for res in (ok, bad):
        d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
        assert d == {"residuals": res.residuals, "converged": res.converged,
                     "iterations": res.iterations, "reason": res.reason}
        assert all(isinstance(r, float) for r in d["residuals"])
    assert d["converged"] is False and "diverged" in d["reason"]
