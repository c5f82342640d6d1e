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
import functools
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from kktembed.errors import SolverError

# Tighter than Clarabel's defaults (1e-8): two checks of the same QP (a checkpoint and its isometric
# split) then agree on λ and δ to ~1e-14 instead of ~1e-7. Where they cannot be reached, the
# defaults are used.
CLARABEL_SETTINGS = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "tol_ktratio": 1e-10}


@dataclass
class MultiplierSolution:
    multipliers: np.ndarray  # λ ≥ 0, one per candidate constraint
    solver: str
    status: str
    seconds: float
    objective: float | None = None  # LPs: the optimal ‖θ̂ − Gλ‖ in their norm (bounds the second stage)


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


def quiet_cvxpy_bounds(function):
    """cvxpy's bound propagation, while it builds ℓ1/ℓ∞ expressions over unbounded variables,
    multiplies 0 by inf and emits RuntimeWarnings: harmless noise for the user, so silenced."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="cvxpy.*")
            return function(*args, **kwargs)

    return wrapper


def _solve(problem, solver: str, label: str, **settings) -> tuple[str, float]:
    import cvxpy as cp

    started = time.perf_counter()
    try:
        with native_stdout_silenced(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="cvxpy.*")
            # the status is checked below; an inaccurate solve is an error or a retry, not a warning
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            problem.solve(solver=solver, **settings)
    except cp.error.SolverError as exc:
        raise SolverError(f"{label}: solver {solver} failed ({exc})", hint="try --norm l2 or a smaller --active-tol")
    seconds = time.perf_counter() - started
    if problem.status != cp.OPTIMAL:
        raise SolverError(
            f"{label}: solver {solver} ended with status {problem.status!r}, not optimal; no multipliers are reported",
            hint="try a smaller --active-tol, or KKTEMBED_DEBUG=1 for details",
        )
    return problem.status, seconds


def solve_l2(gram: np.ndarray, b: np.ndarray, excess: np.ndarray, mu: float = 0.0) -> MultiplierSolution:
    """ℓ2 multiplier QP over the Gram matrix (MATH.md §3). ``excess`` is q − 1 on the candidates.
    The constant ‖θ̂‖² is left out; ε is not read off the optimal value (λᵀKλ − 2bᵀλ + ‖θ̂‖² loses
    half the digits to cancellation near a KKT point) but measured directly by the caller."""
    import cvxpy as cp

    gram = (gram + gram.T) / 2

    def attempt(settings: dict) -> tuple[np.ndarray, str, float]:
        lam = cp.Variable(len(b), nonneg=True)  # a fresh problem: cvxpy caches solver state per problem
        objective = cp.quad_form(lam, cp.psd_wrap(gram)) - 2 * b @ lam + mu * excess @ lam
        status, seconds = _solve(cp.Problem(cp.Minimize(objective)), cp.CLARABEL, "ℓ2 multiplier QP", **settings)
        return np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0), status, seconds

    try:
        multipliers, status, seconds = attempt(CLARABEL_SETTINGS)
    except SolverError:  # the tight tolerances were not reached: Clarabel's defaults decide
        multipliers, status, seconds = attempt({})
    return MultiplierSolution(multipliers, "CLARABEL", status, seconds)


def most_complementary_l2(gram: np.ndarray, b: np.ndarray, excess: np.ndarray, optimum: np.ndarray, relative_tol: float = 1e-9) -> np.ndarray | None:
    """Second, lexicographic stage: among the optimal λ of the ℓ2 QP, the one with the smallest
    δ = Σ λ_k (q_k − 1). It matters when the optimum is degenerate (linearly dependent gradients):
    an interior-point λ* then spreads over every candidate that could carry weight and reports a δ
    that the point does not deserve.

    All optima share Gλ = Gλ*. By complementarity they vanish outside I = {i : (Kλ* − b)_i = 0}, and
    on I, Gλ = Gλ* ⟺ K_II λ_I = K_II λ*_I. So the optimal set is {λ ≥ 0 on I, K_II λ_I = K_II λ*_I},
    a singleton when K_II has full rank (then None: nothing to refine), else a polytope over which
    HiGHS minimises (q − 1)ᵀλ (equalities relaxed by ``relative_tol``)."""
    import cvxpy as cp

    scale = float(np.abs(b).max()) + float(np.abs(gram).max()) * float(optimum.sum())
    active = np.abs(gram @ optimum - b) <= relative_tol * scale
    if not active.any():
        return None
    block = gram[np.ix_(active, active)]
    if np.linalg.matrix_rank(block, tol=relative_tol * float(np.abs(block).max())) == int(active.sum()):
        return None
    lam = cp.Variable(int(active.sum()), nonneg=True)
    target = block @ optimum[active]
    tolerance = relative_tol * (float(np.abs(target).max()) + float(np.abs(b).max()))
    try:
        _solve(cp.Problem(cp.Minimize(excess[active] @ lam), [cp.abs(block @ lam - target) <= tolerance]), cp.HIGHS, "complementarity stage")
    except SolverError:
        return None
    refined = np.zeros_like(optimum)
    refined[active] = np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0)
    return refined


@quiet_cvxpy_bounds
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


def polish_l2(gram: np.ndarray, b: np.ndarray, multipliers: np.ndarray, relative_tol: float = 1e-7) -> np.ndarray | None:
    """Active-set refinement of a QP solution (Lawson–Hanson on the Gram form, warm-started).

    min λᵀKλ − 2bᵀλ over λ ≥ 0 is solved exactly when S is the support: K_SS λ_S = b_S, λ_S > 0,
    and (b − Kλ)_i ≤ 0 off S. Starting from S = {λ_k > tol·max λ} of the interior-point solution,
    negative entries leave S and the most violated index joins it, until both conditions hold.
    Interior-point solvers stop ~1e-8 from the optimum; this recovers λ to rounding, so two solves
    of the same problem agree. Returns None if it does not settle."""
    if multipliers.max(initial=0.0) <= 0:
        return None
    support = multipliers > relative_tol * multipliers.max()
    scale = float(np.abs(b).max()) + 1e-300
    for _ in range(2 * len(b) + 10):
        if not support.any():
            return None
        solution, *_ = np.linalg.lstsq(gram[np.ix_(support, support)], b[support], rcond=None)
        if (solution <= 0).any():
            indices = np.flatnonzero(support)
            support[indices[solution <= 0]] = False
            continue
        refined = np.zeros_like(multipliers)
        refined[support] = solution
        violation = b - gram @ refined
        violation[support] = -np.inf
        worst = int(np.argmax(violation))
        if violation[worst] <= 1e-10 * (scale + float(np.abs(gram).max()) * refined.sum()):
            return refined
        support[worst] = True
    return None


@quiet_cvxpy_bounds
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
