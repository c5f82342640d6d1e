"""``kktembed inspect``: what kktembed sees in a checkpoint."""

from __future__ import annotations

from kktembed.cli.options import Activation, ArchConfig, Checkpoint, Data, DatasetName, Json


def inspect(
    checkpoint: Checkpoint,
    data: Data = None,
    dataset: DatasetName = None,
    activation: Activation = None,
    arch_config: ArchConfig = None,
    json_output: Json = False,
) -> None:
    """Show the adapter, layers, hidden widths (splittable units), parameter counts, the declared
    degree L with its numerical check (scaling and Euler's identity), and a data summary.

    Examples:

      kktembed inspect fixtures/cnn_digits38.safetensors

      kktembed inspect plain.safetensors --arch-config cnn.json --dataset digits-images:3,8 --json
    """
    import torch

    from kktembed.cli.common import architecture_hints
    from kktembed.data import load_network_and_data
    from kktembed.homogeneity import homogeneity_report
    from kktembed.report import Output

    network, dataset = load_network_and_data(
        checkpoint, data, dataset, architecture_hints(activation, arch_config), require_data=False
    )
    probe = dataset.x[:512] if dataset is not None else torch.randn((64, *network.input_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    homogeneity = homogeneity_report(network, probe)
    summary = {
        "checkpoint": str(checkpoint),
        "adapter": network.adapter.name,
        "config": network.config,
        "activation": network.config.get("activation"),
        "degree": network.degree,
        "scaling_error": homogeneity.scaling_error,
        "euler_error": homogeneity.euler_error,
        "homogeneous": homogeneity.error <= 1e-9,
        "n_parameters": network.n_parameters,
        "theta_norm": network.norm(),
        "input_shape": list(network.input_shape),
        "output_dim": network.output_dim,
        "layers": network.adapter.layers(network.config),
        "parameters": {key: list(value.shape) for key, value in network.params.items()},
        "hidden_layers": [{"name": unit.name, "width": unit.width} for unit in network.adapter.units(network.config)],
        "data": dataset.summary() if dataset is not None else None,
    }
    Output(json_output).inspect(summary)
