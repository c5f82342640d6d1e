"""``kktembed trace``: train a narrow network and its split in lockstep (MATH.md §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kktembed.cli.options import Activation, ArchConfig, Checkpoint, Data, DatasetName, Force, Json, Loss


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
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for series.csv, series.json, narrow_final.safetensors, wide_final.safetensors.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG: trajectory error (log scale), losses, normalized margins.", show_default=False)] = None,
    activation: Activation = None,
    arch_config: ArchConfig = None,
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
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from kktembed.cli.common import architecture_hints, guard_output
    from kktembed.checkpoint import DATA_KEY, DATASET_KEY, load_network
    from kktembed.data import load_network_and_data
    from kktembed.dynamics import TraceOptions, paired_training, write_trace_outputs
    from kktembed.embed import resolve_embedding
    from kktembed.errors import UsageError
    from kktembed.report import Output
    from kktembed.splitting import plan_from_spec, relocated_data_reference

    if (split is None) == (wide is None):
        raise UsageError("give exactly one of --split SPEC and --wide WIDE")
    options = TraceOptions(steps, lr, loss.value, batch, different_batches, seed, every, kkt_every)
    if plot is not None:
        guard_output(plot, force, inputs=[narrow, wide, data])
    hints = architecture_hints(activation, arch_config)
    network, dataset_object = load_network_and_data(narrow, data, dataset, hints)
    options.validate(dataset_object.n_samples)
    wide_network = None
    if wide is not None:
        wide_network = load_network(wide, {**hints, "input_shape": tuple(dataset_object.x.shape[1:])})
        embedding, _ = resolve_embedding(network, wide_network)
    else:
        embedding = plan_from_spec(network, split)
    with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"), TimeRemainingColumn(), transient=True, disable=json_output) as progress:
        task = progress.add_task("trace", total=options.steps)
        result = paired_training(network, embedding, dataset_object, options, wide_network, on_progress=lambda step: progress.update(task, completed=step))
    summary = {"narrow": str(narrow), "data": dataset_object.source, "strategies": sorted({s.strategy for s in embedding.splits}), "n_splits": len(embedding.splits), **result.summary()}
    if out is not None:
        if data is not None:
            reference = {DATA_KEY: str(Path(data).resolve())}
        elif dataset is not None:
            reference = {DATASET_KEY: dataset}
        else:
            reference = relocated_data_reference(network.metadata, Path(narrow), Path(out) / "narrow_final.safetensors")
        summary["outputs"] = [str(path) for path in write_trace_outputs(result, embedding, out, reference, force)]
    if plot is not None:
        from kktembed.plotting import plot_trace

        label = "different batches" if different_batches else ("SGD, identical batches" if batch else "GD")
        summary["plot"] = str(plot_trace(result.records, plot, f"{Path(narrow).name}: {label}, lr {lr:g}, {', '.join(summary['strategies'])} split"))
    Output(json_output).trace(summary, result.records)
