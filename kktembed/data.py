"""Training data: safetensors files with ``x`` and ``y`` (and optionally ``logits``), named data sets
from plugins, or tensors given in Python.

A data file holds ``x`` (n × d, or n × C × H × W) and ``y``: ±1 labels for a single-output network,
class indices 0..C−1 for C outputs. It may also hold ``logits`` (n × outputs): the user's own
network outputs on ``x``, against which the rebuilt network is verified (``kktembed.loading``).
``--dataset NAME[:ARGS]`` names a set registered through the ``kktembed_register_datasets`` hook
(``kktembed plugins`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kktembed.checkpoint import read_safetensors, write_safetensors
from kktembed.errors import DataError

@dataclass
class Dataset:
    x: torch.Tensor  # float64, n × input shape
    y: torch.Tensor  # int64, ±1 (binary) or 0..C−1
    source: str
    logits: torch.Tensor | None = None  # float64 n × outputs: the user's outputs, to verify against
    storage_dtype: str = "float64"  # the coarsest floating dtype x and logits were stored in

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


def coarsest_dtype(tensors) -> str:
    """Name of the floating dtype with the largest unit roundoff among ``tensors`` (float64 if none)."""
    floating = [t.dtype for t in tensors if t is not None and t.is_floating_point()]
    if not floating:
        return "float64"
    return str(max(floating, key=lambda dtype: torch.finfo(dtype).eps)).removeprefix("torch.")


def make_dataset(x, y, source: str, logits=None) -> Dataset:
    """A checked Dataset from array-likes: real, finite inputs; integer labels; logits n × outputs."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    logits = None if logits is None else torch.as_tensor(logits)
    for name, tensor in (("x", x), ("y", y), ("logits", logits)):
        if tensor is not None and (tensor.is_complex() or tensor.dtype == torch.bool):
            raise DataError(f"{source}: {name} has dtype {tensor.dtype}; real numbers are needed")
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{source}: x must have shape n × features with n ≥ 1, got {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{source}: y must be a vector of {x.shape[0]} labels, got shape {tuple(y.shape)}")
    storage = coarsest_dtype([x, logits])
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise DataError(f"{source}: x has NaN/Inf entries")
    if y.is_floating_point() and (not torch.isfinite(y).all() or not torch.equal(y, torch.round(y))):
        raise DataError(f"{source}: labels must be integers (±1 or class indices)")
    if logits is not None:
        if logits.ndim == 1:
            logits = logits.reshape(-1, 1)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise DataError(f"{source}: logits must have shape n × outputs with n = {x.shape[0]}, got {tuple(logits.shape)}")
        logits = logits.to(torch.float64)
        if not torch.isfinite(logits).all():
            raise DataError(f"{source}: logits have NaN/Inf entries")
    return Dataset(x, y.to(torch.int64), source, logits, storage)


def load_data_file(path: str | Path) -> Dataset:
    """Read ``x``, ``y`` and optional ``logits`` from a safetensors file."""
    path = Path(path)
    tensors, _ = read_safetensors(path, error=DataError)
    missing = [key for key in ("x", "y") if key not in tensors]
    if missing:
        raise DataError(f"{path}: data file lacks tensor(s) {', '.join(missing)}", hint="a data file holds x and y (and optionally logits)")
    return make_dataset(tensors["x"], tensors["y"], str(path), tensors.get("logits"))


def load_named_dataset(spec: str) -> Dataset:
    """``NAME`` or ``NAME:ARGS`` from the data-set registry."""
    from kktembed.plugins import datasets

    name, _, args = spec.partition(":")
    registry = datasets()
    if name not in registry:
        raise DataError(f"unknown data set {name!r}", hint=f"known: {', '.join(sorted(registry))}")
    _, loader, _ = registry[name]
    x, y = loader(args or None)
    return make_dataset(x, y, spec)


def save_data_file(path: str | Path, dataset: Dataset, force: bool = False) -> Path:
    tensors = {"x": dataset.x, "y": dataset.y}
    if dataset.logits is not None:
        tensors["logits"] = dataset.logits
    return write_safetensors(path, tensors, {"format": "pt"}, force=force)


def load_network_and_data(path, data=None, dataset=None, hints=None, require_data=True):
    """kktembed 0.1's entry point, kept with its signature for scripts written against it; the
    loading module is ``kktembed.loading`` (``hints``: activation, arch_config, layers)."""
    from kktembed.loading import load_network_and_data as load

    return load(path, data, dataset, None, require_data, hints=hints)


def validate_data(network, dataset: Dataset) -> None:
    """kktembed 0.1's name for ``kktembed.loading.validate_data``."""
    from kktembed.loading import validate_data as validate

    validate(network, dataset)
