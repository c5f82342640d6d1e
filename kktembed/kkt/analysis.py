"""``check``: how close a checkpoint is to a KKT point of P_Φ (MATH.md §2–3).

Order of work: verify the degree (Euler), margins q_k and γ̄ at θ, rescale to θ̂ (q_min(θ̂) = 1),
candidates A_τ = {k : q_k(θ̂) ≤ 1 + τ}, Gram matrix on the candidates, multipliers λ, then the
residuals measured directly at θ̂:
  ε = ‖θ̂ − Σ_k λ_k ∇q_k(θ̂)‖₂   (one backward pass of Σ λ_k q_k; no Gram cancellation)
  δ = Σ_k λ_k (q_k(θ̂) − 1),   max_k λ_k (q_k(θ̂) − 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from kktembed.data import Dataset
from kktembed.errors import UsageError
from kktembed.homogeneity import verify_homogeneity
from kktembed.losses import get_loss
from kktembed.kkt.gram import gradient_matrix, gram_matrix, weighted_margin_gradient
from kktembed.kkt.margins import (
    Constraints,
    accuracy,
    build_constraints,
    margins,
    margins_from_outputs,
    normalized_margin,
    rescale_to_unit_margin,
)
from kktembed.kkt.solve import MultiplierSolution, most_complementary_l2, most_complementary_lp, polish_l2, solve_l2, solve_lp
from kktembed.network import Network, flatten_params

PROFILE_TOLS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Multipliers minimise ε; among those within EPSILON_ALLOWANCE·‖θ̂‖ of the minimum, the smallest δ wins
# (δ within DELTA_TIE·(1 + Σλ) counts as a tie, won by the most refined candidate: the ε allowance
# lets the second stage lower δ by amounts of that order that are solver noise, not structure).
EPSILON_ALLOWANCE = 1e-9
DELTA_TIE = 1e-6
# The ℓ1/ℓ∞ LPs materialise G (p × n_c float64); beyond this they are refused with a hint.
LP_MEMORY_LIMIT = 4 * 2**30


@dataclass
class CheckOptions:
    norm: str = "l2"
    active_tol: float = 0.1  # τ
    complementarity_weight: float = 0.0  # μ
    loss: str = "exp"  # for the alignment β
    kink_tol: float = 1e-6
    kkt_tol: float = 1e-6
    approx_tol: float = 0.1
    profile: bool = True
    max_candidates: int = 5000
    support_tol: float = 1e-8  # λ_k counts as support if λ_k > support_tol · max λ

    def validate(self) -> None:
        if self.norm not in ("l2", "l1", "linf"):
            raise UsageError(f"unknown norm {self.norm!r}", hint="use l2, l1 or linf")
        if not self.active_tol >= 0 or not math.isfinite(self.active_tol):
            raise UsageError(f"--active-tol must be a finite number ≥ 0, got {self.active_tol}")
        if self.complementarity_weight < 0:
            raise UsageError("--complementarity-weight must be ≥ 0")
        get_loss(self.loss)
        if not 0 < self.kkt_tol <= self.approx_tol:
            raise UsageError("need 0 < --kkt-tol ≤ --approx-tol")


@dataclass
class ProfileRow:
    active_tol: float
    n_candidates: int
    n_support: int | None
    relative_stationarity_residual: float | None
    complementarity_residual: float | None
    note: str = ""


@dataclass
class CheckResult:
    adapter: str
    activation: str | None
    degree: int
    euler_error: float
    scaling_error: float
    n_samples: int
    n_constraints: int
    n_parameters: int
    accuracy: float
    q_min: float
    normalized_margin: float
    theta_norm: float
    verdict: str
    theta_hat_norm: float | None = None
    active_tol: float | None = None
    n_candidates: int | None = None
    n_support: int | None = None
    stationarity_residual: float | None = None
    relative_stationarity_residual: float | None = None
    complementarity_residual: float | None = None
    max_complementarity_residual: float | None = None
    relative_complementarity_residual: float | None = None
    multiplier_sum: float | None = None
    norm: str | None = None
    norm_residual: float | None = None
    alignment: float | None = None
    loss: str | None = None
    n_support_near_kink: int | None = None
    n_preactivations_near_kink: int | None = None
    solver: str | None = None
    solver_status: str | None = None
    solver_seconds: float | None = None
    gram_seconds: float | None = None
    refined: bool | None = None
    kkt_tol: float | None = None
    approx_tol: float | None = None
    profile: list[ProfileRow] = field(default_factory=list)
    multipliers: torch.Tensor | None = None  # λ over all constraints (not in to_dict)
    constraint_index: torch.Tensor | None = None

    def to_dict(self) -> dict:
        result = {key: value for key, value in self.__dict__.items() if key not in ("multipliers", "constraint_index", "profile")}
        result["profile"] = [row.__dict__ for row in self.profile]
        return result


def verdict_for(relative_epsilon: float, relative_delta: float, options: CheckOptions) -> str:
    """kkt if ε/‖θ̂‖ ≤ kkt_tol and δ/Σλ ≤ kkt_tol; approximate if both ≤ approx_tol; else not_kkt."""
    worst = max(relative_epsilon, relative_delta)
    if worst <= options.kkt_tol:
        return "kkt"
    if worst <= options.approx_tol:
        return "approximate"
    return "not_kkt"


def loss_weights(q: torch.Tensor, loss: str) -> torch.Tensor:
    """−ℓ'(q_k) up to one positive factor (irrelevant for the direction of −∇𝓛, MATH.md §2
    Alignment): exp: e^{−(q−q_min)}; logistic: σ(−q) = e^{−softplus(q)}, shifted in log space."""
    log_weights = -q if loss == "exp" else -torch.nn.functional.softplus(q)
    return torch.exp(log_weights - log_weights.max())


def alignment(network: Network, x: torch.Tensor, constraints: Constraints, q: torch.Tensor, loss: str) -> float:
    """β = cos∠(θ, −∇𝓛(θ)), 𝓛 = Σ_k ℓ(q_k) over all constraints (MATH.md §2, Ji & Telgarsky)."""
    descent = flatten_params(weighted_margin_gradient(network, x, constraints, get_loss(loss).descent_weights(q), network.params))
    theta = flatten_params(network.params)
    denominator = float(theta.norm() * descent.norm())
    return float(theta @ descent) / denominator if denominator > 0 else float("nan")


def stationarity_vector(network: Network, x: torch.Tensor, constraints: Constraints, multipliers: torch.Tensor, theta_hat: dict) -> torch.Tensor:
    """θ̂ − Σ_k λ_k ∇q_k(θ̂) (MATH.md §2), by one backward pass of Σ λ_k q_k."""
    combination = weighted_margin_gradient(network, x, constraints, multipliers, theta_hat)
    return flatten_params(theta_hat) - flatten_params(combination)


def stationarity_residual(network: Network, x: torch.Tensor, constraints: Constraints, multipliers: torch.Tensor, theta_hat: dict) -> float:
    """ε = ‖θ̂ − Σ_k λ_k ∇q_k(θ̂)‖₂ (MATH.md §2)."""
    return float(stationarity_vector(network, x, constraints, multipliers, theta_hat).norm())


def kink_counts(network: Network, x: torch.Tensor, params: dict, tol: float) -> tuple[torch.Tensor, int]:
    """For each row of ``x``: does any ReLU / leaky-ReLU pre-activation satisfy |z| ≤ tol · max|z| of
    its layer (over these rows)? There autograd's subgradient choice (ReLU'(0) = 0) may be the
    wrong element of ∂° (MATH.md §2). Returns (per-row flags, total near-kink pre-activations)."""
    captured: list[torch.Tensor] = []
    handles = [
        module.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
        for module in network.module.modules()
        if isinstance(module, (torch.nn.ReLU, torch.nn.LeakyReLU))
    ]
    try:
        with torch.no_grad():
            network.forward(x, params)
    finally:
        for handle in handles:
            handle.remove()
    flags = torch.zeros(x.shape[0], dtype=torch.bool)
    total = 0
    for pre in captured:
        pre = pre.reshape(pre.shape[0], -1)
        near = pre.abs() <= tol * pre.abs().max()
        flags |= near.any(dim=1)
        total += int(near.sum())
    return flags, total


NORM_ORDER = {"l2": 2.0, "l1": 1.0, "linf": float("inf")}


def _multiplier_trials(options, gram, q_hat, theta_hat, network, x, constraints, degree) -> tuple[MultiplierSolution, list[np.ndarray]]:
    """Multipliers on the candidate constraints with the chosen norm (MATH.md §3): the solver's λ
    first, then refinements (with μ = 0): the most complementary λ among those with (almost) the
    optimal residual, and for ℓ2 the active-set polish of each."""
    excess = (q_hat - 1.0).numpy()
    b = degree * q_hat.numpy()  # b = Gᵀθ̂ = L q(θ̂), Euler's identity
    refine = options.complementarity_weight == 0
    if options.norm == "l2":
        solution = solve_l2(gram, b, excess, options.complementarity_weight)
        return solution, [solution.multipliers] + (refined_multipliers(gram, q_hat.numpy(), degree, solution) if refine else [])
    needed = network.n_parameters * len(constraints) * 8
    if needed > LP_MEMORY_LIMIT:
        raise UsageError(
            f"the {options.norm} LP needs the {network.n_parameters:,} × {len(constraints):,} gradient matrix "
            f"({needed / 2**30:.1f} GiB, over the {LP_MEMORY_LIMIT / 2**30:.0f} GiB limit)",
            hint="use --norm l2 (Gram matrix only) or a smaller --active-tol",
        )
    gradients = gradient_matrix(network, x, constraints, theta_hat).numpy()
    theta_vector = flatten_params(theta_hat).numpy()
    solution = solve_lp(gradients, theta_vector, excess, options.norm, options.complementarity_weight)
    trials = [solution.multipliers]
    if refine:
        scale = float(np.linalg.norm(theta_vector, ord=NORM_ORDER[options.norm]))
        complementary = most_complementary_lp(gradients, theta_vector, excess, options.norm, solution.objective + 0.5 * EPSILON_ALLOWANCE * scale)
        trials += [complementary] if complementary is not None else []
    return solution, trials


@dataclass
class Trial:
    """A candidate λ with its measured residual vector θ̂ − Σλ∇q and complementarity δ."""

    multipliers: torch.Tensor
    residual: torch.Tensor
    complementarity: float


def choose_multipliers(trials: list[Trial], theta_hat: torch.Tensor, order: float) -> Trial:
    """The trial with the smallest residual in the chosen norm; among those within
    EPSILON_ALLOWANCE·‖θ̂‖ of it, the smallest δ, where δ within DELTA_TIE·(1 + Σλ) is a tie won by
    the most refined trial (they come least refined first), so that two solves of the same problem
    (a checkpoint and its isometric split) land on the same λ."""
    norms = [float(torch.linalg.vector_norm(trial.residual, ord=order)) for trial in trials]
    allowance = EPSILON_ALLOWANCE * float(torch.linalg.vector_norm(theta_hat, ord=order))
    eligible = [trial for trial, value in zip(trials, norms) if value <= min(norms) + allowance]
    least = min(trial.complementarity for trial in eligible)
    tie = DELTA_TIE * (1.0 + max(float(trial.multipliers.sum()) for trial in eligible))
    return next(trial for trial in reversed(eligible) if trial.complementarity <= least + tie)


def refined_multipliers(gram: np.ndarray, q_candidates: np.ndarray, degree: int, solution: MultiplierSolution) -> list[np.ndarray]:
    """Refinements of an ℓ2 QP solution (MATH.md §3), least refined first, each to be measured:
    the active-set polish of λ, the most complementary optimal λ, and its polish."""
    b, excess = degree * q_candidates, q_candidates - 1.0
    polished = polish_l2(gram, b, solution.multipliers)
    refined = [polished]
    complementary = most_complementary_l2(gram, b, excess, polished if polished is not None else solution.multipliers)
    if complementary is not None:
        refined += [complementary, polish_l2(gram, b, complementary)]
    return [multipliers for multipliers in refined if multipliers is not None]


def check_network(
    network: Network, dataset: Dataset, options: CheckOptions | None = None, on_step: Callable[[str], None] | None = None
) -> CheckResult:
    """The full KKT analysis of MATH.md §2–3 for ``network`` on ``dataset``."""
    options = options or CheckOptions()
    options.validate()
    step = on_step or (lambda message: None)
    x, degree = dataset.x, network.degree

    step("verifying homogeneity (scaling and Euler's identity)")
    homogeneity = verify_homogeneity(network, x[:512])
    outputs = network.forward(x)
    constraints = build_constraints(dataset.y, outputs.shape[1])
    q = margins_from_outputs(outputs, constraints)
    q_min, theta_norm = float(q.min()), network.norm()
    result = CheckResult(
        adapter=network.adapter.name,
        activation=network.config.get("activation"),
        degree=degree,
        euler_error=homogeneity.euler_error,
        scaling_error=homogeneity.scaling_error,
        n_samples=dataset.n_samples,
        n_constraints=len(constraints),
        n_parameters=network.n_parameters,
        accuracy=accuracy(outputs, dataset.y),
        q_min=q_min,
        normalized_margin=normalized_margin(q_min, theta_norm, degree),
        theta_norm=theta_norm,
        verdict="not_separable",
        loss=options.loss,
        kkt_tol=options.kkt_tol,
        approx_tol=options.approx_tol,
    )
    step("alignment with the loss gradient")
    result.alignment = alignment(network, x, constraints, q, options.loss)
    if q_min <= 0:
        return result

    theta_hat = rescale_to_unit_margin(network.params, q_min, degree)
    q_hat = margins(network, x, constraints, theta_hat)
    theta_hat_norm = network.norm(theta_hat)
    result.theta_hat_norm, result.active_tol, result.norm = theta_hat_norm, options.active_tol, options.norm

    ladder = sorted({options.active_tol, *(PROFILE_TOLS if options.profile else ())})
    widest = max((tol for tol in ladder if int((q_hat <= 1 + tol).sum()) <= options.max_candidates), default=None)
    if widest is None or widest < options.active_tol:
        raise UsageError(
            f"{int((q_hat <= 1 + options.active_tol).sum())} candidate constraints at --active-tol {options.active_tol} "
            f"exceed --max-candidates {options.max_candidates}",
            hint="lower --active-tol or raise --max-candidates",
        )
    pool = torch.nonzero(q_hat <= 1 + widest).reshape(-1)
    step(f"Gram matrix of {len(pool)} candidate constraints")
    started = time.perf_counter()
    pool_gram = gram_matrix(network, x, constraints.subset(pool), theta_hat).numpy()
    result.gram_seconds = time.perf_counter() - started

    solved: dict[tuple[float, str], tuple[MultiplierSolution, torch.Tensor, float]] = {}

    def analyse(tol: float, norm_options: CheckOptions) -> tuple[MultiplierSolution, torch.Tensor, float]:
        """Multipliers on A_τ, measured (see ``choose_multipliers``): (solution, λ over all constraints, ε)."""
        key = (tol, norm_options.norm)
        if key not in solved:
            inside = (q_hat[pool] <= 1 + tol).numpy()
            candidates = pool[torch.from_numpy(inside)]
            solution, trials = _multiplier_trials(
                norm_options, pool_gram[np.ix_(inside, inside)], q_hat[candidates], theta_hat, network, x, constraints.subset(candidates), degree
            )
            measured = []
            for multipliers in trials:
                full = torch.zeros(len(constraints), dtype=torch.float64)
                full[candidates] = torch.from_numpy(multipliers)
                measured.append(Trial(full, stationarity_vector(network, x, constraints, full, theta_hat), float((full * (q_hat - 1)).sum())))
            chosen = choose_multipliers(measured, flatten_params(theta_hat), NORM_ORDER[norm_options.norm])
            solution.refined = chosen is not measured[0]
            solved[key] = (solution, chosen.multipliers, float(chosen.residual.norm()))
        return solved[key]

    step(f"solving the {options.norm} multiplier problem")
    solution, lam, epsilon = analyse(options.active_tol, options)
    complementarity = lam * (q_hat - 1.0)
    multiplier_sum = float(lam.sum())
    support = lam > options.support_tol * float(lam.max()) if multiplier_sum > 0 else torch.zeros_like(lam, dtype=torch.bool)
    result.n_candidates = int((q_hat <= 1 + options.active_tol).sum())
    result.n_support = int(support.sum())
    result.stationarity_residual = epsilon
    result.relative_stationarity_residual = epsilon / theta_hat_norm
    result.complementarity_residual = float(complementarity.sum())
    result.max_complementarity_residual = float(complementarity.max())
    result.relative_complementarity_residual = float(complementarity.sum()) / multiplier_sum if multiplier_sum > 0 else 0.0
    result.multiplier_sum = multiplier_sum
    result.norm_residual = float(torch.linalg.vector_norm(stationarity_vector(network, x, constraints, lam, theta_hat), ord=NORM_ORDER[options.norm]))
    result.solver, result.solver_status, result.solver_seconds = solution.solver, solution.status, solution.seconds
    result.refined = solution.refined
    result.multipliers, result.constraint_index = lam, constraints.index_table()
    support_samples = torch.unique(constraints.sample[support])
    if len(support_samples):
        flags, total = kink_counts(network, x[support_samples], theta_hat, options.kink_tol)
        near_samples = set(support_samples[flags].tolist())
        result.n_support_near_kink = sum(1 for k in constraints.sample[support].tolist() if k in near_samples)
        result.n_preactivations_near_kink = total
    result.verdict = verdict_for(result.relative_stationarity_residual, result.relative_complementarity_residual, options)

    if options.profile:
        step("active-set profile")
        l2_options = CheckOptions(**{**options.__dict__, "norm": "l2"})
        for tol in ladder:
            n_candidates = int((q_hat <= 1 + tol).sum())
            if tol > widest:
                result.profile.append(ProfileRow(tol, n_candidates, None, None, None, "skipped: > --max-candidates"))
                continue
            _, row_lambda, row_epsilon = analyse(tol, l2_options)
            row_support = int((row_lambda > options.support_tol * float(row_lambda.max())).sum()) if row_lambda.sum() > 0 else 0
            result.profile.append(
                ProfileRow(tol, n_candidates, row_support, row_epsilon / theta_hat_norm, float((row_lambda * (q_hat - 1)).sum()))
            )
    return result
