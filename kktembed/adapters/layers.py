"""Reading the layers of a plain state_dict, whatever its key names (for adapters' detection hooks).

A plain checkpoint of a feed-forward network is a set of weight layers (``<name>.weight``, 2-D for
Linear, 4-D for Conv2d, optionally ``<name>.bias``). Their order is not in the file. It is found as
follows:
  - ``hints["layers"]`` (``--layers`` or the spec's ``layers``) states it; it is checked, not trusted;
  - otherwise every order is tried in which the shapes chain (Conv2d layers first; each layer's input
    size is the previous layer's output size; the first takes the data's input size when known);
    within a family of names that differ only by numbers (``fc1, fc2``; ``layers.0, layers.2``), the
    natural numeric order is required. Exactly one remaining order is used; several are refused,
    listed, with the hint to pass ``--layers``.
Tensors that break homogeneity (biases after the first layer, normalization layers) are all named
in one error. ``KeyedSequential`` builds a module whose state_dict keys are those names (dots too).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from kktembed.errors import ArchitectureError

NORMALIZATION_LEAVES = ("running_mean", "running_var", "num_batches_tracked")
MAX_ORDERS_LISTED = 4
_SEARCH_BUDGET = 200_000


@dataclass(frozen=True)
class WeightLayer:
    key: str  # module name: the tensor is ``<key>.weight``
    shape: tuple[int, ...]
    has_bias: bool

    @property
    def is_conv(self) -> bool:
        return len(self.shape) == 4

    @property
    def inputs(self) -> int:
        """in_features (Linear) or in_channels (Conv2d)."""
        return self.shape[1]

    @property
    def outputs(self) -> int:
        return self.shape[0]


def natural_key(name: str) -> tuple:
    """``fc10`` after ``fc2``: digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _family(name: str) -> str:
    return re.sub(r"\d+", "#", name)


@dataclass(frozen=True)
class LayerScan:
    """The weight layers of a plain state_dict (in natural name order) and the tensors of
    normalization layers found beside them (BatchNorm statistics, 1-D affine weights and biases)."""

    layers: tuple[WeightLayer, ...]
    normalization: tuple[str, ...]


def weight_layers(tensor_shapes: dict[str, tuple[int, ...]]) -> LayerScan | None:
    """Scan a plain state_dict; None when some tensor is not a weight, a bias or a normalization
    statistic, or there is no weight layer (then the file is not a plain feed-forward network)."""
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in tensor_shapes.items():
        prefix, dot, leaf = name.rpartition(".")
        if not dot or not prefix or leaf not in ("weight", "bias", *NORMALIZATION_LEAVES):
            return None
        groups.setdefault(prefix, {})[leaf] = tuple(shape)
    is_normalization = {
        prefix: any(leaf in leaves for leaf in NORMALIZATION_LEAVES) or len(leaves.get("weight", (0, 0))) == 1
        for prefix, leaves in groups.items()
    }
    normalization = tuple(f"{prefix}.{leaf}" for prefix in sorted(groups, key=natural_key) if is_normalization[prefix] for leaf in sorted(groups[prefix]))
    layers = []
    for prefix, leaves in groups.items():
        if is_normalization[prefix]:
            continue
        if "weight" not in leaves:
            raise ArchitectureError(f"tensor {prefix}.bias has no matching weight {prefix}.weight")
        if len(leaves["weight"]) not in (2, 4):
            raise ArchitectureError(
                f"tensor {prefix}.weight with shape {leaves['weight']} is not a Linear or Conv2d weight",
                hint="only Linear and Conv2d layers are supported by the built-in adapters",
            )
        layers.append(WeightLayer(prefix, leaves["weight"], "bias" in leaves))
    if not layers:
        return None
    return LayerScan(tuple(sorted(layers, key=lambda layer: natural_key(layer.key))), normalization)


def refuse_non_homogeneous(normalization: tuple[str, ...], later_biases: list[str]) -> None:
    """One ArchitectureError naming every tensor that breaks homogeneity, if there is any."""
    parts = []
    if normalization:
        parts.append(f"normalization layers ({', '.join(f'tensor {name}' for name in normalization)})")
    if later_biases:
        parts.append(f"biases after the first layer ({', '.join(f'tensor {name}' for name in later_biases)})")
    if parts:
        raise ArchitectureError(
            f"{' and '.join(parts)} break homogeneity",
            hint="retrain without them (bias=False, no normalization); only bias-free Linear/Conv2d layers with at most a first-layer bias are homogeneous",
        )


def _flatten_fits(conv: WeightLayer, linear: WeightLayer) -> bool:
    """The first Linear after a flatten takes C·H·W inputs: a multiple of the channels C."""
    return linear.inputs % conv.outputs == 0


def _follows(previous: WeightLayer | None, layer: WeightLayer, input_shape: tuple[int, ...] | None) -> bool:
    if previous is None:
        if input_shape is None:
            return True
        return layer.inputs == (input_shape[0] if layer.is_conv else math.prod(input_shape))
    if previous.is_conv and not layer.is_conv:
        return _flatten_fits(previous, layer)
    if not previous.is_conv and layer.is_conv:
        return False
    return layer.inputs == previous.outputs


def chaining_orders(layers: list[WeightLayer], input_shape: tuple[int, ...] | None, limit: int = MAX_ORDERS_LISTED + 1) -> list[list[WeightLayer]]:
    """Orders of ``layers`` in which the shapes chain and numbered families keep their numeric
    order; at most ``limit`` of them (enough to tell "one" from "several")."""
    family_rank = {}
    for layer in layers:
        family_rank.setdefault(_family(layer.key), []).append(layer)
    predecessors = {}
    for members in family_rank.values():
        members.sort(key=lambda layer: natural_key(layer.key))
        for before, after in zip(members, members[1:]):
            predecessors[after.key] = before.key
    found: list[list[WeightLayer]] = []
    budget = [_SEARCH_BUDGET]

    def extend(order: list[WeightLayer], placed: set[str]) -> None:
        budget[0] -= 1
        if budget[0] < 0 or len(found) >= limit:
            return
        if len(order) == len(layers):
            found.append(list(order))
            return
        previous = order[-1] if order else None
        for layer in layers:
            if layer.key in placed or predecessors.get(layer.key, layer.key) not in placed | {layer.key}:
                continue
            if _follows(previous, layer, input_shape):
                order.append(layer)
                placed.add(layer.key)
                extend(order, placed)
                placed.discard(layer.key)
                order.pop()

    extend([], set())
    if budget[0] < 0 and not found:
        raise ArchitectureError("too many layers of equal shape to determine their order", hint="pass the order with --layers A,B,C")
    return found


def ordered_layers(scan: LayerScan, hints: dict[str, Any]) -> list[WeightLayer]:
    """The scanned weight layers in network order (module docstring). Raises ArchitectureError when
    the order is ambiguous or impossible, or naming at once every tensor that breaks homogeneity
    (normalization layers, biases after the first layer)."""
    try:
        order = _order(list(scan.layers), hints)
    except ArchitectureError:
        refuse_non_homogeneous(scan.normalization, [])
        raise
    refuse_non_homogeneous(scan.normalization, [f"{layer.key}.bias" for layer in order[1:] if layer.has_bias])
    return order


def _order(layers: list[WeightLayer], hints: dict[str, Any]) -> list[WeightLayer]:
    input_shape = tuple(hints["input_shape"]) if hints.get("input_shape") else None
    explicit = hints.get("layers")
    if explicit:
        order = _explicit_order(layers, list(explicit), input_shape)
    else:
        orders = chaining_orders(layers, input_shape)
        if not orders:
            shapes = ", ".join(f"{layer.key}: {tuple(layer.shape)}" for layer in layers)
            raise ArchitectureError(
                f"no order of the weight layers chains their shapes ({shapes})",
                hint="a layer may be missing, or the network is not a plain feed-forward stack; pass --layers or an --arch spec",
            )
        if len(orders) > 1:
            listed = "; ".join(" → ".join(layer.key for layer in order) for order in orders[:MAX_ORDERS_LISTED])
            more = " …" if len(orders) > MAX_ORDERS_LISTED else ""
            raise ArchitectureError(
                f"the layer order is ambiguous: several orders fit the shapes ({listed}{more})",
                hint="state it with --layers A,B,C or \"layers\" in an --arch spec",
            )
        order = orders[0]
    return order


def _explicit_order(layers: list[WeightLayer], keys: list[str], input_shape: tuple[int, ...] | None) -> list[WeightLayer]:
    by_key = {layer.key: layer for layer in layers}
    unknown = [key for key in keys if key not in by_key]
    if unknown:
        raise ArchitectureError(f"--layers names {', '.join(unknown)}, not weight layers of this file (it has {', '.join(by_key)})")
    missing = [key for key in by_key if key not in keys]
    if missing or len(set(keys)) != len(keys):
        raise ArchitectureError(
            f"--layers must list every weight layer once (missing: {', '.join(missing) or 'none'})",
            hint=f"the file has {', '.join(by_key)}",
        )
    order = [by_key[key] for key in keys]
    for previous, layer in zip([None, *order], order):
        if not _follows(previous, layer, input_shape):
            before = f"after {previous.key} {tuple(previous.shape)}" if previous else f"first, for inputs {input_shape}"
            raise ArchitectureError(f"--layers order does not chain: {layer.key} {tuple(layer.shape)} cannot come {before}")
    return order


def keyed_sequential(steps: list[tuple[str, Any]]):
    """A module that applies ``steps`` in order, registered under their names, so that its
    state_dict keys are ``<name>.weight`` exactly as in the user's checkpoint: an ``nn.Sequential``
    when no name has a dot, else a sequential module with nested containers (``features.0``)."""
    from collections import OrderedDict

    from torch import nn

    for name, _ in steps:
        if not name or any(not part for part in name.split(".")):
            raise ArchitectureError(f"invalid layer name {name!r}: empty name or empty part between dots")
    names = [name for name, _ in steps]
    if len(set(names)) != len(names):
        raise ArchitectureError(f"a layer name is used twice in {', '.join(names)}")
    if not any("." in name for name in names):
        return nn.Sequential(OrderedDict(steps))

    class KeyedSequential(nn.Module):
        def __init__(self, ordered: list[tuple[str, nn.Module]]):
            super().__init__()
            self.order = [name for name, _ in ordered]
            for name, module in ordered:
                parent = self
                *path, leaf = name.split(".")
                for part in path:
                    if not hasattr(parent, part):
                        parent.add_module(part, nn.Module())
                    parent = getattr(parent, part)
                    if type(parent) is not nn.Module:
                        raise ArchitectureError(f"layer name {name!r} nests inside another layer")
                if hasattr(parent, leaf):
                    raise ArchitectureError(f"layer name {name!r} is used twice")
                parent.add_module(leaf, module)
            self.steps = [self.get_submodule(name) for name in self.order]

        def forward(self, x):
            for module in self.steps:
                x = module(x)
            return x

        def __iter__(self):
            return iter(self.steps)

        def __len__(self) -> int:
            return len(self.steps)

        def ordered_children(self) -> list[tuple[str, nn.Module]]:
            return list(zip(self.order, self.steps))

    return KeyedSequential(steps)
