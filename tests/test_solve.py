"""The multiplier solvers on small problems whose answers are known (MATH.md §3)."""

import numpy as np
import pytest

from kktembed.kkt.solve import most_complementary_l2, polish_l2, solve_l2, solve_lp


def degenerate_problem():
    """θ̂ = g1 + g2 with a third gradient g3 = g1 + g2: every λ = (t, t, 1 − t) is optimal (ε = 0)."""
    rng = np.random.default_rng(0)
    g1, g2 = rng.normal(size=6), rng.normal(size=6)
    gradients = np.stack([g1, g2, g1 + g2], axis=1)
    theta = g1 + g2
    return gradients, theta, gradients.T @ gradients, gradients.T @ theta


def test_complementarity_stage_picks_the_tight_constraints():
    gradients, theta, gram, b = degenerate_problem()
    excess = np.array([0.0, 0.0, 0.5])  # q − 1: the third constraint is not tight
    spread = np.array([0.5, 0.5, 0.5])  # optimal, but δ = 0.25
    assert np.linalg.norm(theta - gradients @ spread) < 1e-12
    refined = most_complementary_l2(gram, b, excess, spread)
    assert refined == pytest.approx([1.0, 1.0, 0.0], abs=1e-7)
    assert np.linalg.norm(theta - gradients @ refined) < 1e-6


def test_complementarity_stage_skips_a_unique_optimum():
    rng = np.random.default_rng(1)
    gradients = rng.normal(size=(8, 3))
    theta = gradients @ np.array([0.3, 0.0, 1.2]) + 0.1 * rng.normal(size=8)
    gram, b = gradients.T @ gradients, gradients.T @ theta
    solution = solve_l2(gram, b, np.zeros(3))
    polished = polish_l2(gram, b, solution.multipliers)
    assert most_complementary_l2(gram, b, np.array([0.0, 0.1, 0.2]), polished) is None


def test_polish_recovers_the_nonnegative_least_squares_solution():
    from scipy.optimize import nnls

    rng = np.random.default_rng(2)
    gradients = rng.normal(size=(20, 7))
    theta = rng.normal(size=20)
    gram, b = gradients.T @ gradients, gradients.T @ theta
    solution = solve_l2(gram, b, np.zeros(7))
    polished = polish_l2(gram, b, solution.multipliers)
    reference, _ = nnls(gradients, theta)
    assert polished == pytest.approx(reference, abs=1e-12)
    assert solution.multipliers == pytest.approx(reference, abs=1e-6)


@pytest.mark.parametrize("norm,order", [("l1", 1), ("linf", np.inf)])
def test_lp_matches_a_brute_force_optimum(norm, order):
    rng = np.random.default_rng(3)
    gradients = rng.normal(size=(5, 2))
    theta = rng.normal(size=5)
    solution = solve_lp(gradients, theta, np.zeros(2), norm)
    grid = np.linspace(0, 3, 301)
    best = min(np.linalg.norm(theta - gradients @ np.array([a, c]), ord=order) for a in grid for c in grid)
    assert solution.objective <= best + 1e-9
    assert (solution.multipliers >= 0).all() and solution.status == "optimal"
