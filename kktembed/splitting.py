"""Planning and performing splits (MATH.md §4): shares, unit selection, the wide checkpoint.

Unit indices always refer to the checkpoint being split: copies are appended after the existing
units, so splitting several units of one layer never renumbers them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from kktembed.checkpoint import DATA_KEY, DATASET_KEY, save_checkpoint
from kktembed.embedding import EMBEDDING_KEY, Embedding, EmbeddingRecord, UnitSplit, file_sha256
from kktembed.errors import UsageError
from kktembed.network import Network

SHARE_TOL = 1e-9


def parse_shares(ratio: str | None, copies: int | None) -> list[float]:
    """``--ratio 0.3`` → [0.3, 0.7]; ``--ratio 0.2,0.3,0.5`` → as given; ``--copies M`` → M × 1/M.
    Shares r_i = c_i² must be ≥ 0 and sum to 1. Default: two equal copies."""
    if ratio is not None and copies is not None:
        raise UsageError("--ratio and --copies are mutually exclusive")
    if copies is not None:
        if copies < 2:
            raise UsageError(f"--copies must be at least 2, got {copies}")
        return [1.0 / copies] * copies
    if ratio is None:
        return [0.5, 0.5]
    try:
        values = [float(part) for part in ratio.split(",")]
    except ValueError:
        raise UsageError(f"invalid --ratio {ratio!r}", hint="give shares like 0.3 or 0.2,0.3,0.5")
    if any(not math.isfinite(v) for v in values):
        raise UsageError(f"invalid --ratio {ratio!r}: shares must be finite")
    if len(values) == 1:
        if not 0 <= values[0] <= 1:
            raise UsageError(f"--ratio {values[0]} must lie in [0, 1] (it is the first copy's share)")
        values = [values[0], 1.0 - values[0]]
    if any(v < 0 for v in values):
        raise UsageError(f"--ratio {ratio}: shares must be ≥ 0")
    total = sum(values)
    if abs(total - 1.0) > SHARE_TOL:
        raise UsageError(f"--ratio {ratio}: shares sum to {total:.12g}, not 1", hint="shares r_i = c_i² must sum to 1")
    return values


SPLIT_SPEC_HELP = 'SPEC is "key=value;…" with keys layer, neuron, ratio, copies, width, strategy, e.g. "copies=2" or "layer=0;neuron=3;ratio=0.3"'


def plan_from_spec(network: Network, spec: str) -> Embedding:
    """The embedding described by a ``trace --split`` SPEC, with the vocabulary of ``kktembed split``."""
    from kktembed.plugins import split_strategies

    fields: dict[str, list[str]] = {}
    for part in filter(None, (piece.strip() for piece in spec.split(";"))):
        key, separator, value = part.partition("=")
        if not separator or key.strip() not in ("layer", "neuron", "ratio", "copies", "width", "strategy"):
            raise UsageError(f"invalid --split {spec!r}", hint=SPLIT_SPEC_HELP)
        fields.setdefault(key.strip(), []).append(value.strip())
    try:
        units = [int(v) for v in fields["neuron"][-1].split(",")] if "neuron" in fields else None
        copies = int(fields["copies"][-1]) if "copies" in fields else None
        width = int(fields["width"][-1]) if "width" in fields else None
    except ValueError:
        raise UsageError(f"invalid --split {spec!r}: neuron, copies and width take integers", hint=SPLIT_SPEC_HELP)
    strategies = split_strategies()
    strategy = fields.get("strategy", ["isometric"])[-1]
    if strategy not in strategies:
        raise UsageError(f"unknown split strategy {strategy!r}", hint=f"known: {', '.join(sorted(strategies))}")
    ratio = fields.get("ratio", [None])[-1]
    if width is not None and (ratio is not None or copies is not None):
        raise UsageError("width chooses equal shares itself; drop ratio/copies")
    shares = parse_shares(ratio, copies)
    layers = [name for value in fields.get("layer", []) for name in value.split(",")]
    return build_embedding(network, plan_splits(network, layers, units, shares, width), strategies[strategy])


@dataclass
class SplitRequest:
    layer: str
    unit: int
    shares: list[float]


def plan_splits(network: Network, layers: list[str], units: list[int] | None, shares: list[float], width: int | None) -> list[SplitRequest]:
    """Which units of which hidden layers to split, with which shares.

    ``units`` None and ``width`` None: every unit of each layer. ``width``: widen each layer to that
    many units with equal shares, giving units 0, 1, … one extra copy each in turn.
    """
    hidden = {unit_layer.name: unit_layer for unit_layer in network.adapter.units(network.config)}
    if not hidden:
        raise UsageError("this network has no hidden layer to split (a single layer is the output layer)")
    if not layers:
        if len(hidden) > 1:
            raise UsageError(f"choose the layer to split with --layer (hidden layers: {', '.join(hidden)})")
        layers = list(hidden)
    parameter_layers = {key.rpartition(".")[0] for key in network.params}
    requests = []
    for layer in layers:
        if layer not in hidden:
            if layer in parameter_layers:
                raise UsageError(f"layer {layer!r} is the output layer, which cannot be split", hint=f"hidden layers: {', '.join(hidden)}")
            raise UsageError(f"unknown layer {layer!r}", hint=f"hidden layers: {', '.join(hidden)}")
        current = hidden[layer].width
        if width is not None:
            if units is not None:
                raise UsageError("--width and --neuron are mutually exclusive")
            if width <= current:
                raise UsageError(f"--width {width} must exceed the current width {current} of layer {layer!r}")
            extra = width - current
            for unit in range(current):
                copies = 1 + extra // current + (1 if unit < extra % current else 0)
                if copies > 1:
                    requests.append(SplitRequest(layer, unit, [1.0 / copies] * copies))
            continue
        selected = list(range(current)) if units is None else units
        for unit in selected:
            if not 0 <= unit < current:
                raise UsageError(f"--neuron {unit} is out of range for layer {layer!r} of width {current}")
        if len(set(selected)) != len(selected):
            raise UsageError("--neuron lists a unit twice")
        requests += [SplitRequest(layer, unit, shares) for unit in selected]
    return requests


def build_embedding(network: Network, requests: list[SplitRequest], strategy) -> Embedding:
    """The map T that performs ``requests`` in order with ``strategy`` (a SplitStrategy)."""
    widths = {unit_layer.name: unit_layer.width for unit_layer in network.adapter.units(network.config)}
    splits = []
    for request in requests:
        incoming, outgoing = strategy.scales(request.shares, network.adapter.activation_degree(network.config, request.layer))
        splits.append(
            UnitSplit(request.layer, request.unit, widths[request.layer], tuple(request.shares), tuple(incoming), tuple(outgoing), strategy.name)
        )
        widths[request.layer] += len(request.shares) - 1
    return Embedding(network.adapter, network.config, splits)


def relocated_data_reference(metadata: dict[str, str], source: Path, target: Path) -> dict[str, str]:
    """Carry the checkpoint's data reference over, rewritten relative to the output's folder."""
    if DATA_KEY in metadata:
        absolute = (source.parent / metadata[DATA_KEY]).resolve()
        return {DATA_KEY: os.path.relpath(absolute, target.resolve().parent)}
    if DATASET_KEY in metadata:
        return {DATASET_KEY: metadata[DATASET_KEY]}
    return {}


def write_split_checkpoint(network: Network, embedding: Embedding, output: Path, force: bool) -> Network:
    """Apply T, record the embedding (appended to any the input carries), write atomically."""
    wide = Network(network.adapter, embedding.wide_config, embedding.apply(network.params))
    previous = EmbeddingRecord.from_metadata(network.metadata) or EmbeddingRecord([])
    record = previous.appended(file_sha256(network.path), network.path.name, embedding)
    extra = {EMBEDDING_KEY: record.to_json(), **relocated_data_reference(network.metadata, network.path, Path(output))}
    save_checkpoint(output, wide, extra, force=force)
    return wide
