"""Safetensors checkpoints: safe reading, atomic writing, and turning a file into a Network.

A checkpoint is a safetensors file whose tensors are the network's state_dict. kktembed's own files
carry header metadata: ``format: pt``, ``kktembed.adapter``, ``kktembed.config`` (JSON that rebuilds
the module) and optionally ``kktembed.data`` (a data file relative to the checkpoint) or
``kktembed.dataset`` (a named data set). Plain state_dicts are claimed by an adapter through the
``kktembed_detect_adapter`` hook. Nothing is ever unpickled. Tensors become float64 on load.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kktembed.errors import ArchitectureError, CheckpointError, OutputExistsError

if TYPE_CHECKING:
    import torch

    from kktembed.network import Network

ADAPTER_KEY = "kktembed.adapter"
CONFIG_KEY = "kktembed.config"
DATA_KEY = "kktembed.data"
DATASET_KEY = "kktembed.dataset"

_PICKLE_HINT = "kktembed reads safetensors only and never unpickles; convert with safetensors.torch.save_file(model.state_dict(), PATH)"


def _sniff(path: Path, error: type[CheckpointError]) -> None:
    """Reject missing, empty, pickle/zip and truncated files before safetensors parses them."""
    if not path.exists():
        raise error(f"{path}: no such file")
    if not path.is_file():
        raise error(f"{path}: not a file")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    (header_length,) = struct.unpack("<Q", head[:8]) if len(head) >= 8 else (0,)
    looks_like_safetensors = len(head) == 9 and head[8:9] == b"{" and 0 < header_length and 8 + header_length <= size
    if looks_like_safetensors:
        return
    if head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise error(f"{path}: looks like a PyTorch pickle (torch.save), not safetensors", hint=_PICKLE_HINT)
    if len(head) == 9 and head[8:9] == b"{":
        raise error(f"{path}: truncated safetensors file (header says {header_length} bytes, file has {size})")
    raise error(f"{path}: not a safetensors file, or truncated ({size} bytes)")


def read_safetensors(path: str | Path, error: type[CheckpointError] = CheckpointError) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    """Return (tensors, metadata) of a safetensors file, raising ``error`` with a clear message."""
    from safetensors import safe_open

    path = Path(path)
    _sniff(path, error)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types, plus OSError
        raise error(f"{path}: corrupt or truncated safetensors file ({exc})") from exc
    return tensors, metadata


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file in ``path``'s folder; when the block succeeds, rename it onto ``path``
    (with the umask's permissions), so that readers never see a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_safetensors(path: str | Path, tensors: dict[str, "torch.Tensor"], metadata: dict[str, str], force: bool = False) -> Path:
    """Write atomically; refuse to overwrite an existing file unless ``force``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists", hint="pass --force to overwrite it")
    with atomic_path(path) as temporary:
        save_file({key: value.detach().contiguous() for key, value in tensors.items()}, str(temporary), metadata=metadata)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write a text file atomically (callers decide about overwriting)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def _as_float64(tensors: dict[str, "torch.Tensor"], path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    converted = {}
    for key, tensor in tensors.items():
        if not (tensor.is_floating_point()):
            raise CheckpointError(f"{path}: tensor {key} has dtype {tensor.dtype}, expected floating point parameters")
        tensor = tensor.to(torch.float64)
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{path}: tensor {key} has {bad} NaN/Inf entries", hint="the checkpoint is unusable; save a finite one")
        converted[key] = tensor
    return converted


def resolve_adapter(metadata: dict[str, str], tensors: dict[str, "torch.Tensor"], hints: dict[str, Any], path: Path):
    """Return (adapter, config) from kktembed metadata, or from the detection hook for plain files."""
    from kktembed.plugins import adapters, get_plugin_manager

    registry = adapters()
    if ADAPTER_KEY in metadata:
        name = metadata[ADAPTER_KEY]
        if name not in registry:
            raise ArchitectureError(
                f"{path}: unknown adapter {name!r} (known: {', '.join(sorted(registry))})",
                hint="install the plugin that provides it (see `kktembed plugins`)",
            )
        try:
            config = json.loads(metadata.get(CONFIG_KEY, ""))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata {CONFIG_KEY} is not valid JSON ({exc})")
        return registry[name], config
    shapes = {key: tuple(tensor.shape) for key, tensor in tensors.items()}
    detected = get_plugin_manager().hook.kktembed_detect_adapter(tensor_shapes=shapes, hints=hints)
    if detected is None:
        raise ArchitectureError(
            f"{path}: no adapter recognises these tensors ({', '.join(sorted(shapes)[:6])}{', …' if len(shapes) > 6 else ''})",
            hint="save an nn.Sequential of bias-free Linear / Conv2d layers, or install an adapter plugin",
        )
    name, config = detected
    if name not in registry:
        raise ArchitectureError(f"{path}: detection returned unknown adapter {name!r}")
    return registry[name], config


def read_checkpoint(path: str | Path) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    """(tensors as stored, metadata) of a checkpoint; ``build_network`` converts and validates them."""
    return read_safetensors(Path(path))


def build_network(path: str | Path, tensors: dict[str, "torch.Tensor"], metadata: dict[str, str], hints: dict[str, Any] | None = None) -> "Network":
    """Turn a read checkpoint into a Network.

    ``hints``: ``activation`` (user's --activation, for plain files; a kktembed file's own must agree),
    ``arch_config`` (dict), ``input_shape`` (from the data).
    """
    from kktembed.network import Network

    path = Path(path)
    hints = dict(hints or {})
    adapter, config = resolve_adapter(metadata, tensors, hints, path)
    stored = config.get("activation")
    if ADAPTER_KEY in metadata and hints.get("activation") and stored is not None and hints["activation"] != stored:
        raise ArchitectureError(
            f"{path}: the checkpoint records activation {stored!r}, --activation says {hints['activation']!r}",
            hint="drop --activation for checkpoints written by kktembed",
        )
    adapter.check_shapes(config, {key: tuple(t.shape) for key, t in tensors.items()})
    tensors = _as_float64(tensors, path)
    return Network(adapter=adapter, config=config, params=tensors, path=path, metadata=metadata)


def load_network(path: str | Path, hints: dict[str, Any] | None = None) -> "Network":
    """Read a checkpoint and build its float64 Network (see ``build_network`` for ``hints``)."""
    tensors, metadata = read_checkpoint(path)
    return build_network(path, tensors, metadata, hints)


def checkpoint_metadata(network: "Network", extra: dict[str, str] | None = None) -> dict[str, str]:
    """Header metadata for a kktembed checkpoint of ``network``."""
    metadata = {"format": "pt", ADAPTER_KEY: network.adapter.name, CONFIG_KEY: json.dumps(network.config, sort_keys=True)}
    metadata.update(extra or {})
    return metadata


def save_checkpoint(path: str | Path, network: "Network", extra: dict[str, str] | None = None, force: bool = False) -> Path:
    """Write ``network`` with its adapter metadata (atomically; ``force`` to overwrite)."""
    return write_safetensors(path, network.params, checkpoint_metadata(network, extra), force=force)
