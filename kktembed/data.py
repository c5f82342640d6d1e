"""Training data: safetensors files with ``x`` and ``y``, or named data sets from plugins.

A data file holds ``x`` (n × d, or n × C × H × W) and ``y``: ±1 labels for a single-output network,
class indices 0..C−1 for C outputs. ``--dataset NAME[:ARGS]`` names a set registered through the
``kktembed_register_datasets`` hook (``kktembed plugins`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kktembed.checkpoint import DATA_KEY, DATASET_KEY, build_network, read_checkpoint, read_safetensors, write_safetensors
from kktembed.errors import CheckpointError, DataError, UsageError
from kktembed.network import Network


@dataclass
class Dataset:
    x: torch.Tensor  # float64, n × input shape
    y: torch.Tensor  # int64, ±1 (binary) or 0..C−1
    source: str

    @property
    def n_samples(self) -> int:
        return int(self.x.shape[0])

    def summary(self) -> dict:
        labels, counts = torch.unique(self.y, return_counts=True)
        return {
            "source": self.source,
            "n_samples": self.n_samples,
            "input_shape": list(self.x.shape[1:]),
            "labels": {str(int(label)): int(count) for label, count in zip(labels, counts)},
        }


def _checked(x: torch.Tensor, y: torch.Tensor, source: str) -> Dataset:
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{source}: x must have shape n × features with n ≥ 1, got {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{source}: y must be a vector of {x.shape[0]} labels, got shape {tuple(y.shape)}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise DataError(f"{source}: x has NaN/Inf entries")
    if y.is_floating_point():
        if not torch.isfinite(y).all() or not torch.equal(y, torch.round(y)):
            raise DataError(f"{source}: labels must be integers (±1 or class indices)")
    return Dataset(x, y.to(torch.int64), source)


def load_data_file(path: str | Path) -> Dataset:
    """Read ``x`` and ``y`` from a safetensors file."""
    path = Path(path)
    tensors, _ = read_safetensors(path, error=DataError)
    missing = [key for key in ("x", "y") if key not in tensors]
    if missing:
        raise DataError(f"{path}: data file lacks tensor(s) {', '.join(missing)}", hint="a data file holds x and y")
    return _checked(tensors["x"], tensors["y"], str(path))


def load_named_dataset(spec: str) -> Dataset:
    """``NAME`` or ``NAME:ARGS`` from the data-set registry."""
    from kktembed.plugins import datasets

    name, _, args = spec.partition(":")
    registry = datasets()
    if name not in registry:
        raise DataError(f"unknown data set {name!r}", hint=f"known: {', '.join(sorted(registry))}")
    _, loader, _ = registry[name]
    x, y = loader(args or None)
    return _checked(torch.as_tensor(x), torch.as_tensor(y), spec)


def save_data_file(path: str | Path, dataset: Dataset, force: bool = False) -> Path:
    return write_safetensors(path, {"x": dataset.x, "y": dataset.y}, {"format": "pt"}, force=force)


def resolve_data(data: str | None, dataset: str | None, checkpoint_metadata: dict[str, str], checkpoint_path: Path | None) -> Dataset:
    """The data named by ``--data`` / ``--dataset``, else the checkpoint's own reference."""
    if data and dataset:
        raise UsageError("--data and --dataset are mutually exclusive")
    if data:
        return load_data_file(data)
    if dataset:
        return load_named_dataset(dataset)
    if DATA_KEY in checkpoint_metadata:
        base = checkpoint_path.parent if checkpoint_path else Path.cwd()
        return load_data_file(base / checkpoint_metadata[DATA_KEY])
    if DATASET_KEY in checkpoint_metadata:
        return load_named_dataset(checkpoint_metadata[DATASET_KEY])
    raise UsageError("no training data: the checkpoint names none", hint="pass --data FILE or --dataset NAME[:ARGS]")


def validate_data(network: Network, dataset: Dataset) -> None:
    """Raise DataError unless the inputs fit the network and the labels fit its outputs."""
    expected = network.input_shape
    if tuple(dataset.x.shape[1:]) != expected:
        raise DataError(
            f"data {dataset.source} has inputs of shape {tuple(dataset.x.shape[1:])}, the network expects {expected}"
        )
    n_outputs = network.output_dim
    labels = torch.unique(dataset.y)
    if n_outputs == 1:
        if not set(labels.tolist()) <= {-1, 1}:
            raise DataError(
                f"a single-output network needs labels ±1, data {dataset.source} has {sorted(labels.tolist())[:6]}",
            )
    elif labels.min() < 0 or labels.max() >= n_outputs:
        raise DataError(
            f"a {n_outputs}-output network needs class labels 0..{n_outputs - 1}, data {dataset.source} has "
            f"{int(labels.min())}..{int(labels.max())}"
        )


def load_network_and_data(
    path: str | Path,
    data: str | None = None,
    dataset: str | None = None,
    hints: dict | None = None,
    require_data: bool = True,
) -> tuple[Network, Dataset | None]:
    """Read a checkpoint and its data, build the network (plain CNNs take the input shape from the
    data), and check that the two fit together. With ``require_data=False`` a missing data
    reference yields None instead of an error."""
    tensors, metadata = read_checkpoint(path)
    if set(tensors) == {"x", "y"}:
        raise CheckpointError(f"{path} holds a data set (x, y), not a checkpoint", hint="pass it with --data")
    try:
        dataset_object = resolve_data(data, dataset, metadata, Path(path))
    except UsageError:
        if require_data or data or dataset:
            raise
        dataset_object = None
    hints = dict(hints or {})
    if dataset_object is not None:
        hints.setdefault("input_shape", tuple(dataset_object.x.shape[1:]))
    network = build_network(path, tensors, metadata, hints)
    if dataset_object is not None:
        validate_data(network, dataset_object)
    return network, dataset_object
