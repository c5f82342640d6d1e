"""The multiplier problem solved with cvxpy (MATH.md §3).

ℓ2:   min_{λ≥0} ‖θ̂ − Gλ‖₂² + μ Σ λ_k (q_k − 1)
      = λᵀKλ − 2bᵀλ + ‖θ̂‖² + μ (q − 1)ᵀλ,  K = GᵀG, b = Gᵀθ̂ = L·q(θ̂) (Euler's identity),
      written as ``quad_form(λ, psd_wrap(K))`` and solved by Clarabel: the QP never sees p rows.
ℓ1/ℓ∞ (the multiplier LP): min_{λ≥0} ‖θ̂ − Gλ‖_{1 or ∞} + μ (q − 1)ᵀλ, which needs G (p × n_c),
      solved by HiGHS.
A solver status other than optimal raises SolverError.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from kktembed.errors import SolverError

NORMS = ("l2", "l1", "linf")


@dataclass
class MultiplierSolution:
    multipliers: np.ndarray  # λ ≥ 0, one per candidate constraint
    solver: str
    status: str
    seconds: float
    objective: float  # the solved norm of θ̂ − Gλ (ℓ2: from the Gram expansion, guarded at 0)
    refined: bool = False


@contextlib.contextmanager
def native_stdout_silenced():
    """HiGHS prints a banner from C++ straight to file descriptor 1, which would corrupt ``--json``
    output; point fd 1 at /dev/null while a solver runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _solve(problem, solver: str, label: str) -> tuple[str, float]:
    import cvxpy as cp

    started = time.perf_counter()
    try:
        with native_stdout_silenced(), warnings.catch_warnings():
            # cvxpy's bound propagation multiplies 0 by inf on unbounded variables; harmless noise
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="cvxpy")
            problem.solve(solver=solver)
    except cp.error.SolverError as exc:
        raise SolverError(f"{label}: solver {solver} failed ({exc})", hint="try --norm l2 or a smaller --active-tol")
    seconds = time.perf_counter() - started
    if problem.status != cp.OPTIMAL:
        raise SolverError(
            f"{label}: solver {solver} ended with status {problem.status!r}, not optimal; no multipliers are reported",
            hint="try a smaller --active-tol, or KKTEMBED_DEBUG=1 for details",
        )
    return problem.status, seconds


def solve_l2(gram: np.ndarray, b: np.ndarray, theta_norm_sq: float, excess: np.ndarray, mu: float = 0.0) -> MultiplierSolution:
    """ℓ2 multiplier QP over the Gram matrix (MATH.md §3). ``excess`` is q − 1 on the candidates."""
    import cvxpy as cp

    gram = (gram + gram.T) / 2
    lam = cp.Variable(len(b), nonneg=True)
    objective = cp.quad_form(lam, cp.psd_wrap(gram)) - 2 * b @ lam + mu * excess @ lam
    problem = cp.Problem(cp.Minimize(objective))
    status, seconds = _solve(problem, cp.CLARABEL, "ℓ2 multiplier QP")
    multipliers = np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0)
    return MultiplierSolution(multipliers, "CLARABEL", status, seconds, _l2_residual(gram, b, theta_norm_sq, multipliers))


def most_complementary_l2(gram: np.ndarray, b: np.ndarray, theta_norm_sq: float, excess: np.ndarray, residual_sq: float) -> np.ndarray | None:
    """Second, lexicographic stage: among λ ≥ 0 with ‖θ̂ − Gλ‖² ≤ ``residual_sq`` (the first stage's
    optimum plus a small allowance), minimise δ = Σ λ_k (q_k − 1). When the optimal ε is attained by
    many λ (degenerate supports), the first stage's interior point spreads λ over all of them and
    reports a δ that the point does not deserve. Returns None if the solver does not succeed."""
    import cvxpy as cp

    lam = cp.Variable(len(b), nonneg=True)
    constraint = cp.quad_form(lam, cp.psd_wrap(gram)) - 2 * b @ lam + theta_norm_sq <= residual_sq
    problem = cp.Problem(cp.Minimize(excess @ lam), [constraint])
    try:
        with warnings.catch_warnings():  # an inaccurate second stage is discarded, not reported
            warnings.simplefilter("ignore")
            problem.solve(solver=cp.CLARABEL)
    except cp.error.SolverError:
        return None
    if problem.status != cp.OPTIMAL or lam.value is None:
        return None
    return np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0)


def most_complementary_lp(gradients: np.ndarray, theta_hat: np.ndarray, excess: np.ndarray, norm: str, bound: float) -> np.ndarray | None:
    """The lexicographic second stage for the ℓ1/ℓ∞ LPs: min δ s.t. ‖θ̂ − Gλ‖ ≤ ``bound``."""
    import cvxpy as cp

    lam = cp.Variable(gradients.shape[1], nonneg=True)
    residual = theta_hat - gradients @ lam
    measure = cp.norm1(residual) if norm == "l1" else cp.norm_inf(residual)
    problem = cp.Problem(cp.Minimize(excess @ lam), [measure <= bound])
    try:
        with native_stdout_silenced():
            problem.solve(solver=cp.HIGHS)
    except cp.error.SolverError:
        return None
    if problem.status != cp.OPTIMAL or lam.value is None:
        return None
    return np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0)


def _l2_residual(gram: np.ndarray, b: np.ndarray, theta_norm_sq: float, multipliers: np.ndarray) -> float:
    """‖θ̂ − Gλ‖ = sqrt(λᵀKλ − 2bᵀλ + ‖θ̂‖²), guarded against small negative rounding (MATH.md §3)."""
    value = multipliers @ gram @ multipliers - 2 * b @ multipliers + theta_norm_sq
    return float(np.sqrt(max(value, 0.0)))


def polish_l2(gram: np.ndarray, b: np.ndarray, multipliers: np.ndarray, relative_tol: float = 1e-7, rounds: int = 20) -> np.ndarray | None:
    """Active-set refinement of a QP solution. On the support S = {λ_k > tol·max λ}, solve the
    unconstrained least squares K_SS λ_S = b_S (the QP's stationarity equations restricted to S);
    drop indices that come out negative and repeat. Returns the refined λ ≥ 0, or None.
    Interior-point solvers stop ~1e-8 from the optimum; when the support is right this recovers
    the multipliers to rounding. The caller keeps it only if the measured ε decreases."""
    if multipliers.max(initial=0.0) <= 0:
        return None
    support = multipliers > relative_tol * multipliers.max()
    for _ in range(rounds):
        if not support.any():
            return None
        refined_support, *_ = np.linalg.lstsq(gram[np.ix_(support, support)], b[support], rcond=None)
        if (refined_support >= 0).all():
            refined = np.zeros_like(multipliers)
            refined[support] = refined_support
            return refined
        indices = np.flatnonzero(support)
        support[indices[refined_support < 0]] = False
    return None


def solve_lp(gradients: np.ndarray, theta_hat: np.ndarray, excess: np.ndarray, norm: str, mu: float = 0.0) -> MultiplierSolution:
    """ℓ1 or ℓ∞ multiplier LP on G = ``gradients`` (p × n_c) (MATH.md §3), solved by HiGHS."""
    import cvxpy as cp

    lam = cp.Variable(gradients.shape[1], nonneg=True)
    residual = theta_hat - gradients @ lam
    measure = cp.norm1(residual) if norm == "l1" else cp.norm_inf(residual)
    problem = cp.Problem(cp.Minimize(measure + mu * excess @ lam))
    status, seconds = _solve(problem, cp.HIGHS, f"{norm} multiplier LP")
    multipliers = np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0)
    order = 1 if norm == "l1" else np.inf
    objective = float(np.linalg.norm(theta_hat - gradients @ multipliers, ord=order))
    return MultiplierSolution(multipliers, "HIGHS", status, seconds, objective)
