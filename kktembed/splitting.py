"""Planning and performing splits (MATH.md §4): which units, which shares, the wide checkpoint.

A ``SplitPlan`` holds the split options, parsed and validated once, whether they come from
``kktembed split``'s options (``--layer``, ``--neuron``, ``--ratio``, ``--copies``, ``--width``,
``--strategy``) or from a ``trace --split`` SPEC (``"layer=0;neuron=3;ratio=0.3"``); errors name
the options in the words the user wrote them. ``plan.embedding(network)`` is the map T.

Unit indices always refer to the checkpoint being split: copies are appended after the existing
units, so splitting several units of one layer never renumbers them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kktembed.errors import UsageError

if TYPE_CHECKING:  # torch-free at import: split options are validated before torch loads
    from kktembed.embedding import Embedding
    from kktembed.network import Network

SHARE_TOL = 1e-9
MAX_COPIES = 1_000_000
FLOAT64_BYTES = 8
WIDE_COPIES = 3  # the wide parameters exist up to three times: Tθ, its gathered blocks, the serialized file
PYTHON_BYTES_PER_COPY = 512  # one copy of a unit as Python objects: its share and factors, map entries, record
RECORD_BYTES_PER_COPY = 64  # one copy in the JSON embedding record (measured: about 55 for many copies)
SPEC_KEYS = ("layer", "neuron", "ratio", "copies", "width", "strategy")
OPTION_WORDS = {key: f"--{key}" for key in SPEC_KEYS}
SPEC_WORDS = {key: f"{key}=" for key in SPEC_KEYS}
SPLIT_SPEC_HELP = 'SPEC is "key=value;…" with keys layer, neuron, ratio, copies, width, strategy, e.g. "copies=2" or "layer=0;neuron=3;ratio=0.3"'


@dataclass(frozen=True)
class SplitRequest:
    layer: str
    unit: int
    shares: tuple[float, ...]


@dataclass(frozen=True)
class SplitPlan:
    """Split options, validated: hidden ``layers`` (empty: the only one), ``units`` (None: all),
    ``shares`` r_i = c_i² (≥ 0, sum 1), or a target ``width`` with equal shares, and a strategy."""

    layers: tuple[str, ...] = ()
    units: tuple[int, ...] | None = None
    shares: tuple[float, ...] = (0.5, 0.5)
    width: int | None = None
    strategy: str = "isometric"
    words: tuple[tuple[str, str], ...] = tuple(OPTION_WORDS.items())  # how the user spelled each option

    @classmethod
    def from_options(
        cls,
        layers: list[str] | None = None,
        neuron: str | list[int] | None = None,
        ratio: str | list[float] | None = None,
        copies: int | None = None,
        width: int | None = None,
        strategy: str = "isometric",
        words: dict[str, str] = OPTION_WORDS,
    ) -> "SplitPlan":
        """Parse and validate every option; UsageError (exit 2) in the user's words otherwise."""
        word = words.__getitem__
        if width is not None and (ratio is not None or copies is not None):
            raise UsageError(f"{word('width')} chooses equal shares itself; drop {word('ratio')}/{word('copies')}")
        if width is not None and neuron is not None:
            raise UsageError(f"{word('width')} and {word('neuron')} are mutually exclusive")
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 2**31):
            raise UsageError(f"{word('width')} must be a positive integer, got {width!r}")
        units = None if neuron is None else _units(neuron, word)
        names = tuple(name.strip() for value in (layers or []) for name in value.split(",") if name.strip())
        plan = cls(names, units, _shares(ratio, copies, word), width, strategy, tuple(words.items()))
        plan.strategy_object()
        return plan

    def strategy_object(self):
        """The registered SplitStrategy called ``strategy``; UsageError naming the known ones."""
        from kktembed.plugins import split_strategies

        strategies = split_strategies()
        if self.strategy not in strategies:
            raise UsageError(f"unknown split strategy {self.strategy!r}", hint=f"known: {', '.join(sorted(strategies))}")
        return strategies[self.strategy]

    @classmethod
    def from_spec(cls, spec: str) -> "SplitPlan":
        """A ``trace --split`` SPEC: ``key=value`` pairs separated by ``;`` (``split``'s vocabulary)."""
        fields: dict[str, list[str]] = {}
        for part in filter(None, (piece.strip() for piece in spec.split(";"))):
            key, separator, value = part.partition("=")
            if not separator or key.strip() not in SPEC_KEYS:
                raise UsageError(f"invalid --split {spec!r}", hint=SPLIT_SPEC_HELP)
            fields.setdefault(key.strip(), []).append(value.strip())
        try:
            copies = int(fields["copies"][-1]) if "copies" in fields else None
            width = int(fields["width"][-1]) if "width" in fields else None
        except ValueError:
            raise UsageError(f"invalid --split {spec!r}: copies and width take integers", hint=SPLIT_SPEC_HELP)
        return cls.from_options(
            layers=fields.get("layer"),
            neuron=fields["neuron"][-1] if "neuron" in fields else None,
            ratio=fields["ratio"][-1] if "ratio" in fields else None,
            copies=copies,
            width=width,
            strategy=fields.get("strategy", ["isometric"])[-1],
            words=SPEC_WORDS,
        )

    def word(self, key: str) -> str:
        return dict(self.words)[key]

    def said(self, key: str, value) -> str:
        return said(dict(self.words).__getitem__, key, value)

    def chosen_layers(self, network: "Network") -> dict[str, int]:
        """The hidden layers to split with their current widths, every name and unit checked."""
        hidden = {unit_layer.name: unit_layer.width for unit_layer in network.adapter.units(network.config)}
        if not hidden:
            raise UsageError("this network has no hidden layer to split (a single layer is the output layer)")
        layers = self.layers
        if not layers:
            if len(hidden) > 1:
                raise UsageError(f"choose the layer to split with {self.word('layer')} (hidden layers: {', '.join(hidden)})")
            layers = tuple(hidden)
        parameter_layers = {key.rpartition(".")[0] for key in network.params}
        for layer in layers:
            if layer not in hidden:
                if layer in parameter_layers:
                    raise UsageError(f"layer {layer!r} is the output layer, which cannot be split", hint=f"hidden layers: {', '.join(hidden)}")
                raise UsageError(f"unknown layer {layer!r}", hint=f"hidden layers: {', '.join(hidden)}")
            current = hidden[layer]
            if self.width is not None and self.width <= current:
                raise UsageError(f"{self.said('width', self.width)} must exceed the current width {current} of layer {layer!r}")
            for unit in self.units or ():
                if not 0 <= unit < current:
                    raise UsageError(f"{self.said('neuron', unit)} is out of range for layer {layer!r} of width {current}")
        return {layer: hidden[layer] for layer in layers}

    def sizes(self, network: "Network") -> tuple[dict[str, int], dict[str, int], int]:
        """(current widths, widths after the split, number of copies T lists) of the chosen layers,
        computed without building anything."""
        before = self.chosen_layers(network)
        after, copies = {}, 0
        for layer, current in before.items():
            if self.width is not None:
                extra = self.width - current
                after[layer], copies = self.width, copies + extra + min(current, extra)
            else:
                selected = current if self.units is None else len(self.units)
                after[layer], copies = current + selected * (len(self.shares) - 1), copies + selected * len(self.shares)
        return before, after, copies

    def ensure_feasible(self, network: "Network", recorded: bool) -> None:
        """Refuse, before T is built, a split whose wide network (and the Python objects that describe
        T) would not fit in memory, or, when ``recorded`` in a file, whose embedding record would not
        fit in a safetensors header."""
        from kktembed.checkpoint import MAX_HEADER_BYTES
        from kktembed.embedding import EMBEDDING_KEY, with_widths
        from kktembed.resources import ensure_fits, format_size

        before, after, copies = self.sizes(network)
        wide_config = with_widths(network.adapter, network.config, after)
        wide_parameters = sum(math.prod(shape) for shape in network.adapter.parameter_shapes(wide_config).values())
        widths = ", ".join(f"{layer}: {before[layer]:,} → {after[layer]:,}" for layer in after)
        needed = FLOAT64_BYTES * (network.n_parameters + WIDE_COPIES * wide_parameters) + PYTHON_BYTES_PER_COPY * copies
        ensure_fits(needed, f"the split ({widths}; {wide_parameters:,} parameters)", hint="split fewer units or into fewer copies")
        record = RECORD_BYTES_PER_COPY * copies + len(network.metadata.get(EMBEDDING_KEY, ""))
        if recorded and record > MAX_HEADER_BYTES:
            raise UsageError(
                f"the embedding record of this split ({widths}) would take about {format_size(record)}, more than the "
                f"{format_size(MAX_HEADER_BYTES)} a safetensors header may hold",
                hint="split fewer units or into fewer copies",
            )

    def requests(self, network: "Network") -> list[SplitRequest]:
        """Which units of which hidden layers to split, with which shares. No ``units`` and no
        ``width``: every unit of each layer. ``width``: widen each layer to that many units with
        equal shares, giving units 0, 1, … one extra copy each in turn."""
        requests = []
        for layer, current in self.chosen_layers(network).items():
            if self.width is not None:
                extra = self.width - current
                for unit in range(current):
                    copies = 1 + extra // current + (1 if unit < extra % current else 0)
                    if copies > 1:
                        requests.append(SplitRequest(layer, unit, (1.0 / copies,) * copies))
                continue
            selected = range(current) if self.units is None else self.units
            requests += [SplitRequest(layer, unit, self.shares) for unit in selected]
        return requests

    def embedding(self, network: "Network", recorded: bool = False) -> "Embedding":
        """The map T that performs this plan on ``network`` (MATH.md §4), after checking that it fits
        (``ensure_feasible``; ``recorded``: T will be written into a file's metadata)."""
        self.ensure_feasible(network, recorded)
        return build_embedding(network, self.requests(network), self.strategy_object())


def said(word, key: str, value) -> str:
    """An option with its value, as the user wrote it: ``--ratio 0.3`` or ``ratio=0.3``."""
    spelled = word(key)
    return f"{spelled}{value}" if spelled.endswith("=") else f"{spelled} {value}"


def _units(neuron: str | list[int], word) -> tuple[int, ...]:
    try:
        units = tuple(int(part) for part in (neuron.split(",") if isinstance(neuron, str) else neuron))
    except (ValueError, TypeError):
        raise UsageError(f"invalid {said(word, 'neuron', repr(neuron))}", hint="give unit indices like 3 or 0,4,7")
    if not units:
        raise UsageError(f"{word('neuron')} names no unit")
    if len(set(units)) != len(units):
        raise UsageError(f"{word('neuron')} lists a unit twice")
    return units


def _shares(ratio: str | list[float] | None, copies: int | None, word) -> tuple[float, ...]:
    """``0.3`` → (0.3, 0.7); ``0.2,0.3,0.5`` → as given; copies M → M × 1/M; default two halves.
    Shares r_i = c_i² must be finite, ≥ 0 and sum to 1."""
    if ratio is not None and copies is not None:
        raise UsageError(f"{word('ratio')} and {word('copies')} are mutually exclusive")
    if copies is not None:
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 2:
            raise UsageError(f"{word('copies')} must be at least 2, got {copies!r}")
        if copies > MAX_COPIES:
            raise UsageError(f"{said(word, 'copies', f'{copies:,}')} is more than {MAX_COPIES:,} copies of one unit")
        return (1.0 / copies,) * copies
    if ratio is None:
        return (0.5, 0.5)
    try:
        values = [float(part) for part in (ratio.split(",") if isinstance(ratio, str) else ratio)]
    except (ValueError, TypeError):
        raise UsageError(f"invalid {said(word, 'ratio', repr(ratio))}", hint="give shares like 0.3 or 0.2,0.3,0.5")
    if not values or any(not math.isfinite(v) for v in values):
        raise UsageError(f"invalid {said(word, 'ratio', repr(ratio))}: shares must be finite numbers")
    if len(values) > MAX_COPIES:
        raise UsageError(f"{word('ratio')} gives {len(values):,} shares, more than {MAX_COPIES:,}")
    if len(values) == 1:
        if not 0 <= values[0] <= 1:
            raise UsageError(f"{said(word, 'ratio', values[0])} must lie in [0, 1] (it is the first copy's share)")
        values = [values[0], 1.0 - values[0]]
    if any(v < 0 for v in values):
        raise UsageError(f"{said(word, 'ratio', ratio)}: shares must be ≥ 0")
    total = sum(values)
    if abs(total - 1.0) > SHARE_TOL:
        raise UsageError(f"{said(word, 'ratio', ratio)}: shares sum to {total:.12g}, not 1", hint="shares r_i = c_i² must sum to 1")
    return tuple(values)


def plan_from_spec(network: "Network", spec: str) -> "Embedding":
    """The embedding described by a ``trace --split`` SPEC."""
    return SplitPlan.from_spec(spec).embedding(network)


def build_embedding(network: "Network", requests: list[SplitRequest], strategy) -> "Embedding":
    """The map T that performs ``requests`` in order with ``strategy`` (a SplitStrategy)."""
    from kktembed.embedding import Embedding, UnitSplit

    widths = {unit_layer.name: unit_layer.width for unit_layer in network.adapter.units(network.config)}
    splits = []
    for request in requests:
        incoming, outgoing = strategy.scales(list(request.shares), network.adapter.activation_degree(network.config, request.layer))
        splits.append(
            UnitSplit(request.layer, request.unit, widths[request.layer], tuple(request.shares), tuple(incoming), tuple(outgoing), strategy.name)
        )
        widths[request.layer] += len(request.shares) - 1
    return Embedding(network.adapter, network.config, splits)


def write_split_checkpoint(network: "Network", embedding: "Embedding", output: Path, force: bool, data_reference: dict[str, str] | None = None) -> "Network":
    """Apply T, record the embedding (appended to any the input carries), write atomically."""
    from kktembed.checkpoint import save_checkpoint, source_sha256
    from kktembed.embedding import EMBEDDING_KEY, EmbeddingRecord
    from kktembed.network import Network

    wide = Network(network.adapter, embedding.wide_config, embedding.apply(network.params))
    previous = EmbeddingRecord.from_metadata(network.metadata) or EmbeddingRecord([])
    parent = network.path if network.path is not None else None
    record = previous.appended(source_sha256(parent) if parent else "", parent.name if parent else "<memory>", embedding)
    save_checkpoint(output, wide, {EMBEDDING_KEY: record.to_json(), **(data_reference or {})}, force=force)
    return Network(wide.adapter, wide.config, wide.params, Path(output))
