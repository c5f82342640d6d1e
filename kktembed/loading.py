"""Loading, in one place: a checkpoint and its data become a float64 Network and a Dataset that fit
together, verified.

A checkpoint is a safetensors file, a hub-style folder (``model.safetensors`` or shards), a
``torch.nn.Module`` or a state_dict. Its interpretation:
  1. wrapper prefixes (``module.`` from DistributedDataParallel, ``_orig_mod.`` from torch.compile,
     nested in any order) are stripped when every key carries them, and reported;
  2. kktembed's own metadata (``kktembed.adapter`` / ``kktembed.config``) says what the network is;
     otherwise the ``kktembed_detect_adapter`` hook claims the tensors, helped by the architecture
     spec (``kktembed.archspec``): layer order, activation, conv stride/padding/pooling, input shape;
  3. the config is checked against the tensors' shapes before any module of its size exists;
  4. tensors become float64 (NaN/Inf refused); their storage precision is kept, because it bounds
     how small a KKT residual can meaningfully be (unit roundoff u; see ``precision_floor``).
Data come from ``--data`` (a file with x, y and optionally logits), ``--dataset NAME[:ARGS]``,
tensors given in Python, or the checkpoint's own reference. When the data carry ``logits`` (or the
checkpoint is an ``nn.Module``, whose own forward is the reference), the rebuilt network's outputs
are compared with them first, and a network that computes something else is refused.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kktembed.archspec import ArchSpec
from kktembed.checkpoint import ADAPTER_KEY, CONFIG_KEY, DATA_KEY, DATASET_KEY, STORAGE_DTYPE_KEY, read_stored_checkpoint
from kktembed.data import Dataset, coarsest_dtype, load_data_file, load_named_dataset, make_dataset
from kktembed.errors import ArchitectureError, CheckpointError, DataError, KktembedWarning, UsageError
from kktembed.network import Network, ensure_forward_fits
from kktembed.validation import parse_json

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
LOW_PRECISION = ("float16", "bfloat16")


class ReconstructionError(ArchitectureError):
    """The rebuilt network's outputs differ from the reference outputs (the data's logits)."""


@dataclass(frozen=True)
class LoadReport:
    """How a network was read: from where, which files, what was stripped or inferred, and the
    precision it was stored in."""

    source: str
    files: tuple[str, ...]
    native: bool  # kktembed metadata said what the network is (nothing was guessed)
    adapter: str
    storage_dtype: str
    unit_roundoff: float
    stripped_prefixes: tuple[str, ...] = ()
    layer_order: tuple[str, ...] | None = None
    spec: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "files": list(self.files),
            "native": self.native,
            "adapter": self.adapter,
            "storage_dtype": self.storage_dtype,
            "unit_roundoff": self.unit_roundoff,
            "stripped_prefixes": list(self.stripped_prefixes),
            "layer_order": list(self.layer_order) if self.layer_order is not None else None,
            "spec": self.spec,
        }


@dataclass(frozen=True)
class _Source:
    """A checkpoint before interpretation."""

    label: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    path: Path | None = None
    spec: ArchSpec | None = None  # found beside the files, or read off an nn.Module
    module: Any = None  # the user's nn.Module, the reference for verification


def unit_roundoff(dtype_name: str) -> float:
    """u = eps/2 of a floating dtype: float64 1.1e-16, float32 6.0e-8, float16 4.9e-4, bfloat16 3.9e-3."""
    return float(torch.finfo(getattr(torch, dtype_name)).eps) / 2


def precision_floor(network: Network) -> float:
    """The smallest relative stationarity residual ε/‖θ̂‖ that the stored θ can support: θ is known
    to a relative u per entry, which moves θ̂ by up to u‖θ̂‖ and each ∇q_k, a product of L − 1
    layers, by about (L − 1)u relative: L·u in all."""
    return network.degree * network.unit_roundoff


def strip_wrapper_prefixes(tensors: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Remove ``module.`` / ``_orig_mod.`` while every key starts with the same one of them."""
    stripped: list[str] = []
    while tensors:
        prefix = next((p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in tensors)), None)
        if prefix is None:
            break
        tensors = {key[len(prefix):]: value for key, value in tensors.items()}
        stripped.append(prefix)
    return tensors, tuple(stripped)


def _read_source(source: Any) -> _Source:
    if isinstance(source, torch.nn.Module):
        tensors = {key: value.detach().clone() for key, value in source.state_dict().items()}
        return _Source(f"<{type(source).__name__} module>", tensors, spec=_module_spec(source), module=source)
    if isinstance(source, Mapping):
        if not all(isinstance(value, torch.Tensor) for value in source.values()):
            raise CheckpointError("a state_dict must map names to torch tensors")
        return _Source("<state_dict>", {key: value.detach().clone() for key, value in source.items()})
    if not isinstance(source, (str, os.PathLike)):
        raise UsageError(f"cannot load a network from a {type(source).__name__}", hint="give a path, a folder, an nn.Module or a state_dict")
    stored = read_stored_checkpoint(source)
    if set(stored.tensors) <= {"x", "y", "logits"} and {"x", "y"} <= set(stored.tensors):
        raise CheckpointError(f"{source} holds a data set (x, y), not a checkpoint", hint="pass it with --data")
    folder_spec = ArchSpec.from_file(stored.spec) if stored.spec else None
    return _Source(str(source), stored.tensors, stored.metadata, stored.files, Path(source), folder_spec)


def _module_spec(module: torch.nn.Module) -> ArchSpec:
    """What a module's structure says that its state_dict cannot: the activation (when it is one
    ReLU / LeakyReLU kind throughout), conv strides, paddings and pools, and the registration order
    of its weight layers (used only when it chains)."""
    from torch import nn

    activations = {
        "relu" if isinstance(m, nn.ReLU) else f"leaky_relu:{m.negative_slope}"
        for m in module.modules()
        if isinstance(m, (nn.ReLU, nn.LeakyReLU))
    }
    strides, paddings, pools, layers = [], [], [], []
    for name, child in module.named_modules():
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            layers.append(name)
        if isinstance(child, nn.Conv2d) and not isinstance(child.padding, str):
            strides.append(list(child.stride))
            paddings.append(list(child.padding))
            pools.append(None)
        elif isinstance(child, (nn.AvgPool2d, nn.MaxPool2d)) and pools and pools[-1] is None:
            kernel, stride = child.kernel_size, child.stride or child.kernel_size
            if isinstance(kernel, int) and isinstance(stride, int):
                mode = "avg" if isinstance(child, nn.AvgPool2d) else "max"
                pools[-1] = f"{mode}:{kernel}" if stride == kernel else f"{mode}:{kernel}:{stride}"
    data: dict[str, Any] = {"layers": layers} if layers else {}
    if len(activations) == 1:
        data["activation"] = activations.pop()
    if strides:
        data.update(stride=strides, padding=paddings, pool=pools)
    return ArchSpec.from_mapping(data, f"the {type(module).__name__} module")


def _native_config(metadata: dict[str, str], label: str) -> dict[str, Any]:
    config = parse_json(metadata.get(CONFIG_KEY, ""), f"{label}: metadata {CONFIG_KEY}", CheckpointError)
    if not isinstance(config, dict):
        raise CheckpointError(f"{label}: metadata {CONFIG_KEY} must be a JSON object, got {type(config).__name__}")
    return config


def _detect(source: _Source, spec: ArchSpec, input_shape: tuple[int, ...] | None):
    """(adapter, config, layer order) for a plain checkpoint, through the detection hook."""
    from kktembed.plugins import adapters, get_plugin_manager

    shapes = {key: tuple(tensor.shape) for key, tensor in source.tensors.items()}
    hints = spec.hints(input_shape)
    detected = get_plugin_manager().hook.kktembed_detect_adapter(tensor_shapes=shapes, hints=hints)
    if detected is None:
        listed = ", ".join(sorted(shapes)[:6]) + (", …" if len(shapes) > 6 else "")
        raise ArchitectureError(
            f"{source.label}: no adapter recognises these tensors ({listed})",
            hint="save bias-free Linear / Conv2d layers (any names), pass an --arch spec, or install an adapter plugin",
        )
    name, config = detected
    registry = adapters()
    if name not in registry:
        raise ArchitectureError(f"{source.label}: detection returned unknown adapter {name!r}")
    if spec.adapter is not None and spec.adapter != name:
        raise ArchitectureError(f"{source.label}: the spec names adapter {spec.adapter!r} but the tensors were claimed by {name!r}")
    order = config.get("keys") or [layer["key"] for layer in config.get("conv", []) + config.get("linear", [])] or None
    return registry[name], config, tuple(order) if order else None


def _resolve(source: _Source, spec: ArchSpec, input_shape: tuple[int, ...] | None):
    """(adapter, config, layer order or None) from metadata or detection."""
    from kktembed.plugins import adapters

    if ADAPTER_KEY not in source.metadata:
        combined = spec.or_else(source.spec)
        if source.module is not None and spec.layers is None and combined.layers is not None:
            try:
                return _detect(source, combined, input_shape)
            except ArchitectureError:  # the module's registration order does not chain: the shapes decide
                combined = replace(combined, layers=None)
        return _detect(source, combined, input_shape)
    registry, name = adapters(), source.metadata[ADAPTER_KEY]
    if name not in registry:
        raise ArchitectureError(
            f"{source.label}: unknown adapter {name!r} (known: {', '.join(sorted(registry))})",
            hint="install the plugin that provides it (see `kktembed plugins`)",
        )
    config = _native_config(source.metadata, source.label)
    stored = config.get("activation")
    if spec.activation and stored is not None and spec.activation != stored:
        raise ArchitectureError(
            f"{source.label}: the checkpoint records activation {stored!r}, --activation says {spec.activation!r}",
            hint="drop --activation for checkpoints written by kktembed",
        )
    if spec.adapter and spec.adapter != name:
        raise ArchitectureError(f"{source.label}: the checkpoint records adapter {name!r}, the spec says {spec.adapter!r}")
    return registry[name], config, None


def _as_float64(tensors: dict[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{label}: tensor {key} has dtype {tensor.dtype}, expected floating point parameters")
        tensor = tensor.to(torch.float64)
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{label}: tensor {key} has {bad} NaN/Inf entries", hint="the checkpoint is unusable; save a finite one")
        converted[key] = tensor
    return converted


def _storage_dtype(tensors: dict[str, torch.Tensor], source: _Source) -> str:
    """The coarsest of the tensors' dtypes and the precision the metadata records for θ's origin."""
    recorded = source.metadata.get(STORAGE_DTYPE_KEY)
    if recorded is None:
        return coarsest_dtype(tensors.values())
    if recorded not in ("float64", "float32", "float16", "bfloat16"):
        raise CheckpointError(f"{source.label}: metadata {STORAGE_DTYPE_KEY} is {recorded!r}, not a floating dtype name")
    return coarsest_dtype([*tensors.values(), torch.empty(0, dtype=getattr(torch, recorded))])


def _network(source: _Source, spec: ArchSpec, input_shape: tuple[int, ...] | None) -> Network:
    tensors, stripped = (source.tensors, ()) if ADAPTER_KEY in source.metadata else strip_wrapper_prefixes(source.tensors)
    source = replace(source, tensors=tensors)
    adapter, config, order = _resolve(source, spec, input_shape)
    try:
        adapter.validate_config(config)
    except ArchitectureError as exc:
        raise CheckpointError(f"{source.label}: {exc.message}", hint="the checkpoint's kktembed.config metadata is malformed" if ADAPTER_KEY in source.metadata else exc.hint)
    adapter.check_shapes(config, {key: tuple(t.shape) for key, t in tensors.items()})
    ensure_forward_fits(adapter, config, 1, f"{source.label}: a forward pass of one input sample of shape {list(adapter.input_shape(config))}")
    storage = _storage_dtype(tensors, source)
    report = LoadReport(
        source=source.label,
        files=tuple(str(file) for file in source.files),
        native=ADAPTER_KEY in source.metadata,
        adapter=adapter.name,
        storage_dtype=storage,
        unit_roundoff=unit_roundoff(storage),
        stripped_prefixes=stripped,
        layer_order=order,
        spec=spec.or_else(source.spec).source,
    )
    if storage in LOW_PRECISION:
        warnings.warn(
            f"{source.label} is stored in {storage} (unit roundoff {report.unit_roundoff:.1e}): it is analysed in float64, "
            f"but residuals below about {adapter.degree(config) * report.unit_roundoff:.1e} relative are not meaningful",
            KktembedWarning,
            stacklevel=3,
        )
    return Network(adapter, config, _as_float64(tensors, source.label), source.path, source.metadata, report)


def load_network(source: Any, spec: ArchSpec | None = None, *, hints: dict | None = None, input_shape: tuple[int, ...] | None = None) -> Network:
    """A float64 Network from a path (file or folder), an nn.Module or a state_dict (module
    docstring). ``spec``: the architecture spec (or ``hints``, the older dict form); ``input_shape``:
    one sample's shape from the data (plain CNNs need it)."""
    spec = spec if spec is not None else ArchSpec.from_hints(hints)
    return _network(_read_source(source), spec, input_shape)


def load_data(
    data: Any = None,
    dataset: str | None = None,
    metadata: dict[str, str] | None = None,
    base: Path | None = None,
    required: bool = True,
) -> Dataset | None:
    """The data: ``data`` (a file path, a Dataset, or a tuple (x, y) / (x, y, logits)), else the
    named ``dataset``, else the checkpoint's own reference (``metadata``, relative to ``base``).
    None when nothing names any and ``required`` is false."""
    if data is not None and dataset is not None:
        raise UsageError("--data and --dataset are mutually exclusive")
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise UsageError("data given as a tuple must be (x, y) or (x, y, logits)")
        return make_dataset(*data[:2], source="<tensors>", logits=data[2] if len(data) == 3 else None)
    if data is not None:
        return load_data_file(data)
    if dataset is not None:
        return load_named_dataset(dataset)
    metadata = metadata or {}
    if DATA_KEY in metadata:
        return load_data_file((base or Path.cwd()) / metadata[DATA_KEY])
    if DATASET_KEY in metadata:
        return load_named_dataset(metadata[DATASET_KEY])
    if required:
        raise UsageError("no training data: the checkpoint names none", hint="pass --data FILE or --dataset NAME[:ARGS]")
    return None


def validate_data(network: Network, dataset: Dataset) -> None:
    """Raise DataError unless the inputs fit the network and the labels fit its outputs."""
    expected = network.input_shape
    if tuple(dataset.x.shape[1:]) != expected:
        raise DataError(f"data {dataset.source} has inputs of shape {tuple(dataset.x.shape[1:])}, the network expects {expected}")
    ensure_forward_fits(network.adapter, network.config, dataset.n_samples, f"a forward pass over the {dataset.n_samples:,} samples of {dataset.source}")
    n_outputs = network.output_dim
    labels = torch.unique(dataset.y)
    if n_outputs == 1:
        if not set(labels.tolist()) <= {-1, 1}:
            raise DataError(f"a single-output network needs labels ±1, data {dataset.source} has {sorted(labels.tolist())[:6]}")
    elif labels.min() < 0 or labels.max() >= n_outputs:
        raise DataError(
            f"a {n_outputs}-output network needs class labels 0..{n_outputs - 1}, data {dataset.source} has "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    if dataset.logits is not None and dataset.logits.shape[1] != n_outputs:
        raise DataError(f"data {dataset.source} has logits with {dataset.logits.shape[1]} outputs, the network has {n_outputs}")


def reconstruction_tolerance(network: Network, reference_roundoff: float) -> float:
    """Allowed max|Φ(θ; x) − reference| relative to max|reference|: 4 (L + √fan-in) u for the
    coarsest unit roundoff u of the weights, the inputs and the reference outputs (rounding of L
    layers of dot products of length up to fan-in; a wrong activation or pooling is off by O(1))."""
    fan_in = max((math.prod(t.shape[1:]) for t in network.params.values() if t.ndim >= 2), default=1)
    u = max(network.unit_roundoff, reference_roundoff)
    return 4 * (network.degree + math.sqrt(fan_in)) * u


def verify_reconstruction(network: Network, x: torch.Tensor, reference: torch.Tensor, reference_dtype: str, what: str) -> float:
    """Compare Φ(θ; x) with ``reference`` (n × outputs); ReconstructionError naming the largest
    difference when it exceeds ``reconstruction_tolerance``. Returns the relative difference."""
    with torch.no_grad():
        outputs = network.forward(x)
    reference = reference.to(torch.float64).reshape(outputs.shape)
    scale = float(reference.abs().max()) or 1.0
    difference = (outputs - reference).abs()
    worst = int(difference.argmax())
    sample, output = divmod(worst, outputs.shape[1])
    relative = float(difference.max()) / scale
    tolerance = reconstruction_tolerance(network, unit_roundoff(reference_dtype))
    if not relative <= tolerance:
        raise ReconstructionError(
            f"the rebuilt {network.adapter.name} network does not reproduce {what}: largest difference "
            f"{float(difference.max()):.3g} at sample {sample}, output {output} ({float(reference[sample, output]):.6g} vs "
            f"rebuilt {float(outputs[sample, output]):.6g}); relative {relative:.2e} > tolerance {tolerance:.1e} for {reference_dtype} storage",
            hint="the activation or architecture differs from the trained network: check --activation and the --arch spec "
            "(layers, stride, padding, pool)",
        )
    return relative


def _verify(network: Network, dataset: Dataset, module: Any) -> None:
    if dataset.logits is not None:
        verify_reconstruction(network, dataset.x, dataset.logits, dataset.storage_dtype, f"the logits in {dataset.source}")
    if module is not None and not any(m.training and isinstance(m, torch.nn.Dropout) for m in module.modules()):
        parameter = next(module.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.float64
        with torch.no_grad():
            reference = module(dataset.x.to(device=parameter.device if parameter is not None else "cpu", dtype=dtype)).detach().cpu()
        verify_reconstruction(network, dataset.x, reference.reshape(reference.shape[0], -1), str(dtype).removeprefix("torch."), "the module's own outputs")


def load_network_and_data(
    source: Any,
    data: Any = None,
    dataset: str | None = None,
    spec: ArchSpec | None = None,
    require_data: bool = True,
    *,
    hints: dict | None = None,
) -> tuple[Network, Dataset | None]:
    """Read a checkpoint and its data, build the network (plain CNNs take the input shape from the
    data), check that the two fit together and, where reference outputs exist, that the network
    computes them. With ``require_data=False`` a missing data reference yields None."""
    spec = spec if spec is not None else ArchSpec.from_hints(hints)
    checkpoint = _read_source(source)
    base = checkpoint.path.parent if checkpoint.path is not None and not checkpoint.path.is_dir() else checkpoint.path
    dataset_object = load_data(data, dataset, checkpoint.metadata, base, required=require_data)
    input_shape = tuple(dataset_object.x.shape[1:]) if dataset_object is not None else None
    network = _network(checkpoint, spec, input_shape)
    if dataset_object is not None:
        validate_data(network, dataset_object)
        _verify(network, dataset_object, checkpoint.module)
    return network, dataset_object


def data_reference(network: Network, data: Any, dataset: str | None, output: Path) -> dict[str, str]:
    """The data reference to record in a checkpoint written to ``output`` from ``network``: the
    --data file (relative to the output's folder), the --dataset name, or the network's own
    reference carried over (rewritten relative to the output); empty when there is none."""
    folder = Path(output).resolve().parent
    if isinstance(data, (str, os.PathLike)):
        return {DATA_KEY: os.path.relpath(Path(data).resolve(), folder)}
    if dataset is not None:
        return {DATASET_KEY: dataset}
    if DATA_KEY in network.metadata and network.path is not None:
        base = network.path if network.path.is_dir() else network.path.parent
        return {DATA_KEY: os.path.relpath((base / network.metadata[DATA_KEY]).resolve(), folder)}
    if DATASET_KEY in network.metadata:
        return {DATASET_KEY: network.metadata[DATASET_KEY]}
    return {}
