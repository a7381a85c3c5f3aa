"""Bi-level optimization: Hessian-vector products, linear solvers, hypergradients.

min_lambda F(theta*(lambda), lambda)  s.t.  theta*(lambda) = argmin_theta g(theta, lambda).
Hypergradients by implicit differentiation (`implicit_grad`, `custom_root`), by unrolled
differentiation (`unrolled_grad`), or first-order without any HVP (`penalty_grad`, F2SA).
Worked applications (ridge hyperparameters, data hyper-cleaning) are in `trustfast.blo.examples`.
"""

from trustfast.blo.first_order import PenaltyGrad, penalty_grad
from trustfast.blo.hvp import HVP_MODES, gnvp, hvp, hvp_operator, module_loss
from trustfast.blo.implicit import custom_root, implicit_grad
from trustfast.blo.solvers import SOLVERS, SolveResult, cg, fixed_point, neumann, solve
from trustfast.blo.unrolled import unrolled_grad

__all__ = [
    "HVP_MODES",
    "SOLVERS",
    "PenaltyGrad",
    "SolveResult",
    "cg",
    "custom_root",
    "fixed_point",
    "gnvp",
    "hvp",
    "hvp_operator",
    "implicit_grad",
    "module_loss",
    "neumann",
    "penalty_grad",
    "solve",
    "unrolled_grad",
]
