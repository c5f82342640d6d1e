"""``kktembed inspect``: what kktembed sees in a checkpoint."""

from __future__ import annotations

from kktembed.cli.options import Activation, Arch, ArchConfig, Checkpoint, Data, DatasetName, Json, Layers


def inspect(
    checkpoint: Checkpoint,
    data: Data = None,
    dataset: DatasetName = None,
    activation: Activation = None,
    arch: Arch = None,
    arch_config: ArchConfig = None,
    layers: Layers = None,
    json_output: Json = False,
) -> None:
    """Show the adapter, layers, hidden widths (splittable units), parameter counts, the storage
    precision, the declared degree L with its numerical check (scaling and Euler's identity), how a
    plain checkpoint was read (prefixes stripped, layer order), and a data summary.

    Examples:

      kktembed inspect fixtures/cnn_digits38.safetensors

      kktembed inspect plain.safetensors --arch cnn.json --dataset digits-images:3,8 --json

      kktembed inspect model.safetensors --layers fc1,fc2,fc3
    """
    from kktembed.api import inspect as inspect_checkpoint
    from kktembed.cli.common import arch_spec
    from kktembed.report import Output

    spec = arch_spec(arch, arch_config, activation, layers)
    Output(json_output).inspect(inspect_checkpoint(checkpoint, arch=spec, data=data, dataset=dataset))
