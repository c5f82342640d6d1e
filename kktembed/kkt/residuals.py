"""Residuals of a multiplier vector, measured directly at θ̂ (MATH.md §2), and the alignment β.

  ε = ‖θ̂ − Σ_k λ_k ∇q_k(θ̂)‖₂   one backward pass of Σ λ_k q_k (no Gram cancellation)
  δ = Σ_k λ_k (q_k(θ̂) − 1)
  β = cos∠(θ, −∇𝓛(θ)), 𝓛 = Σ_k ℓ(q_k)   (Ji & Telgarsky)
Kink counts say how many pre-activations of the support's samples sit at a ReLU kink, where
autograd's subgradient (ReLU'(0) = 0) may be the wrong element of the Clarke subdifferential.
"""

from __future__ import annotations

import torch

from kktembed.kkt.gram import weighted_margin_gradient
from kktembed.kkt.margins import Constraints
from kktembed.losses import get_loss
from kktembed.network import Network, flatten_params


def stationarity_vector(network: Network, x: torch.Tensor, constraints: Constraints, multipliers: torch.Tensor, theta_hat: dict, device=None) -> torch.Tensor:
    """θ̂ − Σ_k λ_k ∇q_k(θ̂) (MATH.md §2), by one backward pass of Σ λ_k q_k (on ``device``)."""
    combination = weighted_margin_gradient(network, x, constraints, multipliers, theta_hat, device=device)
    return flatten_params(theta_hat) - flatten_params(combination)


def stationarity_residual(network: Network, x: torch.Tensor, constraints: Constraints, multipliers: torch.Tensor, theta_hat: dict) -> float:
    """ε = ‖θ̂ − Σ_k λ_k ∇q_k(θ̂)‖₂ (MATH.md §2)."""
    return float(stationarity_vector(network, x, constraints, multipliers, theta_hat).norm())


def alignment(network: Network, x: torch.Tensor, constraints: Constraints, q: torch.Tensor, loss: str, device=None) -> float:
    """β = cos∠(θ, −∇𝓛(θ)), 𝓛 = Σ_k ℓ(q_k) over all constraints (MATH.md §2, Ji & Telgarsky)."""
    descent = flatten_params(weighted_margin_gradient(network, x, constraints, get_loss(loss).descent_weights(q), network.params, device=device))
    theta = flatten_params(network.params)
    denominator = float(theta.norm() * descent.norm())
    return float(theta @ descent) / denominator if denominator > 0 else float("nan")


def kink_counts(network: Network, x: torch.Tensor, params: dict, tol: float) -> tuple[torch.Tensor, int]:
    """For each row of ``x``: does any ReLU / leaky-ReLU pre-activation satisfy |z| ≤ tol · max|z| of
    its layer (over these rows)? Returns (per-row flags, total near-kink pre-activations)."""
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
