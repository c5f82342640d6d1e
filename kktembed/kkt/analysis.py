"""``check``: how close a checkpoint is to a KKT point of P_Φ (MATH.md §2–3), in named stages:

  1. homogeneity   verify the declared degree L (scaling and Euler's identity)
  2. margins       q_k(θ), q_min, γ̄ = q_min/‖θ‖^L, accuracy, alignment β
  3. normalization θ̂ = θ / q_min^{1/L}, so that min_k q_k(θ̂) = 1 (needs q_min > 0)
  4. candidates    A_τ = {k : q_k(θ̂) ≤ 1 + τ} for τ and the profile's ladder, within --max-candidates
  5. gram          K on the widest candidate set; each τ uses its nested sub-matrix
  6. multipliers   λ from the chosen norm's problem and its refinements, chosen by measured residuals
  7. residuals     ε = ‖θ̂ − Σλ∇q‖ (measured by a backward pass), δ = Σλ(q − 1), support, kinks
  8. verdict       kkt / approximate / not_kkt, never finer than the storage precision floor
  9. profile       the ℓ2 problem over the τ ladder
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from kktembed.data import Dataset
from kktembed.errors import InputError, UsageError
from kktembed.homogeneity import HomogeneityReport, verify_homogeneity
from kktembed.kkt.gram import estimate_gram_bytes, gram_matrix
from kktembed.resources import format_size
from kktembed.kkt.margins import Constraints, accuracy, build_constraints, margins, margins_from_outputs, normalized_margin, rescale_to_unit_margin
from kktembed.kkt.norms import CandidateProblem, get_norm, solver_for
from kktembed.kkt.options import PROFILE_TOLS, CheckOptions
from kktembed.kkt.residuals import alignment, kink_counts, stationarity_vector
from kktembed.kkt.result import CheckResult, ProfileRow, verdict_for
from kktembed.kkt.select import EPSILON_ALLOWANCE, Trial, choose_multipliers
from kktembed.kkt.solve import MultiplierSolution
from kktembed.network import Network, flatten_params, safe_norm

HOMOGENEITY_SAMPLES = 512


@dataclass(frozen=True)
class MarginStage:
    outputs: torch.Tensor
    constraints: Constraints
    q: torch.Tensor
    q_min: float
    theta_norm: float


@dataclass(frozen=True)
class SolvedMultipliers:
    solution: MultiplierSolution
    multipliers: torch.Tensor  # λ over all constraints
    stationarity_residual: float  # ε, measured
    refined: bool  # a refinement, not the solver's own λ, was chosen


def margin_stage(network: Network, dataset: Dataset) -> MarginStage:
    """q_k(θ) for every constraint (MATH.md §1), q_min and ‖θ‖."""
    outputs = network.forward(dataset.x)
    if not torch.isfinite(outputs).all():
        raise InputError(
            f"the network's outputs overflow float64 on {dataset.source} (max |x| = {float(dataset.x.abs().max()):.3g})",
            hint="rescale the inputs (the margins of a network without a first-layer bias scale with them)",
        )
    constraints = build_constraints(dataset.y, outputs.shape[1])
    q = margins_from_outputs(outputs, constraints)
    return MarginStage(outputs, constraints, q, float(q.min()), network.norm())


# ‖θ‖^L outside [1e-100, 1e100] is analysed at θ/‖θ‖ (margins would overflow or underflow float64)
SCALE_DECADES = 100


def well_scaled(network: Network) -> tuple[Network, float]:
    """(the network to analyse, ‖θ‖). Everything ``check`` reports except q_min and ‖θ‖ is invariant
    under θ → cθ (γ̄, θ̂ = θ/q_min^{1/L}, ε, δ, λ: MATH.md §1–2), so a θ whose margins would
    overflow or underflow float64 is analysed at θ/‖θ‖ and q_min reported as q_min(θ/‖θ‖)·‖θ‖^L."""
    import math

    norm = safe_norm(network.params)
    if norm == 0.0:
        raise InputError("the network is zero (every parameter is 0): it has no margins to analyse", hint="check that the right checkpoint was saved")
    if abs(network.degree * math.log10(norm)) <= SCALE_DECADES:
        return network, norm
    return network.with_params({key: value / norm for key, value in network.params.items()}), norm


def candidate_pool(q_hat: torch.Tensor, options: CheckOptions) -> tuple[list[float], float, torch.Tensor]:
    """(τ ladder, widest τ that fits --max-candidates, indices of A_widest sorted by q_k(θ̂), so that
    each A_τ is a leading block) (MATH.md §2 support)."""
    ladder = sorted({options.active_tol, *(PROFILE_TOLS if options.profile else ())})
    widest = max((tol for tol in ladder if int((q_hat <= 1 + tol).sum()) <= options.max_candidates), default=None)
    if widest is None or widest < options.active_tol:
        raise UsageError(
            f"{int((q_hat <= 1 + options.active_tol).sum())} candidate constraints at --active-tol {options.active_tol} "
            f"exceed --max-candidates {options.max_candidates}",
            hint="lower --active-tol or raise --max-candidates",
        )
    pool = torch.nonzero(q_hat <= 1 + widest).reshape(-1)
    order = np.lexsort((pool.numpy(), q_hat[pool].numpy()))  # by q, ties by index
    return ladder, widest, pool[torch.from_numpy(order)]


class MultiplierSolver:
    """λ on A_τ for any τ ≤ widest and any norm, cached per (τ, norm). The pool (A_widest) is sorted
    by q_k(θ̂), so every A_τ is a leading block of it and its Gram matrix a view of the pool's
    (MATH.md §3: one n_c × n_c matrix in all); ℓ2 solves start from the solution of the next smaller
    τ already solved (warm start)."""

    def __init__(self, network: Network, dataset: Dataset, constraints: Constraints, theta_hat: dict, q_hat: torch.Tensor, pool: torch.Tensor, pool_gram: np.ndarray, options: CheckOptions):
        self.network, self.x, self.constraints, self.theta_hat = network, dataset.x, constraints, theta_hat
        self.q_hat, self.pool, self.pool_gram = q_hat, pool, pool_gram
        self.mu, self.solver, self.device = options.complementarity_weight, options.solver, options.device
        self.theta_hat_vector = flatten_params(theta_hat)
        self.solved: dict[tuple[float, str], SolvedMultipliers] = {}

    def solve(self, tol: float, norm_name: str) -> SolvedMultipliers:
        key = (tol, norm_name)
        if key not in self.solved:
            self.solved[key] = self._solve(tol, norm_name)
        return self.solved[key]

    def _solve(self, tol: float, norm_name: str) -> SolvedMultipliers:
        norm = get_norm(norm_name)
        size = int((self.q_hat[self.pool] <= 1 + tol).sum())
        candidates = self.pool[:size]
        problem = CandidateProblem(
            self.pool_gram[:size, :size], self.q_hat[candidates].numpy(), self.network.degree,
            self.network, self.x, self.constraints.subset(candidates), self.theta_hat,
        )
        solution, multipliers = norm.trials(problem, self.mu, self.mu == 0, solver_for(norm, self.solver), self._warm_start(norm_name, size))
        full = [self._on_all_constraints(candidates, values) for values in multipliers]
        complementarity = [float((values * (self.q_hat - 1)).sum()) for values in full]
        if norm.name == "l2":
            chosen = self._choose_l2(problem, multipliers, full, complementarity)
        else:
            residuals = [self._residual(values) for values in full]
            trials = [Trial(values, float(torch.linalg.vector_norm(r, ord=norm.order)), c) for values, r, c in zip(full, residuals, complementarity)]
            chosen = choose_multipliers(trials, float(torch.linalg.vector_norm(self.theta_hat_vector, ord=norm.order)))
        epsilon = float(self._residual(chosen.multipliers).norm())
        return SolvedMultipliers(solution, chosen.multipliers, epsilon, chosen.multipliers is not full[0])

    def _choose_l2(self, problem: CandidateProblem, multipliers: list[np.ndarray], full: list[torch.Tensor], complementarity: list[float]) -> Trial:
        """Choose among ℓ2 trials by ε² = λᵀKλ − 2bᵀλ + ‖θ̂‖² from the Gram matrix where that is
        accurate (ε² far above its rounding, about 8u(‖θ̂‖² + λᵀKλ + 2|bᵀλ|)), measuring by a backward
        pass only the trials that could still win; otherwise every trial is measured."""
        theta_squared = float(self.theta_hat_vector @ self.theta_hat_vector)
        estimates, bounds = [], []
        for values in multipliers:
            support = np.flatnonzero(values)
            quadratic = float(values[support] @ (problem.gram[np.ix_(support, support)] @ values[support])) if len(support) else 0.0
            linear = float(problem.b @ values)
            estimates.append(max(quadratic - 2 * linear + theta_squared, 0.0))
            bounds.append(8 * np.finfo(np.float64).eps * (theta_squared + quadratic + 2 * abs(linear)))
        accurate = all(estimate > 1e4 * bound for estimate, bound in zip(estimates, bounds))
        norms = [float(np.sqrt(estimate)) for estimate in estimates]
        errors = [bound / (2 * norm) if norm > 0 else float("inf") for bound, norm in zip(bounds, norms)]
        if accurate:
            best = min(norms)
            reach = EPSILON_ALLOWANCE * float(self.theta_hat_vector.norm())
            contenders = [i for i, norm in enumerate(norms) if norm - errors[i] <= best + errors[norms.index(best)] + reach]
        else:
            contenders = list(range(len(full)))
        for i in contenders:
            norms[i] = float(self._residual(full[i]).norm())
        trials = [Trial(full[i], norms[i], complementarity[i]) for i in contenders]
        return choose_multipliers(trials, float(self.theta_hat_vector.norm()))

    def _warm_start(self, norm_name: str, size: int) -> np.ndarray | None:
        """λ of the largest smaller τ already solved for this norm, padded with zeros."""
        smaller = [(int((self.q_hat[self.pool] <= 1 + tol).sum()), solved) for (tol, name), solved in self.solved.items() if name == norm_name]
        smaller = [(n, solved) for n, solved in smaller if n <= size]
        if not smaller:
            return None
        n, solved = max(smaller, key=lambda item: item[0])
        start = np.zeros(size)
        start[:n] = solved.multipliers[self.pool[:n]].numpy()
        return start

    def _on_all_constraints(self, candidates: torch.Tensor, values: np.ndarray) -> torch.Tensor:
        full = torch.zeros(len(self.constraints), dtype=torch.float64)
        full[candidates] = torch.from_numpy(np.ascontiguousarray(values))
        return full

    def _residual(self, multipliers: torch.Tensor) -> torch.Tensor:
        return stationarity_vector(self.network, self.x, self.constraints, multipliers, self.theta_hat, self.device)


def support_mask(multipliers: torch.Tensor, support_tol: float) -> torch.Tensor:
    """λ_k > support_tol · max λ."""
    if float(multipliers.sum()) <= 0:
        return torch.zeros_like(multipliers, dtype=torch.bool)
    return multipliers > support_tol * float(multipliers.max())


def kink_stage(network: Network, x: torch.Tensor, constraints: Constraints, support: torch.Tensor, theta_hat: dict, kink_tol: float) -> tuple[int | None, int | None]:
    """(support constraints whose sample has a pre-activation at a kink, near-kink pre-activations)."""
    support_samples = torch.unique(constraints.sample[support])
    if not len(support_samples):
        return None, None
    flags, total = kink_counts(network, x[support_samples], theta_hat, kink_tol)
    near_samples = set(support_samples[flags].tolist())
    return sum(1 for k in constraints.sample[support].tolist() if k in near_samples), total


def profile_stage(solver: MultiplierSolver, ladder: list[float], widest: float, q_hat: torch.Tensor, theta_hat_norm: float, support_tol: float) -> tuple[ProfileRow, ...]:
    """The ℓ2 problem over the τ ladder (MATH.md §2: how ε trades against δ)."""
    rows = []
    for tol in ladder:
        n_candidates = int((q_hat <= 1 + tol).sum())
        if tol > widest:
            rows.append(ProfileRow(tol, n_candidates, None, None, None, "skipped: > --max-candidates"))
            continue
        solved = solver.solve(tol, "l2")
        lam = solved.multipliers
        rows.append(ProfileRow(tol, n_candidates, int(support_mask(lam, support_tol).sum()), solved.stationarity_residual / theta_hat_norm, float((lam * (q_hat - 1)).sum())))
    return tuple(rows)


def check_network(network: Network, dataset: Dataset, options: CheckOptions | None = None, on_step: Callable[[str], None] | None = None) -> CheckResult:
    """The full KKT analysis of MATH.md §2–3 for ``network`` on ``dataset`` (module docstring)."""
    from kktembed.loading import precision_floor

    options = (options or CheckOptions()).validate()
    step = on_step or (lambda message: None)
    x, degree = dataset.x, network.degree

    floor = precision_floor(network)
    original, (network, theta_norm) = network, well_scaled(network)
    step("verifying homogeneity (scaling and Euler's identity)")
    homogeneity: HomogeneityReport = verify_homogeneity(network, x[:HOMOGENEITY_SAMPLES])
    state = margin_stage(network, dataset)
    q_min = state.q_min
    if network is not original:
        for _ in range(degree):  # q_min(θ) = q_min(θ/‖θ‖)·‖θ‖^L; float products overflow to inf, not an exception
            q_min *= theta_norm
    result = CheckResult(
        checkpoint=original.load_report.source if original.load_report is not None else (str(original.path) if original.path else None),
        data=dataset.source,
        adapter=network.adapter.name,
        activation=network.config.get("activation"),
        degree=degree,
        euler_error=homogeneity.euler_error,
        scaling_error=homogeneity.scaling_error,
        n_samples=dataset.n_samples,
        n_constraints=len(state.constraints),
        n_parameters=network.n_parameters,
        accuracy=accuracy(state.outputs, dataset.y),
        q_min=q_min,
        normalized_margin=normalized_margin(state.q_min, state.theta_norm, degree),
        theta_norm=theta_norm,
        verdict="not_separable",
        storage_dtype=original.load_report.storage_dtype if original.load_report is not None else "float64",
        precision_floor=floor,
        loss=options.loss,
        kkt_tol=options.kkt_tol,
        approx_tol=options.approx_tol,
        load=original.load_report.to_dict() if original.load_report is not None else None,
    )
    step("alignment with the loss gradient")
    result = replace(result, alignment=alignment(network, x, state.constraints, state.q, options.loss, options.device))
    if state.q_min <= 0:
        return result

    theta_hat = rescale_to_unit_margin(network.params, state.q_min, degree)
    q_hat = margins(network, x, state.constraints, theta_hat)
    theta_hat_norm = network.norm(theta_hat)
    ladder, widest, pool = candidate_pool(q_hat, options)
    gram_memory = estimate_gram_bytes(network, len(pool))
    step(f"Gram matrix of {len(pool):,} candidate constraints (about {format_size(gram_memory)})")
    started = time.perf_counter()
    pool_gram = gram_matrix(network, x, state.constraints.subset(pool), theta_hat, device=options.device).numpy()
    gram_seconds = time.perf_counter() - started
    if not np.isfinite(pool_gram).all():
        raise InputError(
            f"the Gram matrix of the constraint gradients overflows float64 on {dataset.source} (max |x| = {float(x.abs().max()):.3g})",
            hint="rescale the inputs",
        )
    solver = MultiplierSolver(network, dataset, state.constraints, theta_hat, q_hat, pool, pool_gram, options)

    step(f"solving the {options.norm} multiplier problem")
    solved = solver.solve(options.active_tol, options.norm)
    lam = solved.multipliers
    complementarity = lam * (q_hat - 1.0)
    multiplier_sum = float(lam.sum())
    support = support_mask(lam, options.support_tol)
    near_kink, near_kink_total = kink_stage(network, x, state.constraints, support, theta_hat, options.kink_tol)
    relative_epsilon = solved.stationarity_residual / theta_hat_norm
    relative_delta = float(complementarity.sum()) / multiplier_sum if multiplier_sum > 0 else 0.0
    numbers = (theta_hat_norm, solved.stationarity_residual, relative_epsilon, multiplier_sum, relative_delta)
    if not all(np.isfinite(numbers)):  # a residual that is not a number is an error, never a verdict
        raise InputError(
            f"the KKT residuals at θ̂ = θ/q_min^(1/L) are not finite in float64 (q_min {state.q_min:.3g}, ‖θ̂‖ {theta_hat_norm:.3g}, "
            f"ε {solved.stationarity_residual:.3g}, Σλ {multiplier_sum:.3g}; max |x| = {float(x.abs().max()):.3g})",
            hint="rescale the inputs (for a network without a first-layer bias only q_min, γ̄ and the absolute residuals depend on their scale)",
        )
    verdict, note = verdict_for(relative_epsilon, relative_delta, options.kkt_tol, options.approx_tol, floor)
    norm = get_norm(options.norm)
    residual_vector = solver._residual(lam)
    result = replace(
        result,
        verdict=verdict,
        verdict_note=note,
        theta_hat_norm=theta_hat_norm,
        active_tol=options.active_tol,
        n_candidates=int((q_hat <= 1 + options.active_tol).sum()),
        n_support=int(support.sum()),
        stationarity_residual=solved.stationarity_residual,
        relative_stationarity_residual=relative_epsilon,
        complementarity_residual=float(complementarity.sum()),
        max_complementarity_residual=float(complementarity.max()),
        relative_complementarity_residual=relative_delta,
        multiplier_sum=multiplier_sum,
        norm=options.norm,
        norm_residual=float(torch.linalg.vector_norm(residual_vector, ord=norm.order)),
        n_support_near_kink=near_kink,
        n_preactivations_near_kink=near_kink_total,
        solver=solved.solution.solver,
        solver_status=solved.solution.status,
        solver_seconds=solved.solution.seconds,
        gram_seconds=gram_seconds,
        gram_memory_estimate=gram_memory,
        refined=solved.refined,
        multipliers=lam,
        constraint_index=state.constraints.index_table(),
    )
    if options.profile:
        step("active-set profile")
        result = replace(result, profile=profile_stage(solver, ladder, widest, q_hat, theta_hat_norm, options.support_tol))
    return result
