"""``kktembed convert``: interpret a plain checkpoint once and write a kktembed-native one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kktembed.cli.options import Activation, Arch, ArchConfig, Checkpoint, Data, DatasetName, Force, Json, Layers


def convert(
    checkpoint: Checkpoint,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the kktembed checkpoint (.safetensors).", show_default=False)],
    data: Data = None,
    dataset: DatasetName = None,
    activation: Activation = None,
    arch: Arch = None,
    arch_config: ArchConfig = None,
    layers: Layers = None,
    force: Force = False,
    json_output: Json = False,
) -> None:
    """Read a plain CHECKPOINT (a state_dict under any key names, a hub folder with
    model.safetensors or shards, DDP/torch.compile prefixes), interpret it once with --arch /
    --layers / --activation, check it (homogeneity of the degree; the outputs against the data's
    logits when the data carry them) and write it to --output with kktembed metadata: adapter,
    config (layer keys in order, activation, conv options), the data reference and the storage
    precision. Later commands then read it without guessing. The tensors keep their values; the
    input is never modified.

    Examples:

      kktembed convert trained.safetensors -o native.safetensors --data train.safetensors

      kktembed convert hub_folder/ -o native.safetensors --arch arch.toml --dataset digits-images:3,8

      kktembed convert model.safetensors -o native.safetensors --layers fc1,fc2,fc3 --activation leaky_relu:0.1
    """
    from kktembed.api import convert as convert_checkpoint
    from kktembed.cli.common import arch_spec
    from kktembed.report import Output

    spec = arch_spec(arch, arch_config, activation, layers)
    Output(json_output).convert(convert_checkpoint(checkpoint, output, arch=spec, data=data, dataset=dataset, force=force))
