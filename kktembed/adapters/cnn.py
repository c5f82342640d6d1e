"""Bias-free CNN: (Conv2d → σ → [pool]) × n → Flatten → (Linear → σ) × m → Linear.

Config: ``input_shape`` [C, H, W]; ``activation``; ``first_layer_bias``; ``conv``: a list of
``{key, out_channels, kernel_size [kh, kw], stride [sh, sw], padding [ph, pw], pool}`` with
``pool`` null or ``"avg:K"`` / ``"max:K"`` / ``"avg:K:S"``; ``linear``: a list of
``{key, out_features}``. Average and max pooling and flatten are positively 1-homogeneous, so
L = number of Conv2d + Linear layers (MATH.md §1). Channel j of the last conv owns the block of
H·W flatten columns [j·HW, (j+1)·HW) of the first Linear (MATH.md §4, Def. 4.10).
"""

from __future__ import annotations

from typing import Any

from kktembed.adapters.activations import activation_module, parse_activation
from kktembed.adapters.base import Adapter, UnitLayer, UnitSlice
from kktembed.adapters.layers import keyed_sequential, ordered_layers, weight_layers
from kktembed.adapters.schema import ConfigError, require_bool, require_int, require_ints, require_keys, require_name, require_object
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
    """3 → [3, 3]; [3] → [3, 3]; [2, 3] → [2, 3]."""
    values = [value] if isinstance(value, (int, float)) else list(value)
    return [int(v) for v in (values * 2 if len(values) == 1 else values)]


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

        steps: list[tuple[str, nn.Module]] = []
        channels = config["input_shape"][0]
        for i, layer in enumerate(config["conv"]):
            conv = nn.Conv2d(
                channels,
                layer["out_channels"],
                kernel_size=tuple(layer["kernel_size"]),
                stride=tuple(layer["stride"]),
                padding=tuple(layer["padding"]),
                bias=bool(config.get("first_layer_bias")) and i == 0,
                dtype=torch.float64,
            )
            steps += [(layer["key"], conv), (f"conv_act{i}", activation_module(config["activation"]))]
            pool = parse_pool(layer.get("pool"))
            if pool:
                mode, kernel, stride = pool
                pool_class = nn.AvgPool2d if mode == "avg" else nn.MaxPool2d
                steps.append((f"pool{i}", pool_class(kernel, stride)))
            channels = layer["out_channels"]
        steps.append(("flatten", nn.Flatten()))
        features = flatten_features(config)
        for i, layer in enumerate(config["linear"]):
            steps.append((layer["key"], nn.Linear(features, layer["out_features"], bias=False, dtype=torch.float64)))
            if i < len(config["linear"]) - 1:
                steps.append((f"linear_act{i}", activation_module(config["activation"])))
            features = layer["out_features"]
        return keyed_sequential(steps)

    def degree(self, config: dict[str, Any]) -> int:
        return len(config["conv"]) + len(config["linear"])

    def validate_config(self, config: dict[str, Any]) -> None:
        where = "cnn config"
        require_object(config, where)
        require_keys(config, ("input_shape", "activation", "conv", "linear"), where)
        require_ints(config["input_shape"], f"{where} field 'input_shape'", length=3)
        parse_activation(config["activation"])
        require_bool(config.get("first_layer_bias", False), f"{where} field 'first_layer_bias'")
        for name in ("conv", "linear"):
            if not isinstance(config[name], list) or not config[name]:
                raise ConfigError(f"{where} field {name!r} must be a non-empty list of layers")
        for i, layer in enumerate(config["conv"]):
            at = f"{where} conv[{i}]"
            require_object(layer, at)
            require_keys(layer, ("key", "out_channels", "kernel_size", "stride", "padding"), at)
            require_name(layer["key"], f"{at} field 'key'")
            require_int(layer["out_channels"], f"{at} field 'out_channels'")
            require_ints(layer["kernel_size"], f"{at} field 'kernel_size'", length=2)
            require_ints(layer["stride"], f"{at} field 'stride'", length=2)
            require_ints(layer["padding"], f"{at} field 'padding'", length=2, low=0)
            parse_pool(layer.get("pool"))
        for i, layer in enumerate(config["linear"]):
            at = f"{where} linear[{i}]"
            require_object(layer, at)
            require_keys(layer, ("key", "out_features"), at)
            require_name(layer["key"], f"{at} field 'key'")
            require_int(layer["out_features"], f"{at} field 'out_features'")

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
    """Claim Conv2d layers followed by Linear layers under any key names (MATH.md §1); what weights
    cannot tell (stride, padding, pooling, input shape) comes from the architecture spec."""
    scan = weight_layers(tensor_shapes)
    if scan is None or not any(layer.is_conv for layer in scan.layers):
        return None
    activation = hints.get("activation") or "relu"
    parse_activation(activation)
    if all(layer.is_conv for layer in scan.layers):
        raise ArchitectureError("a CNN checkpoint needs Conv2d layers followed by at least one Linear layer")
    arch = hints.get("arch_config") or {}
    input_shape = arch.get("input_shape") or hints.get("input_shape")
    if input_shape is None:
        raise ArchitectureError(
            "a plain CNN checkpoint needs the input shape",
            hint='pass --data/--dataset, or "input_shape": [C, H, W] in the --arch spec (or --arch-config)',
        )
    layers = ordered_layers(scan, {**hints, "input_shape": input_shape})
    convs = [layer for layer in layers if layer.is_conv]
    strides = _per_layer(arch.get("stride", 1), len(convs), "stride")
    paddings = _per_layer(arch.get("padding", 0), len(convs), "padding")
    pools = _per_layer(arch.get("pool"), len(convs), "pool")
    conv = [
        {
            "key": layer.key,
            "out_channels": layer.outputs,
            "kernel_size": [layer.shape[2], layer.shape[3]],
            "stride": _pair(strides[i]),
            "padding": _pair(paddings[i]),
            "pool": pools[i],
        }
        for i, layer in enumerate(convs)
    ]
    config = {
        "input_shape": [int(v) for v in input_shape],
        "activation": activation,
        "first_layer_bias": layers[0].has_bias,
        "conv": conv,
        "linear": [{"key": layer.key, "out_features": layer.outputs} for layer in layers[len(convs):]],
    }
    first_linear = layers[len(convs)]
    expected = flatten_features(config)
    if expected != first_linear.inputs:
        raise ArchitectureError(
            f"tensor {first_linear.key}.weight has {first_linear.inputs} input features but the conv layers flatten to "
            f"{expected} for input shape {config['input_shape']}",
            hint="set stride, padding, pool or input_shape in the --arch spec (or --arch-config)",
        )
    return "cnn", config
