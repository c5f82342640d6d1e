"""``kktembed split``: split neurons / channels and write the wider checkpoint with its embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kktembed.cli.options import Activation, Arch, ArchConfig, Checkpoint, Data, DatasetName, Force, Json, Layers


def split(
    checkpoint: Checkpoint,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the wide checkpoint (.safetensors).", show_default=False)],
    layer: Annotated[Optional[list[str]], typer.Option("--layer", help="Hidden layer to split (its module name, see `kktembed inspect`); repeat for several. Default: the only hidden layer.", show_default=False)] = None,
    neuron: Annotated[Optional[str], typer.Option("--neuron", help="Unit(s) to split, e.g. 3 or 0,4,7. Default: every unit of the layer.", show_default=False)] = None,
    ratio: Annotated[Optional[str], typer.Option("--ratio", help="Shares r_i = c_i² of the copies: 0.3 means (0.3, 0.7); 0.2,0.3,0.5 three copies. ≥ 0, sum 1.", show_default=False)] = None,
    copies: Annotated[Optional[int], typer.Option("--copies", help="M copies with equal shares 1/M (c_i = 1/√M, the paper's choice). Default: 2.", show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Widen each chosen layer to N units (equal shares; units 0, 1, … get copies in turn).", show_default=False)] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="Split strategy: isometric (docs/MATH.md §4) or net2net (output-preserving control, not isometric), or a plugin's.")] = "isometric",
    data: Data = None,
    dataset: DatasetName = None,
    activation: Activation = None,
    arch: Arch = None,
    arch_config: ArchConfig = None,
    layers: Layers = None,
    force: Force = False,
    json_output: Json = False,
) -> None:
    """Split hidden neurons (MLP) or channels (CNN) of CHECKPOINT into copies and write the wider
    network to --output, with metadata that records the embedding T (parent sha256, strategy, and
    for every split unit its layer, index, copy positions and factors). The isometric strategy
    scales incoming and outgoing weights of copy i by c_i = √r_i: the output is unchanged and
    ‖Tθ‖ = ‖θ‖ (docs/MATH.md §4). Splitting a split checkpoint records the composed map. The input is
    never modified; an existing output needs --force.

    Examples:

      kktembed split fixtures/mlp_gd_digits38.safetensors -o wide.safetensors --neuron 3 --ratio 0.3

      kktembed split fixtures/cnn_digits38.safetensors -o wide.safetensors --copies 2

      kktembed split model.safetensors -o wide.safetensors --layer 0 --layer 2 --width 64

      kktembed split model.safetensors -o control.safetensors --neuron 0 --strategy net2net
    """
    from kktembed.api import split as split_checkpoint
    from kktembed.cli.common import arch_spec
    from kktembed.report import Output
    from kktembed.splitting import SplitPlan

    plan = SplitPlan.from_options(layers=layer, neuron=neuron, ratio=ratio, copies=copies, width=width, strategy=strategy)
    spec = arch_spec(arch, arch_config, activation, layers)
    result = split_checkpoint(checkpoint, output, plan=plan, arch=spec, data=data, dataset=dataset, force=force)
    Output(json_output).split(result)
