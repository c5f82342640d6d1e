"""The isometric split of the paper (Def. 4.6 / Def. 4.10, MATH.md §4): copy i scales both the
incoming and the outgoing weights by c_i = √r_i, so Σ c_i² = 1, σ(c z) = c σ(z) preserves the
output, and ‖Tθ‖ = ‖θ‖."""

from __future__ import annotations

import math

from kktembed.errors import UsageError
from kktembed.strategies.base import SplitStrategy


class IsometricSplit(SplitStrategy):
    name = "isometric"
    description = "c_i = sqrt(r_i) on incoming and outgoing weights (norm- and KKT-preserving)"
    isometric = True

    def scales(self, shares: list[float], activation_degree: int = 1) -> tuple[list[float], list[float]]:
        if activation_degree != 1:
            raise UsageError(
                f"the isometric split preserves the output only for 1-homogeneous units; these units have "
                f"σ(cz) = c^{activation_degree} σ(z)",
                hint="use --strategy net2net, or a strategy a plugin provides for this architecture",
            )
        coefficients = [math.sqrt(share) for share in shares]
        return coefficients, coefficients
