"""The embedding map T of neuron/channel splitting and its error metrics (MATH.md §4).

T acts on each hidden layer separately, through the adapter's unit description. For one layer a
``UnitMap`` says, for every wide unit u (in any order), which narrow unit ``source[u]`` it copies and
the factors of the copy: ``incoming[u]`` on rows / filters / first-layer bias entries, ``outgoing[u]``
on columns / input-channel slices / flatten blocks. T is an isometry (TᵀT = I) iff for every narrow
unit j the copies of j have Σ incoming² = Σ outgoing² = 1; the isometric strategy uses c_i = √r_i on
both sides (Def. 4.6, 4.10). Maps of different layers touch different axes, so they commute.

A ``UnitSplit`` is the special case that ``kktembed split`` writes: unit j of a layer of width n
becomes m copies, copy 1 at position j, copies 2..m appended at n, n+1, …, n+m−2. A sequence of
splits compiles to one ``UnitMap`` per layer; compositions compose per layer (``UnitMap.then``).

``Embedding`` is T from a narrow config: given by splits (what ``split`` and ``trace`` record) or by
unit maps (what ``reduce`` and unit matching find). It applies T and Tᵀ to state_dicts (``apply``,
``adjoint``) or flat vectors (``apply_vector``, ``adjoint_vector``), inverts T on its image
(``project``) and composes (``then``). ``EmbeddingRecord`` is the ``kktembed.embedding`` metadata.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from kktembed.adapters.base import Adapter, UnitLayer, UnitSlice
from kktembed.errors import ArchitectureError, CheckpointError
from kktembed.network import flatten_params, unflatten_params
from kktembed.validation import parse_json

EMBEDDING_KEY = "kktembed.embedding"
SPLITS_VERSION = 1  # stages of appended splits only: what every kktembed before `reduce` wrote
MAPS_VERSION = 2  # also stages of unit maps (wide units in any order) and maps into other files


@dataclass(frozen=True)
class UnitSplit:
    layer: str
    unit: int  # j, index in the layer before this split
    width: int  # n, width of the layer before this split
    shares: tuple[float, ...]  # r_i
    incoming: tuple[float, ...]  # factor of copy i on incoming slices
    outgoing: tuple[float, ...]  # factor of copy i on outgoing slices
    strategy: str

    @property
    def copies(self) -> int:
        return len(self.shares)

    @property
    def positions(self) -> list[int]:
        """Wide indices of copies 1..m."""
        return [self.unit] + list(range(self.width, self.width + self.copies - 1))

    @property
    def isometry_error(self) -> float:
        """max(|Σ c_in,i² − 1|, |Σ c_out,i² − 1|): zero iff this split is an isometry."""
        return max(abs(sum(c * c for c in self.incoming) - 1.0), abs(sum(c * c for c in self.outgoing) - 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "unit": self.unit,
            "width": self.width,
            "positions": self.positions,
            "shares": list(self.shares),
            "incoming": list(self.incoming),
            "outgoing": list(self.outgoing),
            "strategy": self.strategy,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnitSplit":
        return cls(
            layer=str(data["layer"]),
            unit=int(data["unit"]),
            width=int(data["width"]),
            shares=tuple(float(v) for v in data["shares"]),
            incoming=tuple(float(v) for v in data["incoming"]),
            outgoing=tuple(float(v) for v in data["outgoing"]),
            strategy=str(data["strategy"]),
        )


@dataclass(frozen=True)
class UnitMap:
    """T on hidden layer ``layer``: wide unit u is narrow unit ``source[u]`` (of ``narrow_width``),
    with its incoming slices times ``incoming[u]`` and its outgoing slices times ``outgoing[u]``
    (MATH.md §4 with the copies at any positions). Copy u carries the share incoming[u]·outgoing[u]
    of its unit's output for a 1-homogeneous activation."""

    layer: str
    narrow_width: int
    source: tuple[int, ...]
    incoming: tuple[float, ...]
    outgoing: tuple[float, ...]

    def __post_init__(self):
        if not len(self.source) == len(self.incoming) == len(self.outgoing):
            raise ValueError(f"unit map of layer {self.layer!r}: source, incoming and outgoing differ in length")

    @property
    def wide_width(self) -> int:
        return len(self.source)

    @classmethod
    def identity(cls, layer: str, width: int) -> "UnitMap":
        return cls(layer, width, tuple(range(width)), (1.0,) * width, (1.0,) * width)

    @property
    def is_identity(self) -> bool:
        return (
            self.wide_width == self.narrow_width
            and self.source == tuple(range(self.narrow_width))
            and all(c == 1.0 for c in self.incoming + self.outgoing)
        )

    def then(self, later: "UnitMap") -> "UnitMap":
        """The composition: first ``self`` (narrow → middle), then ``later`` (middle → wide)."""
        if later.layer != self.layer or later.narrow_width != self.wide_width:
            raise ArchitectureError(f"cannot compose unit maps of layer {self.layer!r}: the second does not start where the first ends")
        middle = later.source
        return UnitMap(
            self.layer,
            self.narrow_width,
            tuple(self.source[m] for m in middle),
            tuple(self.incoming[m] * factor for m, factor in zip(middle, later.incoming)),
            tuple(self.outgoing[m] * factor for m, factor in zip(middle, later.outgoing)),
        )

    def scales(self, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, scale) tensors for slices of ``direction`` ("incoming" or "outgoing")."""
        factors = self.incoming if direction == "incoming" else self.outgoing
        return torch.tensor(self.source, dtype=torch.long), torch.tensor(factors, dtype=torch.float64)

    @property
    def isometry_error(self) -> float:
        """max over narrow units j of |Σ_{u→j} incoming[u]² − 1| and |Σ_{u→j} outgoing[u]² − 1|:
        the diagonal of TᵀT on this layer's slices, minus one (1 for a unit without copies)."""
        source = torch.tensor(self.source, dtype=torch.long)
        errors = [0.0]
        for factors in (self.incoming, self.outgoing):
            squares = torch.zeros(self.narrow_width, dtype=torch.float64)
            squares.index_add_(0, source, torch.tensor(factors, dtype=torch.float64) ** 2)
            errors.append(float((squares - 1.0).abs().max()))
        return max(errors)

    def groups(self) -> list[list[int]]:
        """The wide units of each narrow unit, in narrow order."""
        groups: list[list[int]] = [[] for _ in range(self.narrow_width)]
        for wide_unit, narrow_unit in enumerate(self.source):
            groups[narrow_unit].append(wide_unit)
        return groups

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "narrow_width": self.narrow_width,
            "source": list(self.source),
            "incoming": list(self.incoming),
            "outgoing": list(self.outgoing),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnitMap":
        return cls(
            layer=str(data["layer"]),
            narrow_width=int(data["narrow_width"]),
            source=tuple(int(v) for v in data["source"]),
            incoming=tuple(float(v) for v in data["incoming"]),
            outgoing=tuple(float(v) for v in data["outgoing"]),
        )


def compile_splits(widths: dict[str, int], splits: list[UnitSplit]) -> tuple[UnitMap, ...]:
    """One UnitMap per split layer (in order of first split) for a sequence of splits, starting from
    hidden layers of ``widths``. Copies of copies compose: the factors multiply."""
    layers: dict[str, tuple[int, list[int], list[float], list[float]]] = {}
    for split in splits:
        if split.layer not in layers:
            if split.layer not in widths:
                raise ArchitectureError(f"{split.layer!r} is not a hidden layer (hidden layers: {', '.join(widths) or 'none'})")
            width = widths[split.layer]
            layers[split.layer] = (width, list(range(width)), [1.0] * width, [1.0] * width)
        _, source, incoming, outgoing = layers[split.layer]
        if split.width != len(source) or not 0 <= split.unit < split.width:
            raise ArchitectureError(
                f"a split of unit {split.unit} of layer {split.layer!r} at width {split.width} does not fit: the layer has {len(source)} units there"
            )
        j = split.unit
        parent, factor_in, factor_out = source[j], incoming[j], outgoing[j]
        incoming[j], outgoing[j] = factor_in * split.incoming[0], factor_out * split.outgoing[0]
        for copy_in, copy_out in zip(split.incoming[1:], split.outgoing[1:]):
            source.append(parent)
            incoming.append(factor_in * copy_in)
            outgoing.append(factor_out * copy_out)
    return tuple(UnitMap(name, width, tuple(source), tuple(incoming), tuple(outgoing)) for name, (width, source, incoming, outgoing) in layers.items())


def _blocks(tensor: torch.Tensor, unit_slice: UnitSlice, width: int) -> torch.Tensor:
    """View ``tensor`` as (units, block, rest…) with the unit axis first."""
    moved = tensor.movedim(unit_slice.axis, 0)
    if moved.shape[0] != width * unit_slice.block:
        raise ArchitectureError(
            f"tensor {unit_slice.param} has {moved.shape[0]} entries along axis {unit_slice.axis}, "
            f"the unit description expects {width} units × block {unit_slice.block}"
        )
    return moved.reshape(width, unit_slice.block, *moved.shape[1:])


def _unblocks(blocks: torch.Tensor, unit_slice: UnitSlice) -> torch.Tensor:
    return blocks.reshape(blocks.shape[0] * blocks.shape[1], *blocks.shape[2:]).movedim(0, unit_slice.axis)


def unit_blocks(params: dict[str, torch.Tensor], unit_layer: UnitLayer, width: int, direction: str) -> list[torch.Tensor]:
    """The slices of ``direction`` of every unit, each as a (units, block, rest…) tensor."""
    slices = unit_layer.incoming if direction == "incoming" else unit_layer.outgoing
    return [_blocks(params[unit_slice.param], unit_slice, width) for unit_slice in slices]


def _directions(unit_layer: UnitLayer):
    return [(s, "incoming") for s in unit_layer.incoming] + [(s, "outgoing") for s in unit_layer.outgoing]


def apply_unit_map(params: dict[str, torch.Tensor], unit_layer: UnitLayer, unit_map: UnitMap) -> dict[str, torch.Tensor]:
    """T on one layer: gather every slice by ``source`` and scale it by its direction's factor."""
    params = dict(params)
    for unit_slice, direction in _directions(unit_layer):
        source, scale = unit_map.scales(direction)
        blocks = _blocks(params[unit_slice.param], unit_slice, unit_map.narrow_width)
        copies = blocks.index_select(0, source).mul_(scale.reshape(-1, *([1] * (blocks.ndim - 1))))
        params[unit_slice.param] = _unblocks(copies, unit_slice)
    return params


def adjoint_unit_map(params: dict[str, torch.Tensor], unit_layer: UnitLayer, unit_map: UnitMap) -> dict[str, torch.Tensor]:
    """Tᵀ on one layer: copies are folded back onto their narrow unit, weighted by their factors."""
    params = dict(params)
    for unit_slice, direction in _directions(unit_layer):
        source, scale = unit_map.scales(direction)
        blocks = _blocks(params[unit_slice.param], unit_slice, unit_map.wide_width)
        narrow = torch.zeros((unit_map.narrow_width, *blocks.shape[1:]), dtype=blocks.dtype)
        narrow.index_add_(0, source, blocks * scale.reshape(-1, *([1] * (blocks.ndim - 1))))
        params[unit_slice.param] = _unblocks(narrow, unit_slice)
    return params


def widths_of(adapter: Adapter, config: dict[str, Any]) -> dict[str, int]:
    """Hidden layer → width."""
    return {unit_layer.name: unit_layer.width for unit_layer in adapter.units(config)}


def with_widths(adapter: Adapter, config: dict[str, Any], widths: dict[str, int]) -> dict[str, Any]:
    for layer, width in widths.items():
        config = adapter.widen(config, layer, width)
    return config


def same_architecture(adapter: Adapter, first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Equal configs, or equal once both are written the way ``adapter.widen`` writes them (a plain
    file's detected config and a widened one differ only in such defaults)."""
    if first == second:
        return True
    try:
        return with_widths(adapter, first, widths_of(adapter, first)) == with_widths(adapter, second, widths_of(adapter, second))
    except (ArchitectureError, AttributeError, IndexError, KeyError, TypeError, ValueError):  # not even this adapter's config
        return False


@dataclass
class Embedding:
    """T from ``narrow_config``: the composition of ``splits`` (appended copies, what ``split`` and
    ``trace`` record), or the per-layer ``layer_maps`` (copies at any positions, what ``reduce``
    and matching find); never both. ``origin`` names how a map-given T was found."""

    adapter: Adapter
    narrow_config: dict[str, Any]
    splits: list[UnitSplit] = field(default_factory=list)
    layer_maps: tuple[UnitMap, ...] | None = None
    origin: tuple[str, ...] = ()

    def __post_init__(self):
        if self.layer_maps is None:
            return
        if self.splits:
            raise ValueError("an Embedding is given by splits or by unit maps, not both")
        self.layer_maps = tuple(self.layer_maps)
        widths = widths_of(self.adapter, self.narrow_config)
        seen = set()
        for unit_map in self.layer_maps:
            if unit_map.layer not in widths:
                raise ArchitectureError(f"{unit_map.layer!r} is not a hidden layer (hidden layers: {', '.join(widths) or 'none'})")
            if unit_map.layer in seen:
                raise ArchitectureError(f"two unit maps for layer {unit_map.layer!r}")
            if unit_map.narrow_width != widths[unit_map.layer]:
                raise ArchitectureError(f"the unit map of layer {unit_map.layer!r} starts from {unit_map.narrow_width} units, the layer has {widths[unit_map.layer]}")
            seen.add(unit_map.layer)

    @property
    def given_by_splits(self) -> bool:
        return self.layer_maps is None

    @cached_property
    def unit_maps(self) -> tuple[UnitMap, ...]:
        """One map per layer that T changes (splits compiled)."""
        if self.layer_maps is not None:
            return self.layer_maps
        return compile_splits(widths_of(self.adapter, self.narrow_config), self.splits)

    @property
    def strategies(self) -> list[str]:
        return sorted({split.strategy for split in self.splits} | set(self.origin))

    @cached_property
    def wide_config(self) -> dict[str, Any]:
        return with_widths(self.adapter, self.narrow_config, {m.layer: m.wide_width for m in self.unit_maps})

    @property
    def isometry_error(self) -> float:
        """The coefficient isometry error max |Σ c_i² − 1| over layers and narrow units (0 for the identity)."""
        return max((unit_map.isometry_error for unit_map in self.unit_maps), default=0.0)

    def _unit_layers(self) -> dict[str, UnitLayer]:
        return {unit_layer.name: unit_layer for unit_layer in self.adapter.units(self.narrow_config)}

    def apply(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tθ for a narrow state_dict (also maps gradients: ∇Φ̃(Tθ) = T∇Φ(θ) for isometric T)."""
        unit_layers = self._unit_layers()
        for unit_map in self.unit_maps:
            params = apply_unit_map(params, unit_layers[unit_map.layer], unit_map)
        return dict(params)

    def adjoint(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tᵀθ̃ for a wide state_dict: copies are folded back, weighted by their factors."""
        unit_layers = self._unit_layers()
        for unit_map in self.unit_maps:
            params = adjoint_unit_map(params, unit_layers[unit_map.layer], unit_map)
        return dict(params)

    def project(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(TᵀT)⁻¹Tᵀθ̃: the narrow θ with Tθ = θ̃ when θ̃ lies in the image (Tᵀ itself when T is an
        isometry). TᵀT is diagonal: each narrow entry gets the sum of its copies' squared factors."""
        shapes = self.adapter.parameter_shapes(self.narrow_config)
        diagonal = self.adjoint(self.apply({key: torch.ones(shapes[key], dtype=torch.float64) for key in params}))
        return {key: value / diagonal[key] for key, value in self.adjoint(params).items()}

    def apply_vector(self, vector: torch.Tensor) -> torch.Tensor:
        """Tθ for θ as one vector, in the order of the narrow config's state_dict."""
        return self._as_vector(self.apply(self._as_params(vector, self.narrow_config)), self.wide_config)

    def adjoint_vector(self, vector: torch.Tensor) -> torch.Tensor:
        """Tᵀθ̃ for θ̃ as one vector, in the order of the wide config's state_dict."""
        return self._as_vector(self.adjoint(self._as_params(vector, self.wide_config)), self.narrow_config)

    def _as_params(self, vector: torch.Tensor, config: dict) -> dict[str, torch.Tensor]:
        shapes = self.adapter.parameter_shapes(config)
        expected = sum(math.prod(shape) for shape in shapes.values())
        if vector.numel() != expected:
            raise ArchitectureError(f"a parameter vector of {vector.numel()} entries, this architecture has {expected}")
        like = {key: torch.empty(shape, dtype=torch.float64) for key, shape in shapes.items()}
        return unflatten_params(vector, like)

    def _as_vector(self, params: dict[str, torch.Tensor], config: dict) -> torch.Tensor:
        return flatten_params({key: params[key] for key in self.adapter.parameter_shapes(config)})

    def then(self, other: "Embedding") -> "Embedding":
        """The composition: first ``self``, then ``other`` (which must start at self's wide config).
        Two split sequences concatenate; otherwise the unit maps compose layer by layer."""
        if not same_architecture(self.adapter, other.narrow_config, self.wide_config):
            raise ArchitectureError("cannot compose embeddings: the second does not start where the first ends")
        if self.given_by_splits and other.given_by_splits:
            return Embedding(self.adapter, self.narrow_config, self.splits + other.splits)
        first = {m.layer: m for m in self.unit_maps}
        second = {m.layer: m for m in other.unit_maps}
        middle = widths_of(self.adapter, self.wide_config)
        composed = []
        for layer in list(first) + [name for name in second if name not in first]:
            before = first.get(layer) or UnitMap.identity(layer, middle[layer])
            after = second.get(layer) or UnitMap.identity(layer, middle[layer])
            composed.append(before.then(after))
        return Embedding(self.adapter, self.narrow_config, layer_maps=tuple(composed), origin=tuple(sorted(set(self.strategies) | set(other.strategies))))


# -- the record ----------------------------------------------------------------------------


def _malformed(where: str, problem: str) -> CheckpointError:
    return CheckpointError(f"metadata {EMBEDDING_KEY} is malformed: {where} {problem}", hint="the file's embedding record is corrupt; split or reduce again")


def _field(data: Any, key: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise _malformed(where, "must be an object")
    if key not in data:
        raise _malformed(f"{where}.{key}", "is missing")
    return data[key]


def _integer(data: dict, key: str, where: str, low: int = 0) -> int:
    value = _field(data, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _malformed(f"{where}.{key}", f"must be an integer ≥ {low}, got {value!r}")
    return value


def _text(data: dict, key: str, where: str) -> str:
    value = _field(data, key, where)
    if not isinstance(value, str):
        raise _malformed(f"{where}.{key}", f"must be a string, got {value!r}")
    return value


def _object(data: dict, key: str, where: str) -> dict:
    value = _field(data, key, where)
    if not isinstance(value, dict):
        raise _malformed(f"{where}.{key}", "must be an object")
    return value


def _list(data: dict, key: str, where: str, length: int | None = None) -> list:
    value = _field(data, key, where)
    if not isinstance(value, list):
        raise _malformed(f"{where}.{key}", "must be a list")
    if length is not None and len(value) != length:
        raise _malformed(f"{where}.{key}", f"has {len(value)} entries, expected {length}")
    return value


def _numbers(data: dict, key: str, where: str, length: int, non_negative: bool = False) -> list[float]:
    values = _list(data, key, where, length)
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (non_negative and value < 0):
            kind = "finite numbers ≥ 0" if non_negative else "finite numbers"
            raise _malformed(f"{where}.{key}[{index}]", f"is {value!r}; entries must be {kind}")
    return [float(value) for value in values]


def validate_split(data: Any, where: str) -> UnitSplit:
    """A split entry with every field present and sane (widths are checked against the config later)."""
    layer = _text(data, "layer", where)
    width = _integer(data, "width", where, low=1)
    unit = _integer(data, "unit", where)
    if unit >= width:
        raise _malformed(f"{where}.unit", f"is {unit}, out of range for width {width}")
    copies = len(_list(data, "shares", where))
    if copies < 1:
        raise _malformed(f"{where}.shares", "is empty")
    shares = _numbers(data, "shares", where, copies, non_negative=True)
    incoming = _numbers(data, "incoming", where, copies)
    outgoing = _numbers(data, "outgoing", where, copies)
    split = UnitSplit(layer, unit, width, tuple(shares), tuple(incoming), tuple(outgoing), _text(data, "strategy", where))
    if "positions" in data and data["positions"] != split.positions:
        raise _malformed(f"{where}.positions", f"is {data['positions']!r}, a split of unit {unit} at width {width} puts its copies at {split.positions}")
    return split


def validate_map(data: Any, where: str) -> UnitMap:
    """A unit-map entry: source indices in [0, narrow_width), factor lists as long as source, finite."""
    layer = _text(data, "layer", where)
    narrow_width = _integer(data, "narrow_width", where, low=1)
    source = _list(data, "source", where)
    if not source:
        raise _malformed(f"{where}.source", "is empty")
    for index, value in enumerate(source):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < narrow_width:
            raise _malformed(f"{where}.source[{index}]", f"is {value!r}, not a unit index in [0, {narrow_width})")
    incoming = _numbers(data, "incoming", where, len(source))
    outgoing = _numbers(data, "outgoing", where, len(source))
    return UnitMap(layer, narrow_width, tuple(source), tuple(incoming), tuple(outgoing))


def _validate_stage(stage: Any, where: str, version: int) -> None:
    _text(stage, "parent_sha256", where)
    _object(stage, "parent_config", where)
    if "parent_name" in stage:
        _text(stage, "parent_name", where)
    if "splits" in stage:
        for index, split in enumerate(_list(stage, "splits", where)):
            validate_split(split, f"{where}.splits[{index}]")
    elif "maps" in stage and version >= MAPS_VERSION:
        _validate_maps(stage, where)
    else:
        raise _malformed(f"{where}.splits", "is missing" if version == SPLITS_VERSION else "and .maps are missing")


def _validate_maps(entry: dict, where: str) -> list[UnitMap]:
    maps = [validate_map(data, f"{where}.maps[{index}]") for index, data in enumerate(_list(entry, "maps", where))]
    layers = [unit_map.layer for unit_map in maps]
    if len(set(layers)) != len(layers):
        raise _malformed(f"{where}.maps", f"names a layer twice ({', '.join(layers)})")
    if "origin" in entry:
        origin = _list(entry, "origin", where)
        if not all(isinstance(item, str) for item in origin):
            raise _malformed(f"{where}.origin", "must be a list of strings")
    return maps


def _maps_against(adapter: Adapter, maps: list[UnitMap], narrow_config: dict, where: str) -> None:
    """Every map names a hidden layer of ``narrow_config`` and starts from its width."""
    widths = widths_of(adapter, narrow_config)
    for index, unit_map in enumerate(maps):
        if unit_map.layer not in widths:
            raise _malformed(f"{where}.maps[{index}].layer", f"{unit_map.layer!r} is not a hidden layer (hidden layers: {', '.join(widths) or 'none'})")
        if unit_map.narrow_width != widths[unit_map.layer]:
            raise _malformed(f"{where}.maps[{index}].narrow_width", f"is {unit_map.narrow_width}, layer {unit_map.layer!r} has {widths[unit_map.layer]} units there")


def _splits_against(adapter: Adapter, splits: list[UnitSplit], narrow_config: dict, where: str) -> None:
    """Every split names a hidden layer and the width that layer has at that point of the sequence."""
    widths = widths_of(adapter, narrow_config)
    for index, split in enumerate(splits):
        if split.layer not in widths:
            raise _malformed(f"{where}.splits[{index}].layer", f"{split.layer!r} is not a hidden layer (hidden layers: {', '.join(widths) or 'none'})")
        if split.width != widths[split.layer]:
            raise _malformed(f"{where}.splits[{index}].width", f"is {split.width}, layer {split.layer!r} has {widths[split.layer]} units at that point")
        widths[split.layer] += split.copies - 1


def _maps_reach(adapter: Adapter, maps: list[UnitMap], wide_config: dict, where: str) -> None:
    """Every map ends at the width its layer has in ``wide_config``."""
    widths = widths_of(adapter, wide_config)
    for index, unit_map in enumerate(maps):
        if unit_map.layer in widths and unit_map.wide_width != widths[unit_map.layer]:
            raise _malformed(f"{where}.maps[{index}].source", f"has {unit_map.wide_width} entries, layer {unit_map.layer!r} of the wide file has {widths[unit_map.layer]} units")


def _stage_embedding(adapter: Adapter, stage: dict, config: dict, where: str) -> Embedding:
    """The embedding of one stage (or target entry), checked against the architecture it starts from."""
    if "splits" in stage:
        splits = [UnitSplit.from_dict(split) for split in stage["splits"]]
        _splits_against(adapter, splits, config, where)
        return Embedding(adapter, config, splits)
    maps = [UnitMap.from_dict(data) for data in stage["maps"]]
    _maps_against(adapter, maps, config, where)
    return Embedding(adapter, config, layer_maps=tuple(maps), origin=tuple(stage.get("origin", ())))


@dataclass
class EmbeddingRecord:
    """The ``kktembed.embedding`` metadata.

    ``stages``: one per ``split`` (or ``trace``) call that produced this file, oldest first. Stage i
    holds the sha256, file name and config of the checkpoint that call read, and its ``splits`` or,
    in version 2, its ``maps`` (one ``UnitMap`` per layer, with ``origin``), so T from any ancestor
    to this file is the composition of the later stages.

    ``embeds_into`` (version 2): maps from *this* file into others, as ``reduce`` writes them into the
    narrow file it produces: ``target_sha256``, ``target_name``, ``target_config``, ``maps``, ``origin``
    and the ``tol`` the units were grouped at.

    A record of split stages only is written as version 1, exactly as before version 2 existed.
    """

    stages: list[dict[str, Any]]
    embeds_into: list[dict[str, Any]] = field(default_factory=list)

    @property
    def version(self) -> int:
        if self.embeds_into or any("splits" not in stage for stage in self.stages):
            return MAPS_VERSION
        return SPLITS_VERSION

    def to_json(self) -> str:
        body: dict[str, Any] = {"version": self.version, "stages": self.stages}
        if self.version >= MAPS_VERSION:
            body["embeds_into"] = self.embeds_into
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "EmbeddingRecord | None":
        """The record, with every field checked (types, index ranges, lengths, finite numbers);
        CheckpointError naming the first bad field otherwise. None without a record."""
        if EMBEDDING_KEY not in metadata:
            return None
        body = parse_json(metadata[EMBEDDING_KEY], f"metadata {EMBEDDING_KEY}", CheckpointError, constants=True)  # fields name NaN
        if not isinstance(body, dict):
            raise _malformed("the record", "must be an object")
        version = body.get("version", SPLITS_VERSION)
        if version not in (SPLITS_VERSION, MAPS_VERSION):
            raise CheckpointError(
                f"metadata {EMBEDDING_KEY} has version {version!r}; this kktembed reads versions 1 and 2",
                hint="upgrade kktembed to read it",
            )
        stages = _list(body, "stages", "record")
        for index, stage in enumerate(stages):
            _validate_stage(stage, f"stages[{index}]", version)
        embeds_into = []
        if version >= MAPS_VERSION:
            embeds_into = _list(body, "embeds_into", "record") if "embeds_into" in body else []
            for index, entry in enumerate(embeds_into):
                where = f"embeds_into[{index}]"
                _text(entry, "target_sha256", where)
                _object(entry, "target_config", where)
                if "target_name" in entry:
                    _text(entry, "target_name", where)
                tol = entry.get("tol", 0.0)
                if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
                    raise _malformed(f"{where}.tol", f"is {tol!r}, not a finite number ≥ 0")
                _validate_maps(entry, where)
        return cls(stages, embeds_into)

    def appended(self, parent_sha256: str, parent_name: str, embedding: Embedding) -> "EmbeddingRecord":
        """The record of a file made from the parent with this record by ``embedding``. The parent's
        ``embeds_into`` entries do not describe the new file and are dropped."""
        stage: dict[str, Any] = {"parent_sha256": parent_sha256, "parent_name": parent_name, "parent_config": embedding.narrow_config}
        if embedding.given_by_splits:
            stage["splits"] = [split.to_dict() for split in embedding.splits]
        else:
            stage["maps"] = [unit_map.to_dict() for unit_map in embedding.unit_maps]
            stage["origin"] = list(embedding.origin)
        return EmbeddingRecord(self.stages + [stage])

    def embedding_from(
        self, adapter: Adapter, narrow_config: dict, narrow_sha256: str | None = None, wide_config: dict | None = None
    ) -> tuple[Embedding, dict] | None:
        """T from the ancestor with ``narrow_config`` to this file, with that ancestor's stage (whose
        ``parent_sha256`` tells whether NARROW is that very file); None if no stage fits. A stage
        whose parent has ``narrow_sha256`` is preferred. With ``wide_config`` (this file's), every
        used stage is checked to start where the previous one ends and the last to end there."""
        fitting = [i for i, stage in enumerate(self.stages) if same_architecture(adapter, stage["parent_config"], narrow_config)]
        if not fitting:
            return None
        start = next((i for i in fitting if self.stages[i]["parent_sha256"] == narrow_sha256), fitting[0])
        embedding = None
        for index in range(start, len(self.stages)):
            where = f"stages[{index}]"
            stage = self.stages[index]
            config = narrow_config if embedding is None else embedding.wide_config
            if embedding is not None and not same_architecture(adapter, stage["parent_config"], config):
                raise _malformed(f"{where}.parent_config", "is not the architecture the previous stage ends at")
            step = _stage_embedding(adapter, stage, config, where)
            embedding = step if embedding is None else embedding.then(step)
        if wide_config is not None:
            last = f"stages[{len(self.stages) - 1}]"
            for unit_map in embedding.unit_maps:
                _maps_reach(adapter, [unit_map], wide_config, last)
            if not same_architecture(adapter, embedding.wide_config, wide_config):
                raise _malformed(last, "does not end at this file's architecture")
        return embedding, self.stages[start]

    def embedding_into(
        self, adapter: Adapter, narrow_config: dict, wide_config: dict, wide_sha256: str | None = None
    ) -> tuple[Embedding, dict] | None:
        """T from this file (with ``narrow_config``) into a file with ``wide_config``, from an
        ``embeds_into`` entry (one whose ``target_sha256`` is ``wide_sha256`` preferred); None if
        no entry targets that architecture."""
        fitting = [i for i, entry in enumerate(self.embeds_into) if same_architecture(adapter, entry["target_config"], wide_config)]
        if not fitting:
            return None
        index = next((i for i in fitting if self.embeds_into[i]["target_sha256"] == wide_sha256), fitting[0])
        entry, where = self.embeds_into[index], f"embeds_into[{index}]"
        embedding = _stage_embedding(adapter, entry, narrow_config, where)
        _maps_reach(adapter, list(embedding.unit_maps), wide_config, where)
        if not same_architecture(adapter, embedding.wide_config, wide_config):
            raise _malformed(where, "does not end at the wide file's architecture")
        return embedding, entry
