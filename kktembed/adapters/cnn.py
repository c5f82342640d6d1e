"""Bias-free CNN: (Conv2d → σ → [pool]) × n → Flatten → (Linear → σ) × m → Linear.

Config: ``input_shape`` [C, H, W]; ``activation``; ``first_layer_bias``; ``conv``: a list of
``{key, out_channels, kernel_size [kh, kw], stride [sh, sw], padding [ph, pw], pool}`` with
``pool`` null or ``"avg:K"`` / ``"max:K"`` / ``"avg:K:S"``; ``linear``: a list of
``{key, out_features}``. Average and max pooling and flatten are positively 1-homogeneous, so
L = number of Conv2d + Linear layers (MATH.md §1). Channel j of the last conv owns the block of
H·W flatten columns [j·HW, (j+1)·HW) of the first Linear (MATH.md §4, Def. 4.10).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from kktembed.adapters.activations import activation_module, parse_activation
from kktembed.adapters.base import Adapter, UnitLayer, UnitSlice
from kktembed.adapters.mlp import numbered_weight_layers
from kktembed.errors import ArchitectureError

POOL_HELP = 'pool is null, "avg:K", "max:K" or "MODE:K:STRIDE"'


def parse_pool(spec: str | None) -> tuple[str, int, int] | None:
    """``"avg:2"`` → ("avg", 2, 2); None → None."""
    if spec in (None, "", "none"):
        return None
    parts = str(spec).split(":")
    try:
        mode, kernel = parts[0], int(parts[1])
        stride = int(parts[2]) if len(parts) > 2 else kernel
    except (IndexError, ValueError):
        raise ArchitectureError(f"invalid pooling {spec!r}", hint=POOL_HELP)
    if mode not in ("avg", "max") or kernel < 1 or stride < 1:
        raise ArchitectureError(f"invalid pooling {spec!r}", hint=POOL_HELP)
    return mode, kernel, stride


def _pair(value) -> list[int]:
    return [int(value), int(value)] if isinstance(value, (int, float)) else [int(v) for v in value]


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def spatial_sizes(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(H, W) after each conv block (conv + pooling)."""
    _, height, width = config["input_shape"]
    sizes = []
    for layer in config["conv"]:
        (kh, kw), (sh, sw), (ph, pw) = layer["kernel_size"], layer["stride"], layer["padding"]
        height, width = conv_output_size(height, kh, sh, ph), conv_output_size(width, kw, sw, pw)
        pool = parse_pool(layer.get("pool"))
        if pool:
            _, k, s = pool
            height, width = (height - k) // s + 1, (width - k) // s + 1
        if height < 1 or width < 1:
            raise ArchitectureError(f"conv layer {layer['key']} leaves no spatial extent for input {config['input_shape']}")
        sizes.append((height, width))
    return sizes


def flatten_features(config: dict[str, Any]) -> int:
    height, width = spatial_sizes(config)[-1]
    return config["conv"][-1]["out_channels"] * height * width


class CNNAdapter(Adapter):
    name = "cnn"
    description = "bias-free CNN (Conv2d with stride/padding, avg/max pooling, flatten, Linear layers)"

    def build(self, config: dict[str, Any]):
        import torch
        from torch import nn

        modules: OrderedDict[str, nn.Module] = OrderedDict()
        channels = config["input_shape"][0]
        for i, layer in enumerate(config["conv"]):
            modules[layer["key"]] = nn.Conv2d(
                channels,
                layer["out_channels"],
                kernel_size=tuple(layer["kernel_size"]),
                stride=tuple(layer["stride"]),
                padding=tuple(layer["padding"]),
                bias=bool(config.get("first_layer_bias")) and i == 0,
                dtype=torch.float64,
            )
            modules[f"conv_act{i}"] = activation_module(config["activation"])
            pool = parse_pool(layer.get("pool"))
            if pool:
                mode, kernel, stride = pool
                pool_class = nn.AvgPool2d if mode == "avg" else nn.MaxPool2d
                modules[f"pool{i}"] = pool_class(kernel, stride)
            channels = layer["out_channels"]
        modules["flatten"] = nn.Flatten()
        features = flatten_features(config)
        for i, layer in enumerate(config["linear"]):
            modules[layer["key"]] = nn.Linear(features, layer["out_features"], bias=False, dtype=torch.float64)
            if i < len(config["linear"]) - 1:
                modules[f"linear_act{i}"] = activation_module(config["activation"])
            features = layer["out_features"]
        return nn.Sequential(modules)

    def degree(self, config: dict[str, Any]) -> int:
        return len(config["conv"]) + len(config["linear"])

    def units(self, config: dict[str, Any]) -> list[UnitLayer]:
        conv, linear = config["conv"], config["linear"]
        height, width = spatial_sizes(config)[-1]
        layers = []
        for i, layer in enumerate(conv):
            incoming = [UnitSlice(f"{layer['key']}.weight", axis=0)]
            if i == 0 and config.get("first_layer_bias"):
                incoming.append(UnitSlice(f"{layer['key']}.bias", axis=0))
            if i + 1 < len(conv):
                outgoing = UnitSlice(f"{conv[i + 1]['key']}.weight", axis=1)
            else:
                outgoing = UnitSlice(f"{linear[0]['key']}.weight", axis=1, block=height * width)
            layers.append(UnitLayer(layer["key"], layer["out_channels"], tuple(incoming), (outgoing,)))
        for i, layer in enumerate(linear[:-1]):
            layers.append(
                UnitLayer(
                    layer["key"],
                    layer["out_features"],
                    (UnitSlice(f"{layer['key']}.weight", axis=0),),
                    (UnitSlice(f"{linear[i + 1]['key']}.weight", axis=1),),
                )
            )
        return layers

    def widen(self, config: dict[str, Any], layer: str, width: int) -> dict[str, Any]:
        conv = [dict(entry) for entry in config["conv"]]
        linear = [dict(entry) for entry in config["linear"]]
        for entry in conv:
            if entry["key"] == layer:
                entry["out_channels"] = width
                return {**config, "conv": conv, "linear": linear}
        for entry in linear[:-1]:
            if entry["key"] == layer:
                entry["out_features"] = width
                return {**config, "conv": conv, "linear": linear}
        hidden = [unit.name for unit in self.units(config)]
        raise ArchitectureError(f"{layer!r} is not a hidden layer of this CNN (hidden: {', '.join(hidden)})")


def _per_layer(value, n_layers: int, name: str) -> list:
    """A list gives one entry per conv layer; anything else applies to every conv layer."""
    if isinstance(value, list):
        if len(value) != n_layers:
            raise ArchitectureError(f"arch config {name!r} has {len(value)} entries for {n_layers} conv layers")
        return value
    return [value] * n_layers


def detect_cnn(tensor_shapes: dict[str, tuple[int, ...]], hints: dict[str, Any]) -> tuple[str, dict] | None:
    """Claim an nn.Sequential of Conv2d layers followed by Linear layers (MATH.md §1)."""
    layers = numbered_weight_layers(tensor_shapes)
    if layers is None or len(layers[0][1]) != 4:
        return None
    parse_activation(hints.get("activation") or "relu")
    n_conv = sum(1 for _, shape in layers if len(shape) == 4)
    if any(len(shape) != 4 for _, shape in layers[:n_conv]) or n_conv == len(layers):
        raise ArchitectureError("a CNN checkpoint needs Conv2d layers followed by at least one Linear layer")
    arch = hints.get("arch_config") or {}
    input_shape = arch.get("input_shape") or hints.get("input_shape")
    if input_shape is None:
        raise ArchitectureError(
            "a plain CNN checkpoint needs the input shape",
            hint='pass --data/--dataset, or "input_shape": [C, H, W] in --arch-config',
        )
    strides = _per_layer(arch.get("stride", 1), n_conv, "stride")
    paddings = _per_layer(arch.get("padding", 0), n_conv, "padding")
    pools = _per_layer(arch.get("pool"), n_conv, "pool")
    conv = []
    for i, (key, shape) in enumerate(layers[:n_conv]):
        conv.append(
            {
                "key": key,
                "out_channels": shape[0],
                "kernel_size": [shape[2], shape[3]],
                "stride": _pair(strides[i]),
                "padding": _pair(paddings[i]),
                "pool": pools[i],
            }
        )
    config = {
        "input_shape": [int(v) for v in input_shape],
        "activation": hints.get("activation") or "relu",
        "first_layer_bias": f"{layers[0][0]}.bias" in tensor_shapes,
        "conv": conv,
        "linear": [{"key": key, "out_features": shape[0]} for key, shape in layers[n_conv:]],
    }
    expected = flatten_features(config)
    actual = layers[n_conv][1][1]
    if expected != actual:
        raise ArchitectureError(
            f"tensor {layers[n_conv][0]}.weight has {actual} input features but the conv layers flatten to "
            f"{expected} for input shape {config['input_shape']}",
            hint="set stride, padding, pool or input_shape in --arch-config",
        )
    return "cnn", config
