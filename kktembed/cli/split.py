"""``kktembed split``: split neurons / channels and write the wider checkpoint with its embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kktembed.cli.options import Activation, ArchConfig, Checkpoint, Data, DatasetName, Force, Json


def split(
    checkpoint: Checkpoint,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the wide checkpoint (.safetensors).", show_default=False)],
    layer: Annotated[Optional[list[str]], typer.Option("--layer", help="Hidden layer to split (its module name, see `kktembed inspect`); repeat for several. Default: the only hidden layer.", show_default=False)] = None,
    neuron: Annotated[Optional[str], typer.Option("--neuron", help="Unit(s) to split, e.g. 3 or 0,4,7. Default: every unit of the layer.", show_default=False)] = None,
    ratio: Annotated[Optional[str], typer.Option("--ratio", help="Shares r_i = c_i² of the copies: 0.3 means (0.3, 0.7); 0.2,0.3,0.5 three copies. ≥ 0, sum 1.", show_default=False)] = None,
    copies: Annotated[Optional[int], typer.Option("--copies", help="M copies with equal shares 1/M (c_i = 1/√M, the paper's choice). Default: 2.", show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Widen each chosen layer to N units (equal shares; units 0, 1, … get copies in turn).", show_default=False)] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="Split strategy: isometric (MATH.md §4) or net2net (output-preserving control, not isometric), or a plugin's.")] = "isometric",
    data: Data = None,
    dataset: DatasetName = None,
    activation: Activation = None,
    arch_config: ArchConfig = None,
    force: Force = False,
    json_output: Json = False,
) -> None:
    """Split hidden neurons (MLP) or channels (CNN) of CHECKPOINT into copies and write the wider
    network to --output, with metadata that records the embedding T (parent sha256, strategy, and
    for every split unit its layer, index, copy positions and factors). The isometric strategy
    scales incoming and outgoing weights of copy i by c_i = √r_i: the output is unchanged and
    ‖Tθ‖ = ‖θ‖ (MATH.md §4). Splitting a split checkpoint records the composed map. The input is
    never modified; an existing output needs --force.

    Examples:

      kktembed split fixtures/mlp_gd_digits38.safetensors -o wide.safetensors --neuron 3 --ratio 0.3

      kktembed split fixtures/cnn_digits38.safetensors -o wide.safetensors --copies 2

      kktembed split model.safetensors -o wide.safetensors --layer 0 --layer 2 --width 64

      kktembed split model.safetensors -o control.safetensors --neuron 0 --strategy net2net
    """
    from kktembed.cli.common import architecture_hints, guard_output
    from kktembed.data import load_network_and_data
    from kktembed.errors import UsageError
    from kktembed.plugins import split_strategies
    from kktembed.report import Output
    from kktembed.splitting import build_embedding, parse_shares, plan_splits, write_split_checkpoint

    registry = split_strategies()
    if strategy not in registry:
        raise UsageError(f"unknown split strategy {strategy!r}", hint=f"known: {', '.join(sorted(registry))}")
    shares = parse_shares(ratio, copies)
    if width is not None and (ratio is not None or copies is not None):
        raise UsageError("--width chooses equal shares itself; drop --ratio/--copies")
    try:
        units = None if neuron is None else [int(part) for part in neuron.split(",")]
    except ValueError:
        raise UsageError(f"invalid --neuron {neuron!r}", hint="give unit indices like 3 or 0,4,7")
    guard_output(output, force, inputs=[checkpoint, data])
    network, dataset_object = load_network_and_data(checkpoint, data, dataset, architecture_hints(activation, arch_config), require_data=False)
    requests = plan_splits(network, layer or [], units, shares, width)
    embedding = build_embedding(network, requests, registry[strategy])
    wide = write_split_checkpoint(network, embedding, output, force)
    output_error = None
    if dataset_object is not None:
        output_error = float((wide.forward(dataset_object.x) - network.forward(dataset_object.x)).abs().max())
    widths_before = {u.name: u.width for u in network.adapter.units(network.config)}
    widths_after = {u.name: u.width for u in wide.adapter.units(wide.config)}
    summary = {
        "checkpoint": str(checkpoint),
        "output": str(output),
        "strategy": strategy,
        "n_split_units": len(requests),
        "splits": [split.to_dict() for split in embedding.splits],
        "widths_before": widths_before,
        "widths_after": widths_after,
        "n_parameters_before": network.n_parameters,
        "n_parameters_after": wide.n_parameters,
        "norm_before": network.norm(),
        "norm_after": wide.norm(),
        "coefficient_isometry_error": embedding.isometry_error,
        "output_error": output_error,
        "data": dataset_object.source if dataset_object is not None else None,
    }
    Output(json_output).split(summary)
