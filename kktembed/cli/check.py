"""``kktembed check``: how close is a checkpoint to a KKT point of the max-margin problem?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kktembed.validation import require_number

from kktembed.cli.options import ActiveTol, Activation, Arch, ArchConfig, Checkpoint, Data, DatasetName, Force, Json, Layers, Loss, Norm, NormOption


def check(
    checkpoint: Checkpoint,
    data: Data = None,
    dataset: DatasetName = None,
    activation: Activation = None,
    arch: Arch = None,
    arch_config: ArchConfig = None,
    layers: Layers = None,
    norm: NormOption = Norm.l2,
    active_tol: ActiveTol = 0.1,
    complementarity_weight: Annotated[float, typer.Option("--complementarity-weight", help="μ ≥ 0: adds μ Σ λ_k (q_k − 1) to the objective.")] = 0.0,
    loss: Annotated[Loss, typer.Option("--loss", help="Loss ℓ for the alignment β = cos∠(θ, −∇𝓛).")] = Loss.exp,
    kink_tol: Annotated[float, typer.Option("--kink-tol", help="A pre-activation z is at a ReLU kink if |z| ≤ tol · max|z| of its layer.")] = 1e-6,
    kkt_tol: Annotated[float, typer.Option("--kkt-tol", help="Verdict kkt if ε/‖θ̂‖ and δ/Σλ are both ≤ this.")] = 1e-6,
    approx_tol: Annotated[float, typer.Option("--approx-tol", help="Verdict approximate if both are ≤ this; otherwise not_kkt.")] = 0.1,
    profile: Annotated[bool, typer.Option("--profile/--no-profile", help="Also solve (ℓ2) over the τ ladder 1e-6 … 1 and show how ε and δ trade.")] = True,
    max_candidates: Annotated[int, typer.Option("--max-candidates", help="Largest candidate set solved (bounds Gram memory, n_c²).")] = 5000,
    save_multipliers: Annotated[Optional[Path], typer.Option("--save-multipliers", help="Write λ (zero outside the candidates) and constraint_index to this .safetensors file.", show_default=False)] = None,
    force: Force = False,
    fail_above: Annotated[Optional[float], typer.Option("--fail-above", help="Exit with status 3 when ε/‖θ̂‖ exceeds this (or the data are not separable).", show_default=False)] = None,
    json_output: Json = False,
) -> None:
    """Measure how close CHECKPOINT is to a KKT point of the max-margin problem
    min ½‖θ‖² s.t. q_k(θ) ≥ 1 (docs/MATH.md §2–3).

    θ is rescaled to θ̂ = θ / q_min^{1/L}; the multipliers λ ≥ 0 minimise ‖θ̂ − Σ λ_k ∇q_k(θ̂)‖ over
    the candidates. Reported: degree and Euler-check error, margins, normalized margin
    γ̄ = q_min/‖θ‖^L, ε (absolute and relative to ‖θ̂‖), δ = Σ λ_k (q_k − 1) (sum, max, and δ/Σλ),
    support size, alignment β, support constraints near a ReLU kink, solver, status and time.
    CHECKPOINT is a .safetensors file or a folder (model.safetensors or shards); a plain one is read
    with any key names (--arch / --layers / --activation say what weights cannot).

    Verdicts: kkt (ε/‖θ̂‖ ≤ --kkt-tol and δ/Σλ ≤ --kkt-tol), approximate (both ≤ --approx-tol),
    not_kkt, not_separable (q_min ≤ 0: no KKT analysis). Exit status 0 whatever the verdict,
    1 on bad input, 2 on bad usage, 3 with --fail-above when exceeded.

    Examples:

      kktembed check fixtures/mlp_gd_digits38.safetensors

      kktembed check model.safetensors --dataset digits:3,8 --active-tol 0.05 --json

      kktembed check model.safetensors --data train.safetensors --norm linf --save-multipliers lambda.safetensors

      kktembed check hub_folder/ --arch arch.toml --data train.safetensors
    """
    from kktembed.api import check as check_checkpoint
    from kktembed.api import check_options_from
    from kktembed.checkpoint import write_safetensors
    from kktembed.cli.common import arch_spec, progress_steps
    from kktembed.outputs import guard_output
    from kktembed.report import Output

    options = dict(
        norm=norm.value,
        active_tol=active_tol,
        complementarity_weight=complementarity_weight,
        loss=loss.value,
        kink_tol=kink_tol,
        kkt_tol=kkt_tol,
        approx_tol=approx_tol,
        profile=profile,
        max_candidates=max_candidates,
    )
    check_options_from(options)
    spec = arch_spec(arch, arch_config, activation, layers)
    if fail_above is not None:
        require_number(fail_above, "--fail-above", low=0.0)
    if save_multipliers is not None:
        guard_output(save_multipliers, force, inputs=[checkpoint, data])
    with progress_steps(not json_output) as on_step:
        on_step("loading checkpoint and data")
        result = check_checkpoint(checkpoint, arch=spec, data=data, dataset=dataset, on_step=on_step, **options)
    Output(json_output).check(result)
    if save_multipliers is not None and result.multipliers is None:
        typer.echo(f"Warning: {save_multipliers} not written: no multipliers exist (verdict {result.verdict})", err=True)
    elif save_multipliers is not None:
        write_safetensors(
            save_multipliers,
            {"lambda": result.multipliers, "constraint_index": result.constraint_index},
            {"format": "pt", "kktembed.checkpoint": str(checkpoint), "kktembed.norm": norm.value, "kktembed.active_tol": str(active_tol)},
            force=force,
        )
    if fail_above is not None and (result.relative_stationarity_residual is None or result.relative_stationarity_residual > fail_above):
        raise typer.Exit(3)
