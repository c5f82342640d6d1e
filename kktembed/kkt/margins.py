"""Constraints, margins q_k, normalized margin and the rescaling θ̂ (MATH.md §1–2).

One code path for binary and multi-class: constraint c belongs to sample k_c and has an output
*signal* s_c, so that q_c(θ) = ⟨s_c, Φ(θ; x_{k_c})⟩.
  - binary (one output, y_k = ±1): one constraint per sample, s = y_k, q_k = y_k Φ(θ; x_k);
  - multi-class (C outputs): one constraint per pair (k, j ≠ y_k), s = e_{y_k} − e_j,
    q_{k,j} = Φ_{y_k}(θ; x_k) − Φ_j(θ; x_k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kktembed.network import Network


@dataclass
class Constraints:
    sample: torch.Tensor  # (n_c,) index k of each constraint's sample
    other: torch.Tensor | None  # (n_c,) competing class j (multi-class), None for binary
    signal: torch.Tensor  # (n_c, C) output signal s_c

    def __len__(self) -> int:
        return int(self.sample.shape[0])

    def subset(self, index: torch.Tensor) -> "Constraints":
        return Constraints(self.sample[index], None if self.other is None else self.other[index], self.signal[index])

    def index_table(self) -> torch.Tensor:
        """``constraint_index``: k (binary, shape n_c) or the pairs (k, j) (multi-class, n_c × 2)."""
        if self.other is None:
            return self.sample.clone()
        return torch.stack([self.sample, self.other], dim=1)


def build_constraints(y: torch.Tensor, n_outputs: int) -> Constraints:
    """Constraints of MATH.md §1 for labels ``y`` (±1 when ``n_outputs`` is 1, else 0..C−1)."""
    n = y.shape[0]
    if n_outputs == 1:
        return Constraints(torch.arange(n), None, y.to(torch.float64).reshape(n, 1))
    samples = torch.arange(n).repeat_interleave(n_outputs - 1)
    classes = torch.arange(n_outputs).expand(n, n_outputs)
    others = classes[classes != y.reshape(n, 1)].reshape(-1)
    signal = torch.zeros(len(samples), n_outputs, dtype=torch.float64)
    signal[torch.arange(len(samples)), y[samples]] = 1.0
    signal[torch.arange(len(samples)), others] -= 1.0
    return Constraints(samples, others, signal)


def margins_from_outputs(outputs: torch.Tensor, constraints: Constraints) -> torch.Tensor:
    """q_c = ⟨s_c, Φ(θ; x_{k_c})⟩ from the (n, C) outputs."""
    return (outputs[constraints.sample] * constraints.signal).sum(dim=1)


def margins(network: Network, x: torch.Tensor, constraints: Constraints, params: dict | None = None) -> torch.Tensor:
    """q(θ) for every constraint (MATH.md §1)."""
    return margins_from_outputs(network.forward(x, params), constraints)


def accuracy(outputs: torch.Tensor, y: torch.Tensor) -> float:
    """Training accuracy: sign agreement (binary) or arg-max (multi-class)."""
    if outputs.shape[1] == 1:
        predicted = torch.where(outputs[:, 0] > 0, 1, -1)
    else:
        predicted = outputs.argmax(dim=1)
    return float((predicted == y).to(torch.float64).mean())


def normalized_margin(q_min: float, theta_norm: float, degree: int) -> float:
    """γ̄(θ) = q_min / ‖θ‖₂^L (MATH.md §1). Where ‖θ‖^L overflows or underflows float64 the quotient
    is taken one factor ‖θ‖ at a time (inf or 0 only if γ̄ itself is out of range); NaN for θ = 0."""
    try:
        return q_min / theta_norm**degree
    except (OverflowError, ZeroDivisionError):
        if theta_norm == 0:
            return math.nan
        value = q_min
        for _ in range(degree):
            value /= theta_norm
        return value


def rescale_to_unit_margin(params: dict[str, torch.Tensor], q_min: float, degree: int) -> dict[str, torch.Tensor]:
    """θ̂ = θ / q_min^{1/L}, so that min_k q_k(θ̂) = 1 (MATH.md §2, Normalization). Needs q_min > 0."""
    factor = q_min ** (-1.0 / degree)
    return {key: value * factor for key, value in params.items()}
