"""The split-strategy interface (MATH.md §4).

A strategy turns the shares r_1..r_m of a split unit (r_i ≥ 0, Σ r_i = 1) into the factors that
scale the unit's *incoming* slices (rows / filters / first-layer bias entries) and its *outgoing*
slices (columns / input-channel slices / flatten blocks) in copy i. It sees nothing of the
architecture: the adapter's unit description says which slices those are, so a new architecture
gets every strategy for free.
"""

from __future__ import annotations


class SplitStrategy:
    #: unique name, recorded in split checkpoints
    name: str = ""
    #: one line for ``kktembed plugins`` and ``split --help``
    description: str = ""
    #: whether the map is a linear isometry (TᵀT = I) for every valid set of shares
    isometric: bool = False

    def scales(self, shares: list[float]) -> tuple[list[float], list[float]]:
        """Return (incoming factors, outgoing factors), one per copy."""
        raise NotImplementedError
