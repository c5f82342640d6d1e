"""Bias-free multilayer perceptron: Linear → σ → … → Linear, optional first-layer bias.

Config: ``widths`` [d, h_1, …, h_{L-1}, C], ``activation`` (relu | leaky_relu:SLOPE | identity),
``first_layer_bias`` (bool) and ``keys`` (the module name of each Linear, i.e. the state_dict
prefix, in network order: "0", "2", "4", … for an ``nn.Sequential`` with activations in between,
or any names such as "fc1", "layers.0", "encoder.fc").
Degree L = number of Linear layers (MATH.md §1). A first-layer bias is a weight on a constant
input and keeps homogeneity; later biases do not.
"""

from __future__ import annotations

from typing import Any

from kktembed.adapters.activations import activation_module, parse_activation
from kktembed.adapters.base import Adapter, UnitLayer, UnitSlice
from kktembed.adapters.layers import keyed_sequential, ordered_layers, weight_layers
from kktembed.adapters.schema import ConfigError, require_bool, require_ints, require_keys, require_name, require_object
from kktembed.errors import ArchitectureError


def sequential_keys(n_layers: int) -> list[str]:
    """Module names of the weight layers in an nn.Sequential with one activation in between."""
    return [str(2 * i) for i in range(n_layers)]


def activation_names(keys: list[str]) -> list[str]:
    """Names for the activation after each hidden weight layer that do not collide with ``keys``
    (``1`` between ``0`` and ``2`` as in an nn.Sequential, else ``act0``, ``act1``, …)."""
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
        steps = []
        for i, key in enumerate(keys):
            bias = bool(config.get("first_layer_bias")) and i == 0
            steps.append((key, nn.Linear(widths[i], widths[i + 1], bias=bias, dtype=torch.float64)))
            if i < len(keys) - 1:
                steps.append((act_names[i], activation_module(config["activation"])))
        return keyed_sequential(steps)

    def degree(self, config: dict[str, Any]) -> int:
        return len(config["widths"]) - 1

    def validate_config(self, config: dict[str, Any]) -> None:
        where = "mlp config"
        require_object(config, where)
        require_keys(config, ("widths", "activation"), where)
        widths = require_ints(config["widths"], f"{where} field 'widths'", min_length=2)
        parse_activation(config["activation"])
        require_bool(config.get("first_layer_bias", False), f"{where} field 'first_layer_bias'")
        if config.get("keys") is not None:
            keys = config["keys"]
            if not isinstance(keys, list) or len(keys) != len(widths) - 1:
                raise ConfigError(f"{where} field 'keys' must list {len(widths) - 1} layer names, got {keys!r}")
            for i, key in enumerate(keys):
                require_name(key, f"{where} field 'keys'[{i}]")

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


def detect_mlp(tensor_shapes: dict[str, tuple[int, ...]], hints: dict[str, Any]) -> tuple[str, dict] | None:
    """Claim a stack of Linear layers under any key names (MATH.md §1): every weight 2-D, widths
    chained, at most a first-layer bias (``kktembed.adapters.layers.ordered_layers``)."""
    scan = weight_layers(tensor_shapes)
    if scan is None or any(layer.is_conv for layer in scan.layers):
        return None
    layers = ordered_layers(scan, hints)
    activation = hints.get("activation") or "relu"
    parse_activation(activation)
    config = {
        "widths": [layers[0].inputs] + [layer.outputs for layer in layers],
        "activation": activation,
        "first_layer_bias": layers[0].has_bias,
        "keys": [layer.key for layer in layers],
    }
    return "mlp", config
