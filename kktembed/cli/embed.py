"""``kktembed embed``: embedding errors between a narrow and a wide checkpoint (MATH.md §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kktembed.cli.options import ActiveTol, Activation, ArchConfig, Data, DatasetName, Json, Norm, NormOption


def embed(
    narrow: Annotated[Path, typer.Argument(help="The narrow checkpoint θ.", show_default=False)],
    wide: Annotated[Path, typer.Argument(help="The wide checkpoint θ̃, written by `kktembed split` (or `trace`).", show_default=False)],
    data: Data = None,
    dataset: DatasetName = None,
    activation: Activation = None,
    arch_config: ArchConfig = None,
    norm: NormOption = Norm.l2,
    active_tol: ActiveTol = 0.1,
    tol: Annotated[float, typer.Option("--tol", help="Relative tolerance for ‖θ̃ − Tθ‖/‖Tθ‖ and max|Σc²−1| in the verdict.")] = 1e-10,
    json_output: Json = False,
) -> None:
    """Rebuild the map T from WIDE's metadata and measure how exactly WIDE = T(NARROW):
    ‖θ̃ − Tθ‖ (absolute, relative), |‖θ̃‖ − ‖θ‖|, the coefficient isometry error max|Σc_i² − 1|,
    the output error max_x |Φ̃(θ̃; x) − Φ(θ; x)| on the data, |γ̄(θ̃) − γ̄(θ)|, and the KKT check of
    both sides (ε, δ, support, ‖λ̃ − λ‖).

    Verdicts: isometric_embedding (θ̃ = Tθ and T an isometry, within --tol), not_isometric (θ̃ = Tθ
    but T is not an isometry, e.g. net2net: norm and KKT numbers change), not_embedded (θ̃ ≠ Tθ,
    e.g. after training the two apart); plus kkt_preserved yes/no. Data: --data/--dataset, else
    NARROW's reference, else WIDE's.

    Examples:

      kktembed split fixtures/mlp_kkt_gaussians.safetensors -o wide.safetensors --neuron 2 --ratio 0.3

      kktembed embed fixtures/mlp_kkt_gaussians.safetensors wide.safetensors

      kktembed embed narrow.safetensors wide.safetensors --dataset digits:3,8 --json
    """
    from kktembed.cli.common import architecture_hints, progress_steps
    from kktembed.checkpoint import load_network
    from kktembed.data import load_network_and_data
    from kktembed.embed import embed_networks
    from kktembed.errors import UsageError
    from kktembed.kkt.analysis import CheckOptions
    from kktembed.report import Output

    hints = architecture_hints(activation, arch_config)
    options = CheckOptions(norm=norm.value, active_tol=active_tol, profile=False)
    options.validate()
    with progress_steps(not json_output) as on_step:
        on_step("loading checkpoints and data")
        narrow_network, dataset_object = load_network_and_data(narrow, data, dataset, hints, require_data=False)
        if dataset_object is None:  # NARROW names no data: WIDE's reference, if any
            wide_network, dataset_object = load_network_and_data(wide, None, None, hints, require_data=False)
        else:  # the data are read once; plain CNNs take the input shape from them
            wide_network = load_network(wide, {**hints, "input_shape": tuple(dataset_object.x.shape[1:])})
        if dataset_object is None:
            raise UsageError("no training data: neither checkpoint names any", hint="pass --data FILE or --dataset NAME[:ARGS]")
        result = embed_networks(narrow_network, wide_network, dataset_object, options, tol, on_step)
    Output(json_output).embed(result, narrow=str(narrow), wide=str(wide), data=dataset_object.source)
