"""Safetensors checkpoints on disk: safe reading (files, hub-style folders, shards), atomic writing.

A checkpoint is a safetensors file whose tensors are the network's state_dict, or a folder holding
``model.safetensors`` or the shards listed by ``model.safetensors.index.json``. kktembed's own files
carry header metadata: ``format: pt``, ``kktembed.adapter``, ``kktembed.config`` (JSON that rebuilds
the module) and optionally ``kktembed.data`` (a data file relative to the checkpoint) or
``kktembed.dataset`` (a named data set), ``kktembed.storage_dtype`` (when θ descends from weights
stored in a coarser dtype than its own). Nothing is ever unpickled. Interpreting the tensors (keys,
adapter, float64) is ``kktembed.loading``'s job.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kktembed.errors import CheckpointError, OutputExistsError
from kktembed.outputs import atomic_path, note_read
from kktembed.validation import parse_json

if TYPE_CHECKING:
    import torch

    from kktembed.network import Network

ADAPTER_KEY = "kktembed.adapter"
CONFIG_KEY = "kktembed.config"
DATA_KEY = "kktembed.data"
DATASET_KEY = "kktembed.dataset"
STEP_KEY = "kktembed.step"
STORAGE_DTYPE_KEY = "kktembed.storage_dtype"  # the coarsest precision θ was ever stored in

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
FOLDER_SPEC_NAMES = ("kktembed.json", "kktembed.toml")

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
    ensure_tensors_fit([path], error)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types, plus OSError
        raise error(f"{path}: corrupt or truncated safetensors file ({exc})") from exc
    return tensors, metadata


MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
FLOAT64_BYTES = 8
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "C64": 8}


def header_bytes_needed(entries: dict[str, Any]) -> int:
    """Memory to hold the tensors a header lists and their 64-bit copies: the stored bytes (the data
    offsets) plus, for tensors not already float64 or int64, 8 bytes per entry of the shape. Entries
    that are malformed or disagree with their offsets count as nothing here: safetensors refuses
    them as corrupt when the file is opened."""
    total = 0
    for entry in entries.values():
        try:
            start, end = (int(offset) for offset in entry["data_offsets"])
            elements = 1
            for size in entry["shape"]:
                elements *= int(size)
            if elements < 0 or elements * DTYPE_BYTES[entry["dtype"]] != end - start:
                continue
            total += end - start + (0 if entry["dtype"] in ("F64", "I64") else FLOAT64_BYTES * elements)
        except (KeyError, TypeError, ValueError):
            continue
    return total


def ensure_tensors_fit(paths: list[Path], error: type[CheckpointError] = CheckpointError) -> None:
    """Refuse files whose headers list more tensor data than the memory limit allows, before any
    tensor is read (a sparse file or a lying header costs nothing on disk)."""
    from kktembed.resources import ensure_fits

    needed = sum(header_bytes_needed(read_safetensors_header(path, error)[1]) for path in paths)
    what = f"reading {paths[0]}" if len(paths) == 1 else f"reading the {len(paths)} shards of {paths[0].parent}"
    ensure_fits(needed, what, hint="the tensors (and their float64 copies) must fit in memory")


def read_safetensors_header(path: str | Path, error: type[CheckpointError] = CheckpointError) -> tuple[dict[str, str], dict[str, dict]]:
    """(metadata, tensor entries {name: {"dtype", "shape", "data_offsets"}}) from the JSON header
    alone, without torch and without reading any tensor data."""
    path = Path(path)
    _sniff(path, error)
    note_read(path)
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > MAX_HEADER_BYTES:
            raise error(f"{path}: safetensors header of {length:,} bytes is larger than the {MAX_HEADER_BYTES:,} allowed")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise error(f"{path}: corrupt safetensors header ({exc})")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise error(f"{path}: safetensors metadata must map strings to strings")
    return metadata, header


def write_safetensors(path: str | Path, tensors: dict[str, "torch.Tensor"], metadata: dict[str, str], force: bool = False) -> Path:
    """Write atomically; refuse to overwrite an existing file unless ``force``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists", hint="pass --force to overwrite it")
    with atomic_path(path) as temporary:
        save_file({key: value.detach().contiguous() for key, value in tensors.items()}, str(temporary), metadata=metadata)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    """(tensors as stored, metadata) of a checkpoint file or folder (see ``read_stored_checkpoint``)."""
    stored = read_stored_checkpoint(path)
    return stored.tensors, stored.metadata


@dataclass(frozen=True)
class StoredCheckpoint:
    """What a checkpoint path holds, before any interpretation: the tensors as stored (their own
    dtypes), the header metadata, every file read, and the architecture spec found beside it."""

    path: Path
    tensors: dict[str, "torch.Tensor"]
    metadata: dict[str, str]
    files: tuple[Path, ...]
    spec: Path | None = None


def read_stored_checkpoint(path: str | Path) -> StoredCheckpoint:
    """Read a safetensors file, or a folder in the layout model hubs use: ``model.safetensors``, or
    shards ``model-0000k-of-0000n.safetensors`` listed by ``model.safetensors.index.json``. A spec
    ``kktembed.json`` / ``kktembed.toml`` in the folder is returned with it."""
    path = Path(path)
    files, weight_map = checkpoint_files(path)
    if weight_map is None:
        tensors, metadata = read_safetensors(files[0])
    else:
        tensors, metadata = _read_shards(path / SHARD_INDEX, files, weight_map)
    spec = next((path / name for name in FOLDER_SPEC_NAMES if (path / name).is_file()), None) if path.is_dir() else None
    return StoredCheckpoint(path, tensors, metadata, files, spec)


def checkpoint_files(path: Path) -> tuple[tuple[Path, ...], dict[str, str] | None]:
    """The files a checkpoint path is read from, and the shard index's weight_map (None unless sharded)."""
    if not path.is_dir():
        return (path,), None
    if (path / SINGLE_FILE).is_file():
        return (path / SINGLE_FILE,), None
    index_path = path / SHARD_INDEX
    if not index_path.is_file():
        found = sorted(entry.name for entry in path.iterdir())[:8]
        raise CheckpointError(
            f"{path}: a checkpoint folder needs {SINGLE_FILE} or {SHARD_INDEX} (found: {', '.join(found) or 'nothing'})",
            hint="pass the .safetensors file itself",
        )
    try:
        text = index_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid shard index ({exc})")
    note_read(index_path)
    index = parse_json(text, f"{index_path}: the shard index", CheckpointError)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: not a valid shard index (its weight_map must map tensor names to file names)")
    names = sorted(set(weight_map.values()))
    for name in names:
        if Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{index_path}: shard {name!r} is not a file name in the folder")
    return tuple(path / name for name in names), weight_map


def _read_shards(index_path: Path, shards: tuple[Path, ...], weight_map: dict[str, str]) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    """Merge the shards, checking that each holds exactly the tensors the index assigns to it and
    that their kktembed metadata agree."""
    ensure_tensors_fit(list(shards))
    tensors: dict[str, "torch.Tensor"] = {}
    metadata: dict[str, str] = {}
    for shard in shards:
        shard_tensors, shard_metadata = read_safetensors(shard)
        expected = {name for name, target in weight_map.items() if target == shard.name}
        if set(shard_tensors) != expected:
            missing, extra = sorted(expected - set(shard_tensors)), sorted(set(shard_tensors) - expected)
            raise CheckpointError(
                f"{shard}: does not hold the tensors {index_path.name} lists"
                + (f" (missing {', '.join(missing[:5])})" if missing else "")
                + (f" (not in the index: {', '.join(extra[:5])})" if extra else "")
            )
        for key, value in shard_metadata.items():
            if key.startswith("kktembed.") and metadata.get(key, value) != value:
                raise CheckpointError(f"{shard}: metadata {key} differs from another shard's")
            metadata.setdefault(key, value)
        tensors.update(shard_tensors)
    return tensors, metadata


def referenced_files(path: str | Path) -> list[Path]:
    """Every file a command reading the checkpoint ``path`` will read: its own files (the shard
    index, a spec beside them) and the data file its metadata names. Best effort, without torch:
    a path that is not a readable checkpoint yields what could be found (its reader reports the
    problem later)."""
    path = Path(path)
    found: list[Path] = []
    try:
        files, weight_map = checkpoint_files(path)
        found += files
        if weight_map is not None:
            found.append(path / SHARD_INDEX)
        if path.is_dir():
            found += [path / name for name in FOLDER_SPEC_NAMES if (path / name).is_file()]
        metadata, _ = read_safetensors_header(files[0])
    except (CheckpointError, OSError):
        return found
    if isinstance(metadata.get(DATA_KEY), str):
        found.append((path if path.is_dir() else path.parent) / metadata[DATA_KEY])
    return found


def source_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint's content: of its file, or for a sharded folder of the shards' names
    and digests (a folder with model.safetensors has that file's digest)."""
    files, _ = checkpoint_files(Path(path))
    if len(files) == 1:
        return file_sha256(files[0])
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a regular file (a FIFO or device is refused: reading one might never end)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'no such file' if not path.exists() else 'not a file'}")
    note_read(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return digest.hexdigest()


def load_network(path: str | Path, hints: dict[str, Any] | None = None) -> "Network":
    """Read a checkpoint and build its float64 Network; ``hints`` as for ``kktembed.loading.load_network``
    (``activation``, ``arch_config``, ``layers``, ``input_shape``)."""
    from kktembed.loading import load_network as load

    return load(path, hints=hints)


def checkpoint_metadata(network: "Network", extra: dict[str, str] | None = None) -> dict[str, str]:
    """Header metadata for a kktembed checkpoint of ``network``."""
    metadata = {"format": "pt", ADAPTER_KEY: network.adapter.name, CONFIG_KEY: json.dumps(network.config, sort_keys=True)}
    metadata.update(extra or {})
    return metadata


def save_checkpoint(path: str | Path, network: "Network", extra: dict[str, str] | None = None, force: bool = False) -> Path:
    """Write ``network`` with its adapter metadata (atomically; ``force`` to overwrite)."""
    return write_safetensors(path, network.params, checkpoint_metadata(network, extra), force=force)
