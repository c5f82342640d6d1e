"""The plugin module named by the ``kktembed`` entry point: an adapter, a detection hook and a
split strategy, registered through the same hooks kktembed's built-ins use.

Squared-ReLU MLP: Φ(x) = W_L σ(W_{L−1} … σ(W_1 x)) with σ(z) = max(z, 0)², bias-free. Since
σ(cz) = c²σ(z), the pre-activations of layer l scale like c^{d_l} with d_1 = 1, d_{l+1} = 2 d_l + 1,
so the network is homogeneous of degree 2^L − 1 (3 for two layers): the degree is not the depth.
"""

from __future__ import annotations

from kktembed import hookimpl
from kktembed.adapters.base import Adapter, UnitLayer, UnitSlice
from kktembed.adapters.layers import keyed_sequential, ordered_layers, weight_layers
from kktembed.errors import ArchitectureError, UsageError
from kktembed.strategies.base import SplitStrategy

ACTIVATION = "squared_relu"


def _keys(config: dict) -> list[str]:
    return config.get("keys") or [str(2 * i) for i in range(len(config["widths"]) - 1)]


class SquaredReLUMLP(Adapter):
    name = "squared-relu-mlp"
    description = "bias-free MLP with σ(z) = relu(z)², degree 2^L − 1 (example plugin)"

    def build(self, config: dict):
        import torch
        from torch import nn

        class SquaredReLU(nn.Module):
            def forward(self, z):
                return torch.relu(z) ** 2

        keys, widths = _keys(config), config["widths"]
        steps = []
        for i, key in enumerate(keys):
            steps.append((key, nn.Linear(widths[i], widths[i + 1], bias=False, dtype=torch.float64)))
            if i < len(keys) - 1:
                steps.append((f"square{i}", SquaredReLU()))
        return keyed_sequential(steps)  # state_dict keys are the layer names, dotted ones too

    def degree(self, config: dict) -> int:
        return 2 ** (len(config["widths"]) - 1) - 1

    def units(self, config: dict) -> list[UnitLayer]:
        keys, widths = _keys(config), config["widths"]
        return [
            UnitLayer(keys[i], widths[i + 1], (UnitSlice(f"{keys[i]}.weight", axis=0),), (UnitSlice(f"{keys[i + 1]}.weight", axis=1),))
            for i in range(len(keys) - 1)
        ]

    def widen(self, config: dict, layer: str, width: int) -> dict:
        keys = _keys(config)
        if layer not in keys[:-1]:
            raise ArchitectureError(f"{layer!r} is not a hidden layer (hidden: {', '.join(keys[:-1])})")
        widths = list(config["widths"])
        widths[keys.index(layer) + 1] = width
        return {**config, "widths": widths, "keys": keys}

    def activation_degree(self, config: dict, layer: str) -> int:
        return 2


class PowerSplit(SplitStrategy):
    """Copy i scales incoming and outgoing weights by a_i = r_i^{1/(k+1)}: it contributes
    a_i · a_i^k = r_i of the unit's output, so Σ r_i = 1 preserves Φ for any k-homogeneous σ.
    For k = 1 this is the isometric split; for k > 1, Σ a_i² > 1 and the map is not an isometry
    (no split is both output-preserving and isometric then: Cauchy–Schwarz)."""

    name = "power"
    description = "a_i = r_i^(1/(k+1)) on both sides: output-preserving for σ(cz) = c^k σ(z) (example plugin)"
    isometric = False

    def scales(self, shares, activation_degree=1):
        if activation_degree < 1:
            raise UsageError(f"the power split needs an activation degree k ≥ 1, got {activation_degree}")
        factors = [share ** (1.0 / (activation_degree + 1)) for share in shares]
        return factors, factors


@hookimpl
def kktembed_register_adapters(register):
    register(SquaredReLUMLP())


@hookimpl
def kktembed_register_split_strategies(register):
    register(PowerSplit())


@hookimpl
def kktembed_detect_adapter(tensor_shapes, hints):
    """Claim a stack of bias-free Linear layers (any key names, ordered by kktembed's layer reader)
    when the user says --activation squared_relu."""
    if (hints.get("activation") or "").lower() != ACTIVATION:
        return None
    scan = weight_layers(tensor_shapes)
    if scan is None or any(layer.is_conv for layer in scan.layers):
        return None
    if any(layer.has_bias for layer in scan.layers):
        raise ArchitectureError("a squared-ReLU MLP must be bias-free (a bias breaks homogeneity of degree 2^L − 1)")
    layers = ordered_layers(scan, hints)
    widths = [layers[0].inputs] + [layer.outputs for layer in layers]
    return "squared-relu-mlp", {"widths": widths, "keys": [layer.key for layer in layers]}
