"""``kktembed reduce``: the narrowest network a checkpoint embeds (the inverse of split)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kktembed.cli.options import Activation, Arch, ArchConfig, Checkpoint, Data, DatasetName, Force, Json, Layers


def reduce(
    checkpoint: Checkpoint,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the narrow checkpoint here (.safetensors), with its map into CHECKPOINT recorded.", show_default=False)] = None,
    tol: Annotated[float, typer.Option("--tol", help="Relative tolerance on the directions of (incoming, outgoing) unit parameters; default near rounding.")] = 1e-10,
    layer: Annotated[Optional[list[str]], typer.Option("--layer", help="Hidden layer to reduce (repeat for several). Default: every hidden layer.", show_default=False)] = None,
    allow_non_isometric: Annotated[bool, typer.Option("--allow-non-isometric", help="Also merge units whose incoming parameters are collinear but outgoing ones are not in proportion (output-preserving, not an isometry; the recorded map says so).")] = False,
    profile: Annotated[bool, typer.Option("--profile/--no-profile", help="Show the width of each layer over tolerances 1e-12 … 1e-1 (how the network condenses).")] = True,
    data: Data = None,
    dataset: DatasetName = None,
    activation: Activation = None,
    arch: Arch = None,
    arch_config: ArchConfig = None,
    layers: Layers = None,
    force: Force = False,
    json_output: Json = False,
) -> None:
    """Find the narrowest network that CHECKPOINT embeds: in every hidden layer, units whose
    (incoming, outgoing) parameters are positive multiples of one direction, within --tol, are copies
    of one isometric split and are merged into one unit (c_i = ‖(u_i, v_i)‖ / (Σ_k ‖(u_k, v_k)‖²)^½), so
    that θ̃ = Tθ and ‖θ‖ = ‖θ̃‖; layers are swept again until none shrinks. Units with collinear
    incoming but disproportionate outgoing parameters (the inverse of net2net) are reported and, only
    with --allow-non-isometric, merged into a map that is not an isometry. Works through the
    adapters' unit descriptions: MLP neurons, CNN channels and plugin architectures. See
    docs/reduce.md.

    Reported: widths before → after, groups and their sizes, zero units (copies with share 0), the
    merge error ‖θ̃ − Tθ‖/‖θ̃‖, max|Σc_i² − 1|, whether T is an isometry, and with data the output
    error and the KKT check of both sides (equal to rounding for an isometric reduction).

    Examples:

      kktembed reduce wide.safetensors -o narrow.safetensors

      kktembed embed narrow.safetensors wide.safetensors

      kktembed reduce run/wide_final.safetensors --tol 1e-3 --no-profile --json
    """
    from kktembed.api import reduce as reduce_checkpoint
    from kktembed.cli.common import arch_spec, progress_steps
    from kktembed.report import Output
    from kktembed.validation import require_number

    require_number(tol, "--tol", low=0.0)
    spec = arch_spec(arch, arch_config, activation, layers)
    with progress_steps(not json_output) as on_step:
        on_step("grouping units")
        report = reduce_checkpoint(checkpoint, output, tol=tol, layer=layer, allow_non_isometric=allow_non_isometric, profile=profile, arch=spec, data=data, dataset=dataset, force=force)
    Output(json_output).reduce(report)
