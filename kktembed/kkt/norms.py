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

# The ℓ1/ℓ∞ LPs materialise G (p × n_c float64); beyond this they are refused with a hint.
LP_MEMORY_LIMIT = 4 * 2**30


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

    def trials(self, problem: CandidateProblem, mu: float, refine: bool):
        """(solution, [λ to measure, least refined first]) for complementarity weight μ."""
        raise NotImplementedError


class L2Norm(MultiplierNorm):
    name, order = "l2", 2.0
    description = "QP on the Gram matrix (fast)"

    def trials(self, problem, mu, refine):
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

    def __init__(self, name: str, order: float):
        self.name, self.order = name, order

    def trials(self, problem, mu, refine):
        import numpy as np

        from kktembed.kkt.gram import gradient_matrix
        from kktembed.kkt.select import EPSILON_ALLOWANCE
        from kktembed.kkt.solve import most_complementary_lp, solve_lp
        from kktembed.network import flatten_params

        n_parameters, n_candidates = problem.network.n_parameters, len(problem.q)
        needed = n_parameters * n_candidates * 8
        if needed > LP_MEMORY_LIMIT:
            raise UsageError(
                f"the {self.name} LP needs the {n_parameters:,} × {n_candidates:,} gradient matrix "
                f"({needed / 2**30:.1f} GiB, over the {LP_MEMORY_LIMIT / 2**30:.0f} GiB limit)",
                hint="use --norm l2 (Gram matrix only) or a smaller --active-tol",
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


def get_norm(name: str) -> MultiplierNorm:
    """The norm called ``name``; a UsageError naming the known ones otherwise."""
    try:
        return NORMS[name]
    except KeyError:
        raise UsageError(f"unknown norm {name!r}", hint=f"use {', '.join(NORMS)}") from None
