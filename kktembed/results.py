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
