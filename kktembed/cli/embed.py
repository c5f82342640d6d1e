"""``kktembed embed``: embedding errors between a narrow and a wide checkpoint (docs/MATH.md §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kktembed.validation import require_number

from kktembed.cli.options import ActiveTol, Activation, Arch, ArchConfig, Data, DatasetName, Device, DeviceOption, Json, Layers, Norm, NormOption, Solver, SolverOption


def embed(
    narrow: Annotated[Path, typer.Argument(help="The narrow checkpoint θ.", show_default=False)],
    wide: Annotated[Path, typer.Argument(help="The wide checkpoint θ̃, written by `kktembed split` (or `trace`).", show_default=False)],
    data: Data = None,
    dataset: DatasetName = None,
    activation: Activation = None,
    arch: Arch = None,
    arch_config: ArchConfig = None,
    layers: Layers = None,
    norm: NormOption = Norm.l2,
    active_tol: ActiveTol = 0.1,
    solver: SolverOption = Solver.auto,
    device: DeviceOption = Device.cpu,
    tol: Annotated[float, typer.Option("--tol", help="Relative tolerance for ‖θ̃ − Tθ‖/‖Tθ‖ and max|Σc²−1| in the verdict.")] = 1e-10,
    json_output: Json = False,
) -> None:
    """Find the map T from NARROW to WIDE and measure how exactly WIDE = T(NARROW). T comes from
    WIDE's record (written by split or trace), from NARROW's record (written by reduce), or, when
    no record fits (a plain file, permuted units), by matching units; the report says which.
    Measured:
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

      kktembed embed narrow.safetensors plain_wide.safetensors --dataset digits:3,8
    """
    from kktembed.api import embed as embed_checkpoints
    from kktembed.cli.common import arch_spec, progress_steps
    from kktembed.report import Output

    require_number(tol, "--tol", low=0.0)
    spec = arch_spec(arch, arch_config, activation, layers)
    with progress_steps(not json_output) as on_step:
        on_step("loading checkpoints and data")
        result = embed_checkpoints(narrow, wide, arch=spec, data=data, dataset=dataset, norm=norm.value, active_tol=active_tol, solver=solver.value, device=device.value, tol=tol, on_step=on_step)
    Output(json_output).embed(result)
