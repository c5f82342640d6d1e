"""Bias-free multilayer perceptron: Linear → σ → … → Linear, optional first-layer bias.

Config: ``widths`` [d, h_1, …, h_{L-1}, C], ``activation`` (relu | leaky_relu:SLOPE | identity),
``first_layer_bias`` (bool) and ``keys`` (the module name of each Linear, i.e. the state_dict
prefix; an ``nn.Sequential`` with activations in between uses "0", "2", "4", …).
Degree L = number of Linear layers (MATH.md §1). A first-layer bias is a weight on a constant
input and keeps homogeneity; later biases do not.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from kktembed.adapters.activations import activation_module, parse_activation
from kktembed.adapters.base import Adapter, UnitLayer, UnitSlice
from kktembed.errors import ArchitectureError


def sequential_keys(n_layers: int) -> list[str]:
    """Module names of the weight layers in an nn.Sequential with one activation in between."""
    return [str(2 * i) for i in range(n_layers)]


def activation_names(keys: list[str]) -> list[str]:
    """Names for the activation after each hidden weight layer that do not collide with ``keys``."""
    names = []
    for i in range(len(keys) - 1):
        current, following = keys[i], keys[i + 1]
        if current.isdigit() and following.isdigit() and int(following) - int(current) >= 2:
            names.append(str(int(current) + 1))
        else:
            names.append(f"act{i}")
    return names


class MLPAdapter(Adapter):
    name = "mlp"
    description = "bias-free MLP (Linear layers, relu / leaky_relu / identity, optional first-layer bias)"

    def build(self, config: dict[str, Any]):
        import torch
        from torch import nn

        widths = config["widths"]
        keys = config.get("keys") or sequential_keys(len(widths) - 1)
        act_names = activation_names(keys)
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        for i, key in enumerate(keys):
            bias = bool(config.get("first_layer_bias")) and i == 0
            modules[key] = nn.Linear(widths[i], widths[i + 1], bias=bias, dtype=torch.float64)
            if i < len(keys) - 1:
                modules[act_names[i]] = activation_module(config["activation"])
        return nn.Sequential(modules)

    def degree(self, config: dict[str, Any]) -> int:
        return len(config["widths"]) - 1

    def units(self, config: dict[str, Any]) -> list[UnitLayer]:
        widths = config["widths"]
        keys = config.get("keys") or sequential_keys(len(widths) - 1)
        layers = []
        for i in range(len(keys) - 1):
            incoming = [UnitSlice(f"{keys[i]}.weight", axis=0)]
            if i == 0 and config.get("first_layer_bias"):
                incoming.append(UnitSlice(f"{keys[0]}.bias", axis=0))
            outgoing = (UnitSlice(f"{keys[i + 1]}.weight", axis=1),)
            layers.append(UnitLayer(keys[i], widths[i + 1], tuple(incoming), outgoing))
        return layers

    def widen(self, config: dict[str, Any], layer: str, width: int) -> dict[str, Any]:
        keys = config.get("keys") or sequential_keys(len(config["widths"]) - 1)
        hidden = keys[:-1]
        if layer not in hidden:
            raise ArchitectureError(f"{layer!r} is not a hidden layer of this MLP (hidden: {', '.join(hidden)})")
        widths = list(config["widths"])
        widths[hidden.index(layer) + 1] = width
        return {**config, "widths": widths, "keys": keys}


def numbered_weight_layers(tensor_shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]] | None:
    """``[(key, weight shape)]`` in numeric order for an nn.Sequential state_dict, else None.

    Raises ArchitectureError naming a tensor that makes the network non-homogeneous.
    """
    weights: dict[int, tuple[int, ...]] = {}
    for name, shape in tensor_shapes.items():
        prefix, _, leaf = name.rpartition(".")
        if not prefix.isdigit():
            return None
        if leaf in ("running_mean", "running_var", "num_batches_tracked"):
            raise ArchitectureError(
                f"tensor {name} belongs to a normalization layer, which breaks homogeneity",
                hint="only bias-free Linear/Conv2d layers (first-layer bias allowed) are homogeneous",
            )
        if leaf == "weight":
            weights[int(prefix)] = tuple(shape)
        elif leaf != "bias":
            return None
    if not weights:
        return None
    ordered = [(str(index), weights[index]) for index in sorted(weights)]
    first_key = ordered[0][0]
    for name, shape in tensor_shapes.items():
        prefix, _, leaf = name.rpartition(".")
        if leaf == "bias" and prefix != first_key:
            raise ArchitectureError(
                f"tensor {name} is a bias after the first layer, which breaks homogeneity",
                hint="retrain without it (bias=False) or remove it; only a first-layer bias is allowed",
            )
        if leaf == "bias" and prefix not in {key for key, _ in ordered}:
            raise ArchitectureError(f"tensor {name} has no matching weight")
        if leaf == "weight" and len(shape) not in (2, 4):
            raise ArchitectureError(
                f"tensor {name} with shape {tuple(shape)} is not a Linear or Conv2d weight",
                hint="normalization layers break homogeneity",
            )
    return ordered


def detect_mlp(tensor_shapes: dict[str, tuple[int, ...]], hints: dict[str, Any]) -> tuple[str, dict] | None:
    """Claim an nn.Sequential of Linear layers (MATH.md §1): every weight 2-D, widths chained."""
    layers = numbered_weight_layers(tensor_shapes)
    if layers is None or any(len(shape) != 2 for _, shape in layers):
        return None
    widths = [layers[0][1][1]]
    for key, (out_features, in_features) in layers:
        if in_features != widths[-1]:
            raise ArchitectureError(
                f"tensor {key}.weight expects {in_features} inputs but the previous layer has {widths[-1]} outputs"
            )
        widths.append(out_features)
    parse_activation(hints.get("activation") or "relu")
    config = {
        "widths": widths,
        "activation": hints.get("activation") or "relu",
        "first_layer_bias": f"{layers[0][0]}.bias" in tensor_shapes,
        "keys": [key for key, _ in layers],
    }
    return "mlp", config
