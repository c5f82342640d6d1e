"""Choosing among candidate multiplier vectors ("trials") by their measured residuals (MATH.md §2–3).

The solver's λ comes first, then refinements: the most complementary λ among those with (almost)
the optimal residual, and for ℓ2 the active-set polish of each. Multipliers minimise ε; among
those within EPSILON_ALLOWANCE·‖θ̂‖ of the minimum the smallest δ wins, where δ within
DELTA_TIE·(1 + Σλ) counts as a tie won by the most refined trial: the ε allowance lets the second
stage lower δ by amounts of that order that are solver noise, not structure, and two solves of the
same problem (a checkpoint and its isometric split) land on the same λ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPSILON_ALLOWANCE = 1e-9
DELTA_TIE = 1e-6


@dataclass(frozen=True)
class Trial:
    """A candidate λ (over all constraints) with its residual ‖θ̂ − Σλ∇q‖ in the problem's norm,
    measured or (ℓ2) estimated from the Gram matrix, and its δ = Σλ(q − 1)."""

    multipliers: torch.Tensor
    residual_norm: float
    complementarity: float


def choose_multipliers(trials: list[Trial], theta_hat_norm: float) -> Trial:
    """The trial with the smallest residual, ties broken as the module docstring says (trials come
    least refined first); ``theta_hat_norm`` is ‖θ̂‖ in the problem's norm."""
    norms = [trial.residual_norm for trial in trials]
    allowance = EPSILON_ALLOWANCE * theta_hat_norm
    eligible = [trial for trial, value in zip(trials, norms) if value <= min(norms) + allowance]
    least = min(trial.complementarity for trial in eligible)
    tie = DELTA_TIE * (1.0 + max(float(trial.multipliers.sum()) for trial in eligible))
    return next(trial for trial in reversed(eligible) if trial.complementarity <= least + tie)
