"""The embedding map T of neuron/channel splitting and its error metrics (MATH.md §4).

A ``UnitSplit`` replaces unit j of a hidden layer of width n by m copies: copy 1 stays at position j,
copies 2..m are appended at positions n, n+1, …, n+m−2 (so the indices of all other units, and of
earlier copies, never move). Every slice the adapter lists for the layer is gathered by
``source`` (wide unit → narrow unit) and multiplied by the copy's factor: ``incoming`` factors for
rows / filters / first-layer bias entries, ``outgoing`` factors for columns / input-channel slices
/ flatten blocks. The isometric strategy uses c_i = √r_i for both, so TᵀT = I (Def. 4.6, 4.10).

``Embedding`` is a sequence of splits from a narrow config: T is their composition. It applies T
and Tᵀ to state_dicts (``apply``, ``adjoint``) or flat vectors (``apply_vector``,
``adjoint_vector``), inverts T on its image (``project``) and composes (``then``);
``EmbeddingRecord`` serialises it to the ``kktembed.embedding`` metadata of a wide checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kktembed.adapters.base import Adapter, UnitLayer, UnitSlice
from kktembed.errors import ArchitectureError, CheckpointError
from kktembed.network import flatten_params, unflatten_params

EMBEDDING_KEY = "kktembed.embedding"


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

    def source_and_scales(self, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, scale) over the n + m − 1 wide units: wide unit u takes narrow unit source[u]
        times scale[u] on slices of ``direction`` ("incoming" or "outgoing")."""
        factors = self.incoming if direction == "incoming" else self.outgoing
        source = torch.cat([torch.arange(self.width), torch.full((self.copies - 1,), self.unit)])
        scale = torch.ones(self.width + self.copies - 1, dtype=torch.float64)
        for position, factor in zip(self.positions, factors):
            scale[position] = factor
        return source, scale

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


def _unit_layer(adapter: Adapter, config: dict, name: str) -> UnitLayer:
    for unit_layer in adapter.units(config):
        if unit_layer.name == name:
            return unit_layer
    hidden = ", ".join(u.name for u in adapter.units(config)) or "none"
    raise ArchitectureError(f"{name!r} is not a hidden layer (hidden layers: {hidden})")


def _directions(unit_layer: UnitLayer):
    return [(s, "incoming") for s in unit_layer.incoming] + [(s, "outgoing") for s in unit_layer.outgoing]


@dataclass
class Embedding:
    """T = T_k ∘ … ∘ T_1 for the splits, starting from ``narrow_config``."""

    adapter: Adapter
    narrow_config: dict[str, Any]
    splits: list[UnitSplit] = field(default_factory=list)

    def configs(self) -> list[dict[str, Any]]:
        """The config before each split, then the wide config."""
        configs = [self.narrow_config]
        for split in self.splits:
            configs.append(self.adapter.widen(configs[-1], split.layer, split.width + split.copies - 1))
        return configs

    @property
    def wide_config(self) -> dict[str, Any]:
        return self.configs()[-1]

    @property
    def isometry_error(self) -> float:
        """The coefficient isometry error max |Σ c_i² − 1| over splits (0 for the identity)."""
        return max((split.isometry_error for split in self.splits), default=0.0)

    def apply(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tθ for a narrow state_dict (also maps gradients: ∇Φ̃(Tθ) = T∇Φ(θ) for isometric T)."""
        params = dict(params)
        for split, config in zip(self.splits, self.configs()):
            unit_layer = _unit_layer(self.adapter, config, split.layer)
            for unit_slice, direction in _directions(unit_layer):
                source, scale = split.source_and_scales(direction)
                blocks = _blocks(params[unit_slice.param], unit_slice, split.width)
                wide = blocks[source] * scale.reshape(-1, *([1] * (blocks.ndim - 1)))
                params[unit_slice.param] = _unblocks(wide, unit_slice)
        return params

    def adjoint(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tᵀθ̃ for a wide state_dict: copies are folded back, weighted by their factors."""
        params = dict(params)
        configs = self.configs()
        for split, config in reversed(list(zip(self.splits, configs))):
            unit_layer = _unit_layer(self.adapter, config, split.layer)
            for unit_slice, direction in _directions(unit_layer):
                source, scale = split.source_and_scales(direction)
                blocks = _blocks(params[unit_slice.param], unit_slice, split.width + split.copies - 1)
                weighted = blocks * scale.reshape(-1, *([1] * (blocks.ndim - 1)))
                narrow = torch.zeros((split.width, *blocks.shape[1:]), dtype=blocks.dtype)
                narrow.index_add_(0, source, weighted)
                params[unit_slice.param] = _unblocks(narrow, unit_slice)
        return params

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
        """The composition: first ``self``, then ``other`` (which must start at self's wide config)."""
        if other.narrow_config != self.wide_config:
            raise ArchitectureError("cannot compose embeddings: the second does not start where the first ends")
        return Embedding(self.adapter, self.narrow_config, self.splits + other.splits)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class EmbeddingRecord:
    """The ``kktembed.embedding`` metadata: one stage per ``split`` call, oldest first. Stage i
    holds the sha256, file name and config of the checkpoint that call read, and its splits, so T
    from any ancestor to this file is the concatenation of the later stages' splits."""

    stages: list[dict[str, Any]]

    def to_json(self) -> str:
        return json.dumps({"version": 1, "stages": self.stages}, sort_keys=True)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "EmbeddingRecord | None":
        if EMBEDDING_KEY not in metadata:
            return None
        try:
            stages = json.loads(metadata[EMBEDDING_KEY])["stages"]
            for stage in stages:  # every field that embedding_from reads must be there and parse
                for split in stage["splits"]:
                    UnitSplit.from_dict(split)
                if not isinstance(stage["parent_config"], dict) or not isinstance(stage["parent_sha256"], str):
                    raise ValueError("parent_config must be an object and parent_sha256 a string")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"metadata {EMBEDDING_KEY} is malformed ({exc})")
        return cls(stages)

    def appended(self, parent_sha256: str, parent_name: str, embedding: Embedding) -> "EmbeddingRecord":
        stage = {
            "parent_sha256": parent_sha256,
            "parent_name": parent_name,
            "parent_config": embedding.narrow_config,
            "splits": [split.to_dict() for split in embedding.splits],
        }
        return EmbeddingRecord(self.stages + [stage])

    def embedding_from(self, adapter: Adapter, narrow_config: dict) -> tuple[Embedding, dict] | None:
        """T from the ancestor with ``narrow_config`` to this file, with that ancestor's stage (whose
        ``parent_sha256`` tells whether NARROW is that very file); None if no stage fits."""
        # widths only grow along the stages, so at most one stage starts from narrow_config
        start = next((i for i, stage in enumerate(self.stages) if stage["parent_config"] == narrow_config), None)
        if start is None:
            return None
        splits = [UnitSplit.from_dict(split) for stage in self.stages[start:] for split in stage["splits"]]
        return Embedding(adapter, narrow_config, splits), self.stages[start]
