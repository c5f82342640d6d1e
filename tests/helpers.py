"""Small random networks for property tests."""

from __future__ import annotations

import torch

from kktembed.network import Network
from kktembed.plugins import adapters

MLP_CONFIG = {"widths": [5, 7, 6, 1], "activation": "relu", "first_layer_bias": True}
MULTICLASS_CONFIG = {"widths": [5, 7, 3], "activation": "leaky_relu:0.1", "first_layer_bias": False}
CNN_CONFIG = {
    "input_shape": [2, 6, 6],
    "activation": "relu",
    "first_layer_bias": True,
    "conv": [
        {"key": "0", "out_channels": 3, "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "pool": "avg:2"},
        {"key": "3", "out_channels": 2, "kernel_size": [2, 2], "stride": [1, 1], "padding": [0, 0], "pool": "max:2"},
    ],
    "linear": [{"key": "7", "out_features": 4}, {"key": "9", "out_features": 1}],
}


def random_network(adapter: str, config: dict, seed: int = 0) -> Network:
    generator = torch.Generator().manual_seed(seed)
    module = adapters()[adapter].build(config)
    params = {key: torch.randn(value.shape, generator=generator, dtype=torch.float64) for key, value in module.state_dict().items()}
    return Network(adapters()[adapter], config, params)


def random_inputs(network: Network, n: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *network.input_shape), generator=generator, dtype=torch.float64)


def random_labels(n: int, n_outputs: int, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if n_outputs == 1:
        return torch.where(torch.rand(n, generator=generator) > 0.5, 1, -1)
    return torch.randint(0, n_outputs, (n,), generator=generator)
