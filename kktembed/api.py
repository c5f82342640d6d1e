"""The library API: every ``kktembed`` command is one of these functions, rendered.

Each function takes a checkpoint as a path (file or hub-style folder), a ``torch.nn.Module``, a
state_dict or an already loaded ``Network``, data as a path (``data=``), a named set
(``dataset="digits:3,8"``) or tensors (``x=``, ``y=`` and optionally ``logits=``), and an
architecture spec (``arch=``: a path to a JSON/TOML file, a dict, or an ``ArchSpec``) for what the
weights of a plain checkpoint cannot tell. Results are immutable and ``to_dict()`` gives the same
keys as the command's ``--json``. The user's module and files are never modified.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kktembed.archspec import ArchSpec
from kktembed.errors import UsageError
from kktembed.outputs import command_scope
from kktembed.validation import require_number


def _command(function):
    """Each API call is one command: the files it reads are protected from its outputs."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with command_scope():
            return function(*args, **kwargs)

    return wrapper


def _spec(arch: Any) -> ArchSpec:
    if arch is None:
        return ArchSpec()
    if isinstance(arch, ArchSpec):
        return arch
    if isinstance(arch, dict):
        return ArchSpec.from_mapping(arch, "arch")
    if isinstance(arch, (str, os.PathLike)):
        return ArchSpec.from_file(arch)
    raise UsageError(f"arch must be a spec file path, a dict or an ArchSpec, not {type(arch).__name__}")


def _data(data: Any, x: Any, y: Any, logits: Any) -> Any:
    if x is None and y is None:
        if logits is not None:
            raise UsageError("logits= needs x= and y=")
        return data
    if x is None or y is None or data is not None:
        raise UsageError("give data either as data= or as x= and y= (with optional logits=)")
    return (x, y) if logits is None else (x, y, logits)


def _network_and_data(source: Any, data: Any, dataset: str | None, arch: Any, require_data: bool):
    """(Network, Dataset or None), verified against reference outputs where there are any."""
    from kktembed.loading import load_data, load_network_and_data, validate_data, verify_reconstruction
    from kktembed.network import Network

    if not isinstance(source, Network):
        return load_network_and_data(source, data, dataset, _spec(arch), require_data)
    base = source.path if source.path is None or source.path.is_dir() else source.path.parent
    dataset_object = load_data(data, dataset, source.metadata, base, required=require_data)
    if dataset_object is not None:
        validate_data(source, dataset_object)
        if dataset_object.logits is not None:
            verify_reconstruction(source, dataset_object.x, dataset_object.logits, dataset_object.storage_dtype, f"the logits in {dataset_object.source}")
    return source, dataset_object


def _wide_network(wide: Any, dataset_object, arch: Any):
    """WIDE for embed and trace, once NARROW's data are known: a file is read with their input shape
    but not checked against them, so that a mismatched pair is reported as such (by the embedding
    lookup) rather than as a data error."""
    from kktembed.loading import load_network

    if isinstance(wide, (str, os.PathLike)):
        return load_network(wide, _spec(arch), input_shape=tuple(dataset_object.x.shape[1:]))
    return _network_and_data(wide, dataset_object, None, arch, require_data=False)[0]


@_command
def load(source: Any, *, arch: Any = None, data: Any = None, dataset: str | None = None, x: Any = None, y: Any = None, logits: Any = None):
    """A float64 ``Network`` from a path, folder, nn.Module or state_dict. With data, the network is
    checked against them (input shape, labels, and the reference outputs if any)."""
    network, _ = _network_and_data(source, _data(data, x, y, logits), dataset, arch, require_data=False)
    return network


@_command
def inspect(source: Any, *, arch: Any = None, data: Any = None, dataset: str | None = None, x: Any = None, y: Any = None, logits: Any = None):
    """Adapter, layers, hidden widths, parameter counts and the degree L with its numerical check
    (scaling and Euler's identity, on the data or on a fixed random probe)."""
    from kktembed.homogeneity import HOMOGENEITY_TOL, homogeneity_report
    from kktembed.loading import precision_floor
    from kktembed.results import InspectResult

    network, dataset_object = _network_and_data(source, _data(data, x, y, logits), dataset, arch, require_data=False)
    homogeneity = homogeneity_report(network, _homogeneity_probe(network, dataset_object))
    report = network.load_report
    return InspectResult(
        checkpoint=report.source if report is not None else str(network.path),
        adapter=network.adapter.name,
        config=network.config,
        activation=network.config.get("activation"),
        degree=network.degree,
        scaling_error=homogeneity.scaling_error,
        euler_error=homogeneity.euler_error,
        homogeneous=homogeneity.error <= HOMOGENEITY_TOL,
        n_parameters=network.n_parameters,
        theta_norm=network.norm(),
        input_shape=list(network.input_shape),
        output_dim=network.output_dim,
        layers=network.adapter.layers(network.config),
        parameters={key: list(value.shape) for key, value in network.params.items()},
        hidden_layers=[{"name": unit.name, "width": unit.width} for unit in network.adapter.units(network.config)],
        data=dataset_object.summary() if dataset_object is not None else None,
        storage_dtype=report.storage_dtype if report is not None else "float64",
        precision_floor=precision_floor(network),
        load=report.to_dict() if report is not None else None,
    )


PROBE_DATA_SAMPLES = 512  # inputs of the data on which inspect and convert check homogeneity
PROBE_RANDOM_SAMPLES = 64  # random inputs used instead when there are no data


def _homogeneity_probe(network, dataset_object):
    """Inputs for the homogeneity check: the data's first samples, else fixed random inputs (whose
    memory is checked first: the input shape comes from untrusted metadata)."""
    import torch

    from kktembed.network import ensure_forward_fits

    if dataset_object is not None:
        return dataset_object.x[:PROBE_DATA_SAMPLES]
    ensure_forward_fits(network.adapter, network.config, PROBE_RANDOM_SAMPLES, f"the homogeneity check on {PROBE_RANDOM_SAMPLES} random inputs of shape {list(network.input_shape)}")
    return torch.randn((PROBE_RANDOM_SAMPLES, *network.input_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@_command
def check(
    source: Any,
    *,
    arch: Any = None,
    data: Any = None,
    dataset: str | None = None,
    x: Any = None,
    y: Any = None,
    logits: Any = None,
    on_step: Callable[[str], None] | None = None,
    **options: Any,
):
    """The KKT analysis of the max-margin problem (``kktembed check``). ``options`` are the fields
    of ``kktembed.kkt.analysis.CheckOptions``: norm, active_tol, complementarity_weight, loss,
    kink_tol, kkt_tol, approx_tol, profile, max_candidates."""
    from kktembed.kkt.analysis import check_network

    check_options = check_options_from(options)
    network, dataset_object = _network_and_data(source, _data(data, x, y, logits), dataset, arch, require_data=True)
    return check_network(network, dataset_object, check_options, on_step)


def _options(kind, options: dict[str, Any], command: str):
    """``kind(**options)`` validated; an unknown option is a UsageError listing the known ones."""
    from dataclasses import fields

    known = {f.name for f in fields(kind)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown {command} option(s) {', '.join(unknown)}", hint=f"known: {', '.join(sorted(known))}")
    return kind(**options).validate()


def check_options_from(options: dict[str, Any]):
    """CheckOptions (torch-free) from keyword arguments, validated."""
    from kktembed.kkt.options import CheckOptions

    return _options(CheckOptions, options, "check")


@_command
def split(
    source: Any,
    output: str | os.PathLike | None = None,
    *,
    plan: Any = None,
    layer: list[str] | str | None = None,
    neuron: str | list[int] | int | None = None,
    ratio: str | list[float] | float | None = None,
    copies: int | None = None,
    width: int | None = None,
    strategy: str = "isometric",
    arch: Any = None,
    data: Any = None,
    dataset: str | None = None,
    x: Any = None,
    y: Any = None,
    force: bool = False,
):
    """Split hidden units (``kktembed split``): by a ``SplitPlan`` or a ``trace``-style SPEC string
    (``plan=``), or by the options. With ``output``, the wide checkpoint is written (atomically,
    recording the embedding); the wide ``Network`` and the map T are in the result either way."""
    from kktembed.loading import data_reference
    from kktembed.outputs import guard_output
    from kktembed.results import SplitResult
    from kktembed.splitting import SplitPlan, write_split_checkpoint

    if plan is None:
        plan = SplitPlan.from_options(
            layers=[layer] if isinstance(layer, str) else layer,
            neuron=str(neuron) if isinstance(neuron, int) else neuron,
            ratio=str(ratio) if isinstance(ratio, float) else ratio,
            copies=copies,
            width=width,
            strategy=strategy,
        )
    elif isinstance(plan, str):
        plan = SplitPlan.from_spec(plan)
    data = _data(data, x, y, None)
    if output is not None:
        guard_output(output, force, inputs=[source, data])
    network, dataset_object = _network_and_data(source, data, dataset, arch, require_data=False)
    embedding = plan.embedding(network, recorded=output is not None)
    if output is not None:
        wide = write_split_checkpoint(network, embedding, Path(output), force, {**data_reference(network, data, dataset, Path(output)), **_storage_note(network)})
    else:
        from kktembed.network import Network

        wide = Network(network.adapter, embedding.wide_config, embedding.apply(network.params))
    output_error = None
    if dataset_object is not None:
        output_error = float((wide.forward(dataset_object.x) - network.forward(dataset_object.x)).abs().max())
    return SplitResult(
        checkpoint=network.load_report.source if network.load_report is not None else str(network.path),
        output=str(output) if output is not None else None,
        strategy=plan.strategy,
        n_split_units=len(embedding.splits),
        splits=[unit_split.to_dict() for unit_split in embedding.splits],
        widths_before={u.name: u.width for u in network.adapter.units(network.config)},
        widths_after={u.name: u.width for u in wide.adapter.units(wide.config)},
        n_parameters_before=network.n_parameters,
        n_parameters_after=wide.n_parameters,
        norm_before=network.norm(),
        norm_after=wide.norm(),
        coefficient_isometry_error=embedding.isometry_error,
        output_error=output_error,
        data=dataset_object.source if dataset_object is not None else None,
        network=wide,
        embedding=embedding,
    )


def _storage_note(network) -> dict[str, str]:
    """Carry a coarser-than-float64 storage precision over to derived checkpoints."""
    from kktembed.checkpoint import STORAGE_DTYPE_KEY

    report = network.load_report
    return {STORAGE_DTYPE_KEY: report.storage_dtype} if report is not None and report.storage_dtype != "float64" else {}


@_command
def embed(
    narrow: Any,
    wide: Any,
    *,
    tol: float = 1e-10,
    arch: Any = None,
    data: Any = None,
    dataset: str | None = None,
    x: Any = None,
    y: Any = None,
    norm: str = "l2",
    active_tol: float = 0.1,
    solver: str = "auto",
    device: str | None = None,
    on_step: Callable[[str], None] | None = None,
):
    """Is WIDE the isometric embedding Tθ of NARROW (``kktembed embed``)? Data: given, else
    NARROW's reference, else WIDE's."""
    options = check_options_from({"norm": norm, "active_tol": active_tol, "solver": solver, "device": device, "profile": False})
    require_number(tol, "--tol", low=0.0)
    from kktembed.comparison import embed_networks  # torch: after the options are known to be valid

    data = _data(data, x, y, None)
    narrow_network, dataset_object = _network_and_data(narrow, data, dataset, arch, require_data=False)
    if dataset_object is None:
        wide_network, dataset_object = _network_and_data(wide, None, None, arch, require_data=False)
    else:
        wide_network = _wide_network(wide, dataset_object, arch)
    if dataset_object is None:
        raise UsageError("no training data: neither checkpoint names any", hint="pass --data FILE or --dataset NAME[:ARGS]")
    return embed_networks(narrow_network, wide_network, dataset_object, options, tol, on_step)


@_command
def trace(
    narrow: Any,
    *,
    split: Any = None,
    wide: Any = None,
    arch: Any = None,
    data: Any = None,
    dataset: str | None = None,
    x: Any = None,
    y: Any = None,
    out: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    force: bool = False,
    on_progress: Callable[[int], None] | None = None,
    **options: Any,
):
    """Train NARROW and its widening in lockstep (``kktembed trace``). ``split``: a SPEC string or
    ``SplitPlan``; or ``wide``: a checkpoint written by ``split``. ``options`` are the fields of
    ``kktembed.training_options.TraceOptions`` (steps, lr, loss, batch, different_batches, seed,
    every, kkt_every, optimizer, save_every, device, threads). ``out`` is a folder that receives, all
    at once, the series, both final checkpoints and, with ``save_every``, both networks every K
    steps; ``plot`` a PNG (inside ``out`` it is part of that set)."""
    from kktembed.comparison import resolve_embedding
    from kktembed.dynamics import ensure_training_fits, paired_training
    from kktembed.outputs import guard_folder, guard_output
    from kktembed.results import TraceReport
    from kktembed.splitting import SplitPlan

    if (split is None) == (wide is None):
        raise UsageError("give exactly one of --split SPEC and --wide WIDE")
    trace_options = trace_options_from(options)
    if trace_options.save_every and out is None:
        raise UsageError("--save-every writes checkpoints into --out; give --out DIR")
    plan = SplitPlan.from_spec(split) if isinstance(split, str) else split
    data = _data(data, x, y, None)
    inputs = [narrow, wide, data]
    if out is not None:
        guard_folder(out, force, inputs=inputs)
    plot_in_out = plot is not None and out is not None and Path(plot).resolve().parent == Path(out).resolve()
    if plot_in_out and not _is_free_name_in_trace_folder(Path(plot).name):
        raise UsageError(f"--plot {plot} would replace one of the files trace writes into --out", hint="give the plot another name, e.g. trace.png")
    if plot is not None and not plot_in_out:
        guard_output(plot, force, inputs=inputs)
    network, dataset_object = _network_and_data(narrow, data, dataset, arch, require_data=True)
    trace_options.validate(dataset_object.n_samples)
    wide_network = None
    if wide is not None:
        wide_network = _wide_network(wide, dataset_object, arch)
        embedding, _ = resolve_embedding(network, wide_network)
    else:
        embedding = plan.embedding(network, recorded=out is not None)
    ensure_training_fits(network, embedding.wide_config, trace_options.batch or dataset_object.n_samples)
    strategies = sorted({unit_split.strategy for unit_split in embedding.splits})
    label = "different batches" if trace_options.different_batches else ("SGD, identical batches" if trace_options.batch else "GD")
    name = Path(network.load_report.source).name if network.load_report is not None else "network"
    title = f"{name}: {label}, {trace_options.optimizer} lr {trace_options.lr:g}, {', '.join(strategies)} split"
    if out is None:
        result = paired_training(network, embedding, dataset_object, trace_options, wide_network, on_progress=on_progress)
        outputs, plot_path = None, _trace_plot(result, plot, title)
    else:
        result, outputs, plot_path = _trace_into_folder(network, embedding, dataset_object, trace_options, wide_network, on_progress, Path(out), data, dataset, plot if plot_in_out else None, title)
        if plot is not None and not plot_in_out:
            plot_path = _trace_plot(result, plot, title)
    return TraceReport(
        narrow=network.load_report.source if network.load_report is not None else str(network.path),
        data=dataset_object.source,
        strategies=strategies,
        n_splits=len(embedding.splits),
        summary=result.summary(),
        outputs=outputs,
        plot=plot_path,
        records=tuple(result.records),
        narrow_final=result.narrow,
        wide_final=result.wide,
    )


def _is_free_name_in_trace_folder(name: str) -> bool:
    """Whether a file of this name in trace's --out folder collides with none of trace's outputs."""
    import re

    from kktembed.dynamics import SERIES_FILES
    from kktembed.outputs import MANIFEST

    return name not in (*SERIES_FILES, MANIFEST) and not re.fullmatch(r"(narrow|wide)_step_\d+\.safetensors", name)


def _trace_plot(result, plot, title: str) -> str | None:
    if plot is None:
        return None
    from kktembed.plotting import plot_trace

    return str(plot_trace(result.records, plot, title))


def _trace_into_folder(network, embedding, dataset_object, trace_options, wide_network, on_progress, out: Path, data, dataset, plot, title):
    """Train with the outputs written into a partial folder that replaces ``out`` at the end."""
    from kktembed.checkpoint import STEP_KEY
    from kktembed.dynamics import paired_training, save_pair, snapshot_names, write_trace_outputs
    from kktembed.loading import data_reference
    from kktembed.network import Network
    from kktembed.outputs import atomic_folder

    reference = data_reference(network, data, dataset, out / "narrow_final.safetensors")
    written: list[Path] = []
    with atomic_folder(out) as partial:

        def on_snapshot(step, narrow_params, wide_params) -> None:
            narrow_at = network.with_params(narrow_params)
            wide_at = Network(network.adapter, embedding.wide_config, wide_params)
            names = snapshot_names(step, trace_options.steps)
            written.extend(save_pair(partial, names, narrow_at, wide_at, embedding, {**reference, STEP_KEY: str(step)}))

        result = paired_training(network, embedding, dataset_object, trace_options, wide_network, on_progress=on_progress, on_snapshot=on_snapshot)
        written += write_trace_outputs(result, embedding, partial, reference)
        plot_path = None
        if plot is not None:
            from kktembed.plotting import plot_trace

            plot_trace(result.records, partial / Path(plot).name, title)
            plot_path = str(out / Path(plot).name)
    return result, [str(out / path.name) for path in written], plot_path


@_command
def reduce(
    source: Any,
    output: str | os.PathLike | None = None,
    *,
    tol: float = 1e-10,
    layer: list[str] | str | None = None,
    allow_non_isometric: bool = False,
    profile: bool = True,
    arch: Any = None,
    data: Any = None,
    dataset: str | None = None,
    x: Any = None,
    y: Any = None,
    force: bool = False,
    solver: str = "auto",
):
    """The narrowest network that WIDE (``source``) embeds (``kktembed reduce``): units whose
    (incoming, outgoing) parameters are positive multiples of one direction, within the relative
    tolerance ``tol``, are merged (docs/reduce.md). With ``output`` the narrow checkpoint is written
    with its map into WIDE, so that ``embed NARROW WIDE`` verifies it. With data (given, or WIDE's
    reference), the output error and the KKT check of both sides are reported."""
    from kktembed.kkt.analysis import check_network
    from kktembed.loading import data_reference
    from kktembed.outputs import guard_output
    from kktembed.reduction import PROFILE_TOLERANCES, reduce_network, write_reduced_checkpoint
    from kktembed.results import ReduceReport

    require_number(tol, "--tol", low=0.0)
    check_options = check_options_from({"profile": False, "solver": solver})
    data = _data(data, x, y, None)
    if output is not None:
        guard_output(output, force, inputs=[source, data])
    wide, dataset_object = _network_and_data(source, data, dataset, arch, require_data=False)
    layers = [layer] if isinstance(layer, str) else layer
    result = reduce_network(wide, tol, layers, allow_non_isometric, PROFILE_TOLERANCES if profile else None)
    if output is not None:
        write_reduced_checkpoint(result, output, force, data_reference(wide, data, dataset, Path(output)))
    output_error = check_wide = check_narrow = None
    if dataset_object is not None:
        output_error = result.output_error(dataset_object.x)
        check_wide = check_network(wide, dataset_object, check_options)
        check_narrow = check_network(result.narrow, dataset_object, check_options)
    return ReduceReport(
        wide=wide.load_report.source if wide.load_report is not None else str(wide.path),
        output=str(output) if output is not None else None,
        data=dataset_object.source if dataset_object is not None else None,
        summary=result.to_dict(),
        output_error=output_error,
        check_wide=check_wide,
        check_narrow=check_narrow,
        network=result.narrow,
        embedding=result.embedding,
    )


def trace_options_from(options: dict[str, Any]):
    """TraceOptions (torch-free) from keyword arguments, validated."""
    from kktembed.training_options import TraceOptions

    return _options(TraceOptions, options, "trace")


@_command
def convert(
    source: Any,
    output: str | os.PathLike,
    *,
    arch: Any = None,
    data: Any = None,
    dataset: str | None = None,
    x: Any = None,
    y: Any = None,
    logits: Any = None,
    force: bool = False,
):
    """Interpret a plain checkpoint once (keys, layer order, activation, conv options), verify it
    (homogeneity; reference outputs when the data carry logits) and write a kktembed-native
    checkpoint whose metadata records adapter, config, data reference and storage precision."""
    from kktembed.checkpoint import save_checkpoint
    from kktembed.homogeneity import verify_homogeneity
    from kktembed.loading import data_reference
    from kktembed.outputs import guard_output
    from kktembed.results import ConvertResult

    data = _data(data, x, y, logits)
    guard_output(output, force, inputs=[source, data])
    network, dataset_object = _network_and_data(source, data, dataset, arch, require_data=False)
    homogeneity = verify_homogeneity(network, _homogeneity_probe(network, dataset_object))
    extra = {**data_reference(network, data, dataset, Path(output)), **_storage_note(network)}
    save_checkpoint(output, network, extra, force=force)
    report = network.load_report
    return ConvertResult(
        source=report.source,
        output=str(output),
        adapter=network.adapter.name,
        config=network.config,
        n_parameters=network.n_parameters,
        degree=network.degree,
        euler_error=homogeneity.euler_error,
        storage_dtype=report.storage_dtype,
        data=dataset_object.source if dataset_object is not None else None,
        reconstruction_verified=dataset_object is not None and (dataset_object.logits is not None or not isinstance(source, (str, os.PathLike))),
        load=report.to_dict(),
    )
