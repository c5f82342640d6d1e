"""The margin losses ℓ, defined once (MATH.md §2 Alignment, §5): exponential ℓ(q) = e^{−q} and
logistic ℓ(q) = log(1 + e^{−q}). Both are C¹ and decreasing, which is what the dynamics results need.

Each loss gives its values, the mean over a batch (the training loss 𝓛 of ``trace``) and
log(−ℓ'(q)), from which the check's alignment β takes the descent weights −ℓ'(q_k) in a numerically
stable way. ``get_loss`` is the one place an unknown name is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kktembed.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MarginLoss:
    name: str

    def value(self, q: "torch.Tensor") -> "torch.Tensor":
        """ℓ(q) elementwise."""
        raise NotImplementedError

    def log_negative_derivative(self, q: "torch.Tensor") -> "torch.Tensor":
        """log(−ℓ'(q)) elementwise (finite for every finite q)."""
        raise NotImplementedError

    def log_value(self, q: "torch.Tensor") -> "torch.Tensor":
        """log ℓ(q) elementwise, finite for every finite q even where ℓ(q) underflows (the
        loss-scaled step of ``trace`` is the gradient of log 𝓛 = logsumexp_k log ℓ(q_k) − log n)."""
        raise NotImplementedError

    def mean(self, q: "torch.Tensor") -> "torch.Tensor":
        """𝓛 = mean_k ℓ(q_k), the training loss of ``trace`` (the paper's code uses the mean)."""
        return self.value(q).mean()

    def descent_weights(self, q: "torch.Tensor") -> "torch.Tensor":
        """w_k = −ℓ'(q_k) up to one positive factor (the largest weight is 1): −∇𝓛 = Σ w_k ∇q_k up to
        that factor, which does not change the direction used by the alignment β."""
        import torch

        logs = self.log_negative_derivative(q)
        return torch.exp(logs - logs.max())


# softplus(z) = log(1 + e^z) is computed as z above this (torch's default 20 leaves 2e-9 absolute)
SOFTPLUS_THRESHOLD = 40.0


class ExponentialLoss(MarginLoss):
    def value(self, q):
        import torch

        return torch.exp(-q)

    def log_negative_derivative(self, q):
        return -q  # −ℓ'(q) = e^{−q}

    def log_value(self, q):
        return -q


class LogisticLoss(MarginLoss):
    def value(self, q):
        import torch

        return torch.nn.functional.softplus(-q, threshold=SOFTPLUS_THRESHOLD)  # log(1 + e^{−q}), stable for large |q|

    def log_negative_derivative(self, q):
        import torch

        return -torch.nn.functional.softplus(q, threshold=SOFTPLUS_THRESHOLD)  # −ℓ'(q) = 1/(1 + e^{q})

    def log_value(self, q):
        """For q ≤ 0 as log(−q + log1p(e^{q})) (ℓ ≥ log 2); for q > 0 as −q + log(log1p(u)/u) with
        u = e^{−q} ∈ (0, 1], whose second term tends to 0 (taken as 0 once u underflows). Each
        branch sees clamped inputs, so neither produces inf or nan, nor a nan gradient."""
        import torch

        nonpositive, positive = torch.clamp(q, max=0.0), torch.clamp(q, min=0.0)
        u = torch.exp(-positive)
        ratio = torch.where(u > 0, torch.log1p(u) / torch.where(u > 0, u, 1.0), 1.0)
        return torch.where(q > 0, torch.log(ratio) - positive, torch.log(torch.log1p(torch.exp(nonpositive)) - nonpositive))


LOSSES: dict[str, MarginLoss] = {
    "exp": ExponentialLoss("exp"),  # ℓ(q) = e^{−q}
    "logistic": LogisticLoss("logistic"),  # ℓ(q) = log(1 + e^{−q})
}


def get_loss(name: str) -> MarginLoss:
    """The loss called ``name``; a UsageError naming the known ones otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise UsageError(f"unknown loss {name!r}", hint=f"use {' or '.join(LOSSES)}") from None
