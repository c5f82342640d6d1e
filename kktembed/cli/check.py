"""``kktembed check``: how close is a checkpoint, or every checkpoint of a run, to a KKT point of the
max-margin problem?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kktembed.cli.options import ActiveTol, Activation, Arch, ArchConfig, Data, DatasetName, Device, DeviceOption, Force, Json, Layers, Loss, Norm, NormOption, Solver, SolverOption

Checkpoints = Annotated[
    list[Path],
    typer.Argument(
        help="Checkpoint(s): .safetensors files, checkpoint folders, folders of checkpoints, or patterns like 'run/ckpt_*.safetensors'.",
        show_default=False,
    ),
]


def check(
    checkpoints: Checkpoints,
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
    complementarity_weight: Annotated[float, typer.Option("--complementarity-weight", help="μ ≥ 0: adds μ Σ λ_k (q_k − 1) to the objective.")] = 0.0,
    loss: Annotated[Loss, typer.Option("--loss", help="Loss ℓ for the alignment β = cos∠(θ, −∇𝓛).")] = Loss.exp,
    kink_tol: Annotated[float, typer.Option("--kink-tol", help="A pre-activation z is at a ReLU kink if |z| ≤ tol · max|z| of its layer.")] = 1e-6,
    kkt_tol: Annotated[float, typer.Option("--kkt-tol", help="Verdict kkt if ε/‖θ̂‖ and δ/Σλ are both ≤ this.")] = 1e-6,
    approx_tol: Annotated[float, typer.Option("--approx-tol", help="Verdict approximate if both are ≤ this; otherwise not_kkt.")] = 0.1,
    profile: Annotated[bool, typer.Option("--profile/--no-profile", help="Also solve (ℓ2) over the τ ladder 1e-6 … 1 and show how ε and δ trade (one checkpoint).")] = True,
    max_candidates: Annotated[int, typer.Option("--max-candidates", help="Largest candidate set solved (bounds Gram memory, n_c²).")] = 5000,
    save_multipliers: Annotated[Optional[Path], typer.Option("--save-multipliers", help="Write λ (zero outside the candidates) and constraint_index to this .safetensors file (one checkpoint).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write one row per checkpoint to this .csv, .jsonl or .parquet file, row by row.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="PNG of γ̄, ε/‖θ̂‖, δ/Σλ and β against the step, over the checkpoints.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep the rows of --out whose checkpoint content and options match; check only the rest.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Check checkpoints in N local worker processes.")] = 1,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Send the checkpoints to a running Dask distributed scheduler, e.g. tcp://10.0.0.5:8786 (pip install 'kktembed[distributed]').", show_default=False)] = None,
    force: Force = False,
    fail_above: Annotated[Optional[float], typer.Option("--fail-above", help="Exit with status 3 when ε/‖θ̂‖ exceeds this (or the data are not separable).", show_default=False)] = None,
    json_output: Json = False,
) -> None:
    """Measure how close a checkpoint is to a KKT point of the max-margin problem
    min ½‖θ‖² s.t. q_k(θ) ≥ 1 (docs/MATH.md §2–3).

    θ is rescaled to θ̂ = θ / q_min^{1/L}; the multipliers λ ≥ 0 minimise ‖θ̂ − Σ λ_k ∇q_k(θ̂)‖ over
    the candidates. Reported: degree and Euler-check error, margins, normalized margin
    γ̄ = q_min/‖θ‖^L, ε (absolute and relative to ‖θ̂‖), δ = Σ λ_k (q_k − 1) (sum, max, and δ/Σλ),
    support size, alignment β, support constraints near a ReLU kink, solver, status and time.
    A checkpoint is a .safetensors file or a folder (model.safetensors or shards); a plain one is
    read with any key names (--arch / --layers / --activation say what weights cannot).

    Several checkpoints (a training run) are checked in one process, the data read once: one row
    each (step, accuracy, q_min, γ̄, β, candidates, support, ε/‖θ̂‖, δ/Σλ, verdict, seconds), sorted
    by step (metadata `step`/`kktembed.step`, else the number in the file name, else the position).
    A checkpoint that fails becomes a row with its error; the others go on.

    Verdicts: kkt (ε/‖θ̂‖ ≤ --kkt-tol and δ/Σλ ≤ --kkt-tol), approximate (both ≤ --approx-tol),
    not_kkt, not_separable (q_min ≤ 0: no KKT analysis). Exit status: 0 when every checkpoint was
    analysed (whatever the verdict), 1 on bad input or when some checkpoint of a run failed, 2 on
    bad usage, 3 with --fail-above when exceeded.

    Examples:

      kktembed check fixtures/mlp_gd_digits38.safetensors

      kktembed check model.safetensors --dataset digits:3,8 --active-tol 0.05 --json

      kktembed check model.safetensors --data train.safetensors --norm linf --save-multipliers lambda.safetensors

      kktembed check run/ckpt_*.safetensors --data train.safetensors --out run.csv --plot run.png

      kktembed check run/ --out run.csv --resume --workers 2
    """
    from kktembed.api import check_options_from
    from kktembed.cli.common import arch_spec
    from kktembed.errors import UsageError
    from kktembed.outputs import guard_outputs
    from kktembed.runs import expand_checkpoints
    from kktembed.validation import require_integer, require_number

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
        solver=solver.value,
        device=device.value,
    )
    check_options_from(options)
    spec = arch_spec(arch, arch_config, activation, layers)
    if fail_above is not None:
        require_number(fail_above, "--fail-above", low=0.0)
    require_integer(workers, "--workers", low=1, high=1024)
    paths = expand_checkpoints(checkpoints, skip=[data])
    outputs = [output for output in (save_multipliers, out, plot) if output is not None]
    guard_outputs(outputs, force, inputs=[*paths, data], resumed=[out] if resume and out is not None else [])
    run_options = out is not None or plot is not None or resume or workers > 1 or scheduler is not None
    if len(paths) == 1 and not run_options:
        _check_one(paths[0], spec, data, dataset, options, save_multipliers, force, fail_above, json_output)
        return
    if save_multipliers is not None:
        raise UsageError("--save-multipliers writes the multipliers of one checkpoint; give one checkpoint")
    options["profile"] = False  # a run's rows do not show the profile; do not pay for it
    _check_run(paths, spec, data, dataset, options, out, plot, resume, force, workers, scheduler, fail_above, json_output)


def _check_one(checkpoint, spec, data, dataset, options, save_multipliers, force, fail_above, json_output) -> None:
    from kktembed.api import check as check_checkpoint
    from kktembed.checkpoint import write_safetensors
    from kktembed.cli.common import progress_steps
    from kktembed.report import Output

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
            {"format": "pt", "kktembed.checkpoint": str(checkpoint), "kktembed.norm": options["norm"], "kktembed.active_tol": str(options["active_tol"])},
            force=force,
        )
    if fail_above is not None and (result.relative_stationarity_residual is None or result.relative_stationarity_residual > fail_above):
        raise typer.Exit(3)


def _check_run(paths, spec, data, dataset, options, out, plot, resume, force, workers, scheduler, fail_above, json_output) -> None:
    from kktembed.cli.progress import progress_bar
    from kktembed.report import Output
    from kktembed.runs import check_run

    with progress_bar("checking", total=len(paths), unit="checkpoints") as advance:
        done = [0]

        def on_row(row) -> None:
            done[0] += 1
            advance(done[0])

        result = check_run(
            paths, arch=spec, data=data, dataset=dataset, out=out, resume=resume, force=force, workers=workers, scheduler=scheduler,
            on_total=lambda n: advance(0, total=n), on_row=on_row, **options,
        )
    plot_path = None
    if plot is not None:
        from kktembed.plotting import plot_check_run

        plot_path = plot_check_run(result.rows, plot)
    Output(json_output).check_run(result, out=out, plot=plot_path)
    if result.n_failed:
        raise typer.Exit(1)
    exceeded = any(row.relative_stationarity_residual is None or row.relative_stationarity_residual > fail_above for row in result.rows) if fail_above is not None else False
    if exceeded:
        raise typer.Exit(3)
