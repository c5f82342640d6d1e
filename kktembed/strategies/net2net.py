"""The control (MATH.md §4, Contrast): Net2WiderNet / the 2021 loss-landscape embedding copies the
incoming weights unchanged and multiplies the outgoing ones by the shares r_i. The output is
preserved, the norm is not, and a KKT point is in general not mapped to a KKT point."""

from __future__ import annotations

from kktembed.strategies.base import SplitStrategy


class Net2NetSplit(SplitStrategy):
    name = "net2net"
    description = "incoming copied unchanged, outgoing times r_i (output-preserving, not isometric)"
    isometric = False

    def scales(self, shares: list[float], activation_degree: int = 1) -> tuple[list[float], list[float]]:
        # identical copies of the unit: Σ r_i σ(z) = σ(z) whatever the activation's degree
        return [1.0] * len(shares), list(shares)
