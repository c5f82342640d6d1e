"""The norms of the multiplier problem, one object each (MATH.md §3):

  ℓ2    min_{λ≥0} ‖θ̂ − Gλ‖₂  as a QP on the Gram matrix K = GᵀG (the isometry-invariant choice);
  ℓ1    min_{λ≥0} ‖θ̂ − Gλ‖₁  } the multiplier LPs, which need G itself (p × n_c): slower, more memory.
  ℓ∞    min_{λ≥0} ‖θ̂ − Gλ‖∞  }
Each norm turns a ``CandidateProblem`` into the solver's solution and a list of multiplier
vectors to measure (the solution first, then its refinements, see ``kktembed.kkt.select``). Adding
a norm touches this file only; an unknown name is refused by ``get_norm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kktembed.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

# The ℓ1/ℓ∞ LPs materialise G (p × n_c float64): beyond this (or the machine's memory limit,
# kktembed.resources) they are refused with a hint. None: the machine's limit only.
LP_MEMORY_LIMIT: int | None = None


@dataclass(frozen=True)
class CandidateProblem:
    """The multiplier problem on the candidate constraints A_τ at θ̂ (MATH.md §3)."""

    gram: "np.ndarray"  # K = GᵀG on the candidates
    q: "np.ndarray"  # q_k(θ̂) on the candidates
    degree: int  # L
    network: Any  # what G is made of, for the LPs: network, inputs, candidate constraints, θ̂
    x: Any
    constraints: Any
    theta_hat: dict

    @property
    def b(self) -> "np.ndarray":
        """b = Gᵀθ̂ = L·q(θ̂) by Euler's identity (MATH.md §1)."""
        return self.degree * self.q

    @property
    def excess(self) -> "np.ndarray":
        """q_k − 1: the slack of each candidate constraint."""
        return self.q - 1.0


class MultiplierNorm:
    name: str = ""
    order: float = 2.0  # for torch.linalg.vector_norm / np.linalg.norm
    description: str = ""
    solvers: tuple[str, ...] = ()  # the first is the default

    def trials(self, problem: CandidateProblem, mu: float, refine: bool, solver: str, start=None):
        """(solution, [λ to measure, least refined first]) for complementarity weight μ; ``start``:
        λ of a nested smaller candidate set (zeros elsewhere), for solvers that can warm-start."""
        raise NotImplementedError


class L2Norm(MultiplierNorm):
    """The QP on the Gram matrix, min_{λ≥0} ½λᵀKλ − cᵀλ with c = b − (μ/2)(q − 1) (MATH.md §3),
    solved by the exact active-set method (kktembed.kkt.active_set; no cvxpy), or by Clarabel through
    cvxpy with an active-set polish (``--solver clarabel``)."""

    name, order = "l2", 2.0
    description = "QP on the Gram matrix (fast)"
    solvers = ("active-set", "clarabel")

    def trials(self, problem, mu, refine, solver, start=None):
        if solver == "clarabel":
            return self._clarabel_trials(problem, mu, refine)
        from kktembed.kkt.active_set import most_complementary_optimum, solve_nonnegative_qp
        from kktembed.kkt.solve import MultiplierSolution

        linear = problem.b - 0.5 * mu * problem.excess
        exact = solve_nonnegative_qp(problem.gram, linear, start=start)
        solution = MultiplierSolution(exact.multipliers, "ACTIVE-SET", "optimal", exact.seconds)
        trials = [exact.multipliers]
        if refine:
            complementary = most_complementary_optimum(problem.gram, linear, problem.excess, exact.multipliers)
            if complementary is not None:  # its equalities are relaxed by 1e-9: polish it back onto the optimal set
                trials += [complementary, solve_nonnegative_qp(problem.gram, linear, start=complementary).multipliers]
        return solution, trials

    @staticmethod
    def _clarabel_trials(problem, mu, refine):
        from kktembed.kkt.solve import most_complementary_l2, polish_l2, solve_l2

        solution = solve_l2(problem.gram, problem.b, problem.excess, mu)
        trials = [solution.multipliers]
        if refine:
            polished = polish_l2(problem.gram, problem.b, solution.multipliers)
            complementary = most_complementary_l2(problem.gram, problem.b, problem.excess, polished if polished is not None else solution.multipliers)
            refined = [polished] + ([complementary, polish_l2(problem.gram, problem.b, complementary)] if complementary is not None else [])
            trials += [multipliers for multipliers in refined if multipliers is not None]
        return solution, trials


class LPNorm(MultiplierNorm):
    description = "LP on the p × n_c gradient matrix (slower, more memory)"
    solvers = ("highs",)

    def __init__(self, name: str, order: float):
        self.name, self.order = name, order

    def trials(self, problem, mu, refine, solver, start=None):
        import numpy as np

        from kktembed.kkt.gram import gradient_matrix
        from kktembed.kkt.select import EPSILON_ALLOWANCE
        from kktembed.kkt.solve import most_complementary_lp, solve_lp
        from kktembed.network import flatten_params

        from kktembed.resources import ensure_fits

        n_parameters, n_candidates = problem.network.n_parameters, len(problem.q)
        # G itself, and cvxpy's copy of it in the LP's constraint matrix
        ensure_fits(
            2 * n_parameters * n_candidates * 8,
            f"the {self.name} LP over the {n_parameters:,} × {n_candidates:,} gradient matrix",
            hint="use --norm l2 (Gram matrix only) or a smaller --active-tol",
            limit=LP_MEMORY_LIMIT,
        )
        gradients = gradient_matrix(problem.network, problem.x, problem.constraints, problem.theta_hat).numpy()
        theta_vector = flatten_params(problem.theta_hat).numpy()
        solution = solve_lp(gradients, theta_vector, problem.excess, self.name, mu)
        trials = [solution.multipliers]
        if refine:
            scale = float(np.linalg.norm(theta_vector, ord=self.order))
            bound = solution.objective + 0.5 * EPSILON_ALLOWANCE * scale
            complementary = most_complementary_lp(gradients, theta_vector, problem.excess, self.name, bound)
            trials += [complementary] if complementary is not None else []
        return solution, trials


NORMS: dict[str, MultiplierNorm] = {norm.name: norm for norm in (L2Norm(), LPNorm("l1", 1.0), LPNorm("linf", float("inf")))}


SOLVERS = ("auto", "active-set", "clarabel", "highs")


def solver_for(norm: MultiplierNorm, solver: str) -> str:
    """The solver to use: ``auto`` is the norm's default; another must be one the norm has."""
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r}", hint=f"use {', '.join(SOLVERS)}")
    if solver == "auto":
        return norm.solvers[0]
    if solver not in norm.solvers:
        raise UsageError(f"--solver {solver} does not solve the {norm.name} problem", hint=f"{norm.name} uses {' or '.join(norm.solvers)}")
    return solver


def get_norm(name: str) -> MultiplierNorm:
    """The norm called ``name``; a UsageError naming the known ones otherwise."""
    try:
        return NORMS[name]
    except KeyError:
        raise UsageError(f"unknown norm {name!r}", hint=f"use {', '.join(NORMS)}") from None
