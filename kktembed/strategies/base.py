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

    def scales(self, shares: list[float], activation_degree: int = 1) -> tuple[list[float], list[float]]:
        """Return (incoming factors a_i, outgoing factors b_i), one per copy. Copy i then contributes
        b_i a_i^k times the unit's output for an activation with σ(cz) = c^k σ(z), k =
        ``activation_degree``; raise ``kktembed.errors.UsageError`` for a k you cannot handle."""
        raise NotImplementedError
