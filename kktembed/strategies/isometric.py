"""The isometric split of the paper (Def. 4.6 / Def. 4.10, MATH.md §4): copy i scales both the
incoming and the outgoing weights by c_i = √r_i, so Σ c_i² = 1, σ(c z) = c σ(z) preserves the
output, and ‖Tθ‖ = ‖θ‖."""

from __future__ import annotations

import math

from kktembed.strategies.base import SplitStrategy


class IsometricSplit(SplitStrategy):
    name = "isometric"
    description = "c_i = sqrt(r_i) on incoming and outgoing weights (norm- and KKT-preserving)"
    isometric = True

    def scales(self, shares: list[float]) -> tuple[list[float], list[float]]:
        coefficients = [math.sqrt(share) for share in shares]
        return coefficients, coefficients
