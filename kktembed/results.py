"""Typed, immutable results of the library API (``kktembed.inspect``, ``split``, ``trace``,
``convert``); ``to_dict()`` gives exactly the ``--json`` object of the matching command.
``check``'s result is ``kktembed.kkt.result.CheckResult``, ``embed``'s ``kktembed.comparison.EmbedResult``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def _public(result, hidden: tuple[str, ...]) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in fields(result) if f.name not in hidden}


@dataclass(frozen=True)
class InspectResult:
    """What kktembed sees in a checkpoint: adapter, layers, units, degree and its numerical check."""

    checkpoint: str
    adapter: str
    config: dict[str, Any]
    activation: str | None
    degree: int
    scaling_error: float
    euler_error: float
    homogeneous: bool
    n_parameters: int
    theta_norm: float
    input_shape: list[int]
    output_dim: int
    layers: list[dict[str, Any]]
    parameters: dict[str, list[int]]
    hidden_layers: list[dict[str, Any]]
    data: dict[str, Any] | None
    storage_dtype: str
    precision_floor: float
    load: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return _public(self, ())


@dataclass(frozen=True)
class SplitResult:
    """A split: the plan performed, widths and norms before and after, the measured errors."""

    checkpoint: str
    output: str | None
    strategy: str
    n_split_units: int
    splits: list[dict[str, Any]]
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    n_parameters_before: int
    n_parameters_after: int
    norm_before: float
    norm_after: float
    coefficient_isometry_error: float
    output_error: float | None
    data: str | None
    network: Any = field(default=None, compare=False, repr=False)  # the wide Network
    embedding: Any = field(default=None, compare=False, repr=False)  # the map T

    def to_dict(self) -> dict[str, Any]:
        return _public(self, ("network", "embedding"))


@dataclass(frozen=True)
class TraceReport:
    """Paired training: the summary numbers, the recorded series and both final networks."""

    narrow: str
    data: str
    strategies: list[str]
    n_splits: int
    summary: dict[str, Any]
    outputs: list[str] | None = None
    plot: str | None = None
    records: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)
    narrow_final: Any = field(default=None, compare=False, repr=False)
    wide_final: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        result = {"narrow": self.narrow, "data": self.data, "strategies": self.strategies, "n_splits": self.n_splits, **self.summary}
        if self.outputs is not None:
            result["outputs"] = self.outputs
        if self.plot is not None:
            result["plot"] = self.plot
        return result


@dataclass(frozen=True)
class ConvertResult:
    """A plain checkpoint interpreted once and written with kktembed metadata."""

    source: str
    output: str
    adapter: str
    config: dict[str, Any]
    n_parameters: int
    degree: int
    euler_error: float | None
    storage_dtype: str
    data: str | None
    reconstruction_verified: bool
    load: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return _public(self, ())


@dataclass(frozen=True)
class ReduceReport:
    """``reduce``: the narrowest network WIDE embeds (``summary``: widths, groups, merge and isometry
    errors, the tolerance profile), the output error on the data, and the KKT check of both sides."""

    wide: str
    output: str | None
    data: str | None
    summary: dict[str, Any]
    output_error: float | None = None
    check_wide: Any = field(default=None, repr=False)  # CheckResult of WIDE, with data
    check_narrow: Any = field(default=None, repr=False)  # CheckResult of NARROW
    network: Any = field(default=None, compare=False, repr=False)  # the narrow Network
    embedding: Any = field(default=None, compare=False, repr=False)  # T: narrow → wide

    @property
    def check_agreement(self) -> dict[str, float | None] | None:
        """|difference| of γ̄, ε/‖θ̂‖ and δ between the two checks, and ‖λ̃ − λ‖ (zero to rounding
        for an isometric reduction, MATH.md §4)."""
        if self.check_wide is None or self.check_narrow is None:
            return None
        wide, narrow = self.check_wide, self.check_narrow

        def difference(name):
            a, b = getattr(wide, name), getattr(narrow, name)
            return None if a is None or b is None else abs(a - b)

        multipliers = None
        if wide.multipliers is not None and narrow.multipliers is not None:
            multipliers = float((wide.multipliers - narrow.multipliers).norm())
        return {
            "normalized_margin_error": difference("normalized_margin"),
            "relative_stationarity_error": difference("relative_stationarity_residual"),
            "complementarity_error": difference("complementarity_residual"),
            "multiplier_error": multipliers,
        }

    def to_dict(self) -> dict[str, Any]:
        result = {"wide": self.wide, "output": self.output, "data": self.data, **self.summary, "output_error": self.output_error}
        for side in ("wide", "narrow"):
            check = getattr(self, f"check_{side}")
            result[f"check_{side}"] = {key: value for key, value in check.to_dict().items() if key != "profile"} if check is not None else None
        result["check_agreement"] = self.check_agreement
        return result
