"""Numerical checks of the declared homogeneity degree L (MATH.md §1).

- scaling: Φ(cθ; x) = c^L Φ(θ; x) for c = 2 and c = 1/2 (powers of two scale exactly in floating point);
- Euler's identity: ⟨∇_θ Φ(θ; x), θ⟩ = L Φ(θ; x), computed for every output at once as the
  forward-mode derivative d/dc Φ(cθ; x) at c = 1 (torch.func.jvp).
Both errors are relative to max |L Φ(θ; x)| over the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kktembed.errors import NotHomogeneousError
from kktembed.network import Network

HOMOGENEITY_TOL = 1e-9


@dataclass
class HomogeneityReport:
    degree: int
    scaling_error: float
    euler_error: float
    estimated_degree: float | None

    @property
    def error(self) -> float:
        return max(self.scaling_error, self.euler_error)


def homogeneity_report(network: Network, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> HomogeneityReport:
    params = params if params is not None else network.params
    degree = network.degree
    outputs = network.forward(x, params)
    scale = float((degree * outputs).abs().max())
    if scale == 0.0:
        return HomogeneityReport(degree, 0.0, 0.0, None)
    scaling_error = 0.0
    for c in (2.0, 0.5):
        scaled = network.forward(x, {key: c * value for key, value in params.items()})
        scaling_error = max(scaling_error, float((scaled - c**degree * outputs).abs().max()) / scale)
    _, directional = torch.func.jvp(lambda p: network.forward(x, p), (params,), (params,))
    euler_error = float((directional - degree * outputs).abs().max()) / scale
    doubled = network.forward(x, {key: 2.0 * value for key, value in params.items()})
    ratio = float(doubled.norm() / outputs.norm())
    estimated = math.log2(ratio) if ratio > 0 else None
    return HomogeneityReport(degree, scaling_error, euler_error, estimated)


def verify_homogeneity(network: Network, x: torch.Tensor, tol: float = HOMOGENEITY_TOL) -> HomogeneityReport:
    """Raise NotHomogeneousError unless Φ is numerically L-homogeneous on ``x`` (MATH.md §1)."""
    report = homogeneity_report(network, x)
    if not report.error <= tol:  # NaN (non-finite outputs) fails too
        estimate = f"; Φ(2θ)/Φ(θ) suggests degree {report.estimated_degree:.3g}" if report.estimated_degree else ""
        raise NotHomogeneousError(
            f"the {network.adapter.name} network is not homogeneous of its declared degree L={report.degree} "
            f"(scaling error {report.scaling_error:.2e}, Euler error {report.euler_error:.2e}{estimate})",
            hint="later-layer biases, normalization, or a non-homogeneous activation break homogeneity",
        )
    return report
