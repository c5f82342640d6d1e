"""``kktembed trace``: train a narrow network and its split in lockstep (docs/MATH.md §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kktembed.cli.options import Activation, Arch, ArchConfig, Checkpoint, Data, DatasetName, Device, Force, Json, Layers, Loss, Optimizer


def trace(
    narrow: Checkpoint,
    split: Annotated[Optional[str], typer.Option("--split", help='How to widen θ(0), in `split`\'s words: "copies=2", "layer=0;neuron=3;ratio=0.3", "width=8;strategy=net2net".', show_default=False)] = None,
    wide: Annotated[Optional[Path], typer.Option("--wide", help="A wide checkpoint written by `kktembed split` from NARROW: η(0) is its θ̃ and T its recorded map.", show_default=False)] = None,
    data: Data = None,
    dataset: DatasetName = None,
    steps: Annotated[int, typer.Option("--steps", help="Number of steps.")] = 1000,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (the same for both networks).")] = 0.1,
    loss: Annotated[Loss, typer.Option("--loss", help="ℓ in 𝓛 = mean over the batch of ℓ(q_k).")] = Loss.exp,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Mini-batch size (SGD, seeded, identical for both). Default: full batch (GD).", show_default=False)] = None,
    different_batches: Annotated[bool, typer.Option("--different-batches", help="Draw the wide network's batches independently: the control that breaks η = Tθ.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the batch stream.")] = 0,
    every: Annotated[int, typer.Option("--every", help="Record every K steps.")] = 10,
    kkt_every: Annotated[int, typer.Option("--kkt-every", help="Also record the relative KKT residual ε/‖θ̂‖ of both every K steps (0: never; costs a check each).")] = 0,
    optimizer: Annotated[Optimizer, typer.Option("--optimizer", help="gd: constant rate θ ← θ − lr∇𝓛; normalized: Lyu & Li's loss-scaled rate θ ← θ − (lr/𝓛)∇𝓛. Both networks take identical updates.")] = Optimizer.gd,
    save_every: Annotated[int, typer.Option("--save-every", help="Write both networks every K steps into --out (narrow_step_N / wide_step_N, with the step and the embedding recorded; 0: never).")] = 0,
    device: Annotated[Device, typer.Option("--device", help="Where to train, in float64: cpu, cuda, or auto (the GPU when there is one).")] = Device.cpu,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for series.csv, series.json, narrow_final.safetensors, wide_final.safetensors (and the --save-every checkpoints), written all at once.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG: trajectory error (log scale), losses, normalized margins.", show_default=False)] = None,
    activation: Activation = None,
    arch: Arch = None,
    arch_config: ArchConfig = None,
    layers: Layers = None,
    force: Force = False,
    json_output: Json = False,
) -> None:
    """Train NARROW from θ(0) and its widening from η(0) = Tθ(0) with identical updates
    (full-batch GD, or SGD with identical seeded mini-batches), float64, and record
    ‖η(t) − Tθ(t)‖ (absolute and relative), the losses and normalized margins of both. For an
    isometric split the error stays at rounding level (Thm 5.2); --different-batches shows it
    breaking. The final checkpoints carry the embedding, so `kktembed embed` and `check` run on them.

    Examples:

      kktembed trace fixtures/paper_mlp_leaky.safetensors --split copies=2 --steps 100000 --lr 0.1 --every 1000

      kktembed trace fixtures/paper_mlp_leaky.safetensors --split copies=2 --batch 16 --different-batches --steps 100000

      kktembed trace fixtures/mlp_gd_digits38.safetensors --split "neuron=0,1;ratio=0.3" --steps 500 --out run --plot run/trace.png

      kktembed trace fixtures/mlp_gd_digits38.safetensors --split copies=2 --optimizer normalized --lr 0.002 --steps 2000 --save-every 200 --out run
    """
    from kktembed.api import trace as trace_checkpoint
    from kktembed.api import trace_options_from
    from kktembed.cli.common import arch_spec
    from kktembed.cli.progress import progress_bar
    from kktembed.errors import UsageError
    from kktembed.report import Output
    from kktembed.splitting import SplitPlan

    if (split is None) == (wide is None):
        raise UsageError("give exactly one of --split SPEC and --wide WIDE")
    plan = SplitPlan.from_spec(split) if split is not None else None
    options = dict(
        steps=steps, lr=lr, loss=loss.value, batch=batch, different_batches=different_batches, seed=seed, every=every,
        kkt_every=kkt_every, optimizer=optimizer.value, save_every=save_every, device=device.value,
    )
    trace_options_from(options)
    spec = arch_spec(arch, arch_config, activation, layers)
    with progress_bar("training", total=steps, unit="steps") as advance:
        report = trace_checkpoint(
            narrow, split=plan, wide=wide, arch=spec, data=data, dataset=dataset, out=out, plot=plot, force=force, on_progress=advance, **options
        )
    Output(json_output).trace(report)
