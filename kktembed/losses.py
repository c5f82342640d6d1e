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
    formula: str

    def value(self, q: "torch.Tensor") -> "torch.Tensor":
        """ℓ(q) elementwise."""
        raise NotImplementedError

    def log_negative_derivative(self, q: "torch.Tensor") -> "torch.Tensor":
        """log(−ℓ'(q)) elementwise (finite for every finite q)."""
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


class ExponentialLoss(MarginLoss):
    def value(self, q):
        import torch

        return torch.exp(-q)

    def log_negative_derivative(self, q):
        return -q  # −ℓ'(q) = e^{−q}


class LogisticLoss(MarginLoss):
    def value(self, q):
        import torch

        return torch.nn.functional.softplus(-q)  # log(1 + e^{−q}), stable for large |q|

    def log_negative_derivative(self, q):
        import torch

        return -torch.nn.functional.softplus(q)  # −ℓ'(q) = 1/(1 + e^{q})


LOSSES: dict[str, MarginLoss] = {
    "exp": ExponentialLoss("exp", "e^{-q}"),
    "logistic": LogisticLoss("logistic", "log(1 + e^{-q})"),
}


def get_loss(name: str) -> MarginLoss:
    """The loss called ``name``; a UsageError naming the known ones otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise UsageError(f"unknown loss {name!r}", hint=f"use {' or '.join(LOSSES)}") from None
