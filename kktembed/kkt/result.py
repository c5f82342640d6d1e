"""The result of ``check`` (MATH.md §2–3): frozen, with ``to_dict()`` giving the ``--json`` keys."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

@dataclass(frozen=True)
class ProfileRow:
    """One τ of the active-set profile (ℓ2): candidates, support, ε/‖θ̂‖ and δ."""

    active_tol: float
    n_candidates: int
    n_support: int | None
    relative_stationarity_residual: float | None
    complementarity_residual: float | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class CheckResult:
    """Every number ``kktembed check`` reports. ε and δ are measured at θ̂ = θ / q_min^{1/L}."""

    checkpoint: str | None
    data: str | None
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
    storage_dtype: str = "float64"
    precision_floor: float | None = None  # ε/‖θ̂‖ below this is not meaningful for the stored θ
    verdict_note: str | None = None
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
    gram_memory_estimate: int | None = None  # bytes, estimated (and checked against the limit) before K was built
    refined: bool | None = None
    kkt_tol: float | None = None
    approx_tol: float | None = None
    profile: tuple[ProfileRow, ...] = ()
    load: dict[str, Any] | None = None  # how the network was read (kktembed.loading.LoadReport)
    multipliers: torch.Tensor | None = field(default=None, compare=False, repr=False)  # λ over all constraints
    constraint_index: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object (λ itself is written by ``--save-multipliers``, not here)."""
        result = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("multipliers", "constraint_index", "profile")}
        result["profile"] = [row.to_dict() for row in self.profile]
        return result


def verdict_for(relative_epsilon: float, relative_delta: float, kkt_tol: float, approx_tol: float, precision_floor: float) -> tuple[str, str | None]:
    """kkt if ε/‖θ̂‖ and δ/Σλ are ≤ kkt_tol, approximate if ≤ approx_tol, else not_kkt; with a note.
    A kkt verdict is never claimed finer than the storage precision allows: when kkt_tol is below
    the precision floor, the best verdict is approximate."""
    worst = max(relative_epsilon, relative_delta)
    if worst <= kkt_tol:
        if kkt_tol < precision_floor:
            return "approximate", f"kkt is not claimed: --kkt-tol {kkt_tol:g} is below the precision floor {precision_floor:.1e} of the stored weights"
        return "kkt", None
    if worst <= approx_tol:
        return "approximate", None
    return "not_kkt", None
