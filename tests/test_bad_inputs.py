"""The bad-input corpus: every class of hostile or malformed input, run through the command line.

Each case is built here, from safetensors' own API and raw bytes (no file is committed), run
in-process through ``kktembed.cli.main`` and must end in a refusal the user can act on:

- a non-zero exit status (2 for usage errors), never 70 (the internal-error safety net);
- exactly one ``Error: …`` line on stderr, preceded by nothing but ``Warning: …`` lines;
- no traceback, no "internal error", no "out of memory" (the MemoryError net);
- no file created, modified or removed anywhere in the folders the case can see (inputs are
  compared byte for byte, outputs must not appear, special files stay what they were);
- for memory bombs: refused before allocating, under an address-space limit of a few GiB above
  what the process already maps and with a small growth of its peak resident memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import resource
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

from kktembed.checkpoint import ADAPTER_KEY, CONFIG_KEY, DATA_KEY
from kktembed.embedding import EMBEDDING_KEY

MLP = {"widths": [4, 3, 1], "activation": "relu", "first_layer_bias": False, "keys": ["0", "2"]}
CNN = {
    "input_shape": [1, 4, 4],
    "activation": "relu",
    "first_layer_bias": False,
    "conv": [{"key": "0", "out_channels": 2, "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "pool": "avg:2"}],
    "linear": [{"key": "3", "out_features": 1}],
}
BOMB_ADDRESS_SPACE = 2 * 2**30  # on top of what the process maps already
BOMB_RSS_GROWTH = 512 * 2**20
BOMB_MEMORY_LIMIT = "1GiB"  # KKTEMBED_MEMORY_LIMIT for the bombs: refusals do not depend on the machine


# -- building blocks -----------------------------------------------------------------------------


def mlp_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"0.weight": torch.randn(3, 4, generator=generator, dtype=torch.float64), "2.weight": torch.randn(1, 3, generator=generator, dtype=torch.float64)}


def cnn_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"0.weight": torch.randn(2, 1, 3, 3, generator=generator, dtype=torch.float64), "3.weight": torch.randn(1, 8, generator=generator, dtype=torch.float64)}


def native(path: Path, tensors: dict, config, adapter: str = "mlp", **metadata: str) -> Path:
    """A kktembed checkpoint whose ``kktembed.config`` is ``config`` (a string is stored as is)."""
    text = config if isinstance(config, str) else json.dumps(config)
    save_file(tensors, str(path), metadata={"format": "pt", ADAPTER_KEY: adapter, CONFIG_KEY: text, **metadata})
    return path


def raw_safetensors(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    """A file with an 8-byte little-endian header length, the header (an object or raw bytes) and data."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes((len(body) if length is None else length).to_bytes(8, "little") + body + data)
    return path


def complex_file(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict | None = None, labels: torch.Tensor | None = None) -> Path:
    """A safetensors file of complex64 ("C64") tensors of ones, which safetensors.torch cannot save,
    and optionally int64 ``labels`` as ``y``."""
    header, data = {"__metadata__": metadata or {"format": "pt"}}, b""
    for name, shape in shapes.items():
        values = torch.ones(math.prod(shape) * 2, dtype=torch.float32).numpy().tobytes()  # (re, im) pairs
        header[name] = {"dtype": "C64", "shape": list(shape), "data_offsets": [len(data), len(data) + len(values)]}
        data += values
    if labels is not None:
        values = labels.to(torch.int64).numpy().tobytes()
        header["y"] = {"dtype": "I64", "shape": [len(labels)], "data_offsets": [len(data), len(data) + len(values)]}
        data += values
    return raw_safetensors(path, header, data)


def labelled_data(path: Path, x: torch.Tensor, outputs: torch.Tensor) -> Path:
    """The network's own labels, without the samples it barely decides (so that the data are separable)."""
    keep = outputs[:, 0].abs() > 0.1
    save_file({"x": x[keep], "y": torch.where(outputs[keep, 0] > 0, 1, -1)}, str(path))
    return path


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass
class Workspace:
    """Shared valid inputs (``shared``, read-only for the cases) and a fresh folder per case (``tmp``)."""

    shared: Path
    tmp: Path

    @property
    def narrow(self) -> Path:
        return self.shared / "narrow.safetensors"

    @property
    def data(self) -> Path:
        return self.shared / "data.safetensors"

    @property
    def wide(self) -> Path:
        return self.shared / "wide.safetensors"

    @property
    def cnn(self) -> Path:
        return self.shared / "cnn.safetensors"

    @property
    def cnn_data(self) -> Path:
        return self.shared / "cnn_data.safetensors"

    def copy_of_narrow(self) -> Path:
        """The narrow checkpoint and its data side by side in ``tmp`` (its kktembed.data names the data)."""
        for source in (self.narrow, self.data):
            (self.tmp / source.name).write_bytes(source.read_bytes())
        return self.tmp / self.narrow.name


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    import kktembed
    from kktembed.network import Network
    from kktembed.plugins import adapters

    folder = tmp_path_factory.mktemp("shared")
    tensors = mlp_tensors()
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labelled_data(folder / "data.safetensors", x, Network(adapters()["mlp"], MLP, tensors).forward(x))
    native(folder / "narrow.safetensors", tensors, MLP, **{DATA_KEY: "data.safetensors"})
    kktembed.split(folder / "narrow.safetensors", folder / "wide.safetensors", neuron=0, ratio=0.3)
    images = torch.randn(10, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labelled_data(folder / "cnn_data.safetensors", images, Network(adapters()["cnn"], CNN, cnn_tensors()).forward(images))
    native(folder / "cnn.safetensors", cnn_tensors(), CNN, adapter="cnn", **{DATA_KEY: "cnn_data.safetensors"})
    for path in folder.iterdir():
        path.chmod(0o444)
    return folder


@pytest.fixture
def workspace(shared, tmp_path) -> Workspace:
    return Workspace(shared, tmp_path)


# -- what a refusal must look like ---------------------------------------------------------------


HASHED_BYTES = 16 * 2**20  # larger files (the sparse bombs) are compared by size and mtime only


def snapshot(*folders: Path) -> dict[str, tuple]:
    """Every entry under ``folders``: its kind and, for regular files, size, mtime and sha256."""
    entries = {}
    for folder in folders:
        for root, directories, files in os.walk(folder):
            for name in directories + files:
                path = Path(root) / name
                info = os.lstat(path)
                entry: tuple = (stat.S_IFMT(info.st_mode),)
                if stat.S_ISREG(info.st_mode):
                    entry += (info.st_size, info.st_mtime_ns)
                    if info.st_size <= HASHED_BYTES:
                        entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
                entries[str(path)] = entry
    return entries


def assert_refused(code: int, out: str, err: str, expected_code: int | None, fragment: str | None) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), f"no Error line (exit {code}):\n{err}"
    assert all(line.startswith("Warning: ") for line in lines[:-1]), f"more than one line besides warnings:\n{err}"
    message = lines[-1]
    assert code not in (0, 70), f"exit {code}: {message}"
    assert "internal error" not in message and "Traceback" not in err, message
    assert "out of memory" not in message, f"refused by the MemoryError net, not before allocating: {message}"
    if expected_code is not None:
        assert code == expected_code, f"exit {code}, expected {expected_code}: {message}"
    if fragment is not None:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"


def address_space_in_use() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


@dataclass
class Case:
    name: str
    build: Callable[[Workspace], list]  # the command line (after "kktembed")
    code: int | None = None  # expected exit status (None: any refusal)
    fragment: str | None = None  # expected in the Error line (case-insensitive)
    bomb: bool = False  # run under the address-space limit and the memory limit
    env: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return self.name


CASES: list[Case] = []


def case(name: str, code: int | None = None, fragment: str | None = None, bomb: bool = False, env: dict | None = None):
    def register(build):
        CASES.append(Case(name, build, code, fragment, bomb, env or {}))
        return build

    return register


# == 1. files that are not checkpoints: corrupt, truncated, hostile headers, pickles, data ==========


def _header_case(name: str, header, data: bytes = b"", length: int | None = None, fragment: str | None = None):
    @case(f"file/{name}", code=1, fragment=fragment)
    def build(ws: Workspace):
        return ["inspect", raw_safetensors(ws.tmp / "bad.safetensors", header, data, length)]


TENSOR = {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}
_header_case("empty-file", b"", length=0, fragment="not a safetensors file")
_header_case("header-length-2^63", b"{}", length=2**63)
_header_case("header-longer-than-file", b'{"a": 1}', length=10**6, fragment="truncated")
_header_case("header-not-json", b"{ this is not json", fragment="corrupt")
_header_case("header-invalid-utf8", b"{\xff\xfe}", fragment="corrupt")
_header_case("header-is-a-list", b"[1, 2]")
_header_case("header-deeply-nested", ('{"a":' + nested_json(200_000) + "}").encode(), fragment="corrupt")
_header_case("offsets-beyond-data", {"w": {**TENSOR, "data_offsets": [0, 1600]}}, b"\0" * 16, fragment="corrupt")
_header_case("offsets-overlap", {"a": TENSOR, "b": TENSOR}, b"\0" * 16, fragment="corrupt")
_header_case("offsets-reversed", {"w": {**TENSOR, "data_offsets": [16, 0]}}, b"\0" * 16, fragment="corrupt")
_header_case("unknown-dtype", {"w": {**TENSOR, "dtype": "F99"}}, b"\0" * 16, fragment="corrupt")
_header_case("negative-shape", {"w": {**TENSOR, "shape": [-2]}}, b"\0" * 16, fragment="corrupt")
_header_case("shape-disagrees-with-offsets", {"w": {**TENSOR, "shape": [2**40, 2**40]}}, b"\0" * 16, fragment="corrupt")
_header_case("metadata-not-strings", {"__metadata__": {"kktembed.adapter": 3}, "w": TENSOR}, b"\0" * 16)
_header_case("no-tensors", {"__metadata__": {"format": "pt"}})
_header_case("integer-tensors", {"w": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16)


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_are_refused_and_never_executed(workspace, run_cli, protocol):
    marker = workspace.tmp / "executed"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = workspace.tmp / "model.safetensors"
    path.write_bytes(pickle.dumps(Exploit(), protocol=protocol))
    for args in (["check", path], ["inspect", path], ["split", path, "-o", workspace.tmp / "w.safetensors"], ["embed", workspace.narrow, path], ["trace", workspace.narrow, "--wide", path]):
        assert_refused(*run_cli(*args), expected_code=1, fragment="pickle")
    assert not marker.exists()


@case("file/torch-save-zip", code=1, fragment="pickle")
def _(ws):
    torch.save({"w": torch.zeros(2)}, ws.tmp / "model.pt")
    return ["check", ws.tmp / "model.pt"]


@case("file/data-file-as-checkpoint", code=1, fragment="--data")
def _(ws):
    return ["split", ws.data, "-o", ws.tmp / "w.safetensors"]


@case("file/data-file-as-wide", code=1, fragment="--data")
def _(ws):
    return ["embed", ws.narrow, ws.data]


@case("file/dev-zero", code=1, fragment="not a file")
def _(ws):
    return ["inspect", "/dev/zero"]


@case("file/fifo", code=1, fragment="not a file")
def _(ws):
    os.mkfifo(ws.tmp / "pipe.safetensors")
    return ["check", ws.tmp / "pipe.safetensors"]


@case("file/symlink-loop", code=1)
def _(ws):
    os.symlink(ws.tmp / "b", ws.tmp / "a")
    os.symlink(ws.tmp / "a", ws.tmp / "b")
    return ["inspect", ws.tmp / "a"]


@case("file/folder-without-model", code=1, fragment="needs")
def _(ws):
    (ws.tmp / "ckpt").mkdir()
    (ws.tmp / "ckpt" / "notes.txt").write_text("hi")
    return ["inspect", ws.tmp / "ckpt"]


@case("file/shard-index-escapes-folder", code=1, fragment="not a file name")
def _(ws):
    (ws.tmp / "ckpt").mkdir()
    (ws.tmp / "ckpt" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"0.weight": "../../narrow.safetensors"}}))
    return ["inspect", ws.tmp / "ckpt"]


@case("file/shard-index-not-json", code=1, fragment="shard index")
def _(ws):
    (ws.tmp / "ckpt").mkdir()
    (ws.tmp / "ckpt" / "model.safetensors.index.json").write_text(nested_json(100_000))
    return ["inspect", ws.tmp / "ckpt"]


@case("file/shard-missing", code=1)
def _(ws):
    (ws.tmp / "ckpt").mkdir()
    (ws.tmp / "ckpt" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"0.weight": "model-00001-of-00001.safetensors"}}))
    return ["inspect", ws.tmp / "ckpt"]


@case("file/nan-parameters", code=1, fragment="NaN")
def _(ws):
    tensors = mlp_tensors()
    tensors["0.weight"][0, 0] = math.nan
    return ["inspect", native(ws.tmp / "nan.safetensors", tensors, MLP)]


@case("file/complex-parameters", code=1)
def _(ws):
    metadata = {"format": "pt", ADAPTER_KEY: "mlp", CONFIG_KEY: json.dumps(MLP)}
    return ["inspect", complex_file(ws.tmp / "complex.safetensors", {"0.weight": (3, 4), "2.weight": (1, 3)}, metadata)]


@case("file/bool-parameters", code=1)
def _(ws):
    tensors = {key: value > 0 for key, value in mlp_tensors().items()}
    return ["inspect", native(ws.tmp / "bool.safetensors", tensors, MLP)]


# == 2. kktembed.config is untrusted: every malformation names the field ============================

MALFORMED_MLP_CONFIGS = {
    "list": [4, 3, 1],
    "null": None,
    "number": 3,
    "string": "widths",
    "empty-object": {},
    "missing-widths": {"activation": "relu"},
    "missing-activation": {"widths": [4, 3, 1]},
    "widths-floats": {**MLP, "widths": [4.0, 3.5, 1.0]},
    "widths-strings": {**MLP, "widths": ["4", "3", "1"]},
    "widths-negative": {**MLP, "widths": [4, -3, 1]},
    "widths-zero": {**MLP, "widths": [4, 0, 1]},
    "widths-not-a-list": {**MLP, "widths": 4},
    "widths-one-entry": {**MLP, "widths": [4]},
    "widths-bool": {**MLP, "widths": [4, True, 1]},
    "key-dotted-empty-part": {**MLP, "keys": ["a..b", "2"]},
    "key-empty": {**MLP, "keys": ["", "2"]},
    "key-trailing-dot": {**MLP, "keys": ["0.", "2"]},
    "key-not-a-string": {**MLP, "keys": [0, 2]},
    "keys-too-few": {**MLP, "keys": ["0"]},
    "activation-nan-slope": {**MLP, "activation": "leaky_relu:nan"},
    "activation-inf-slope": {**MLP, "activation": "leaky_relu:inf"},
    "activation-number": {**MLP, "activation": 1},
    "activation-tanh": {**MLP, "activation": "tanh"},
    "first-layer-bias-string": {**MLP, "first_layer_bias": "yes"},
    "widths-do-not-match-tensors": {**MLP, "widths": [4, 5, 1]},
}


def _config_case(name: str, config, adapter: str = "mlp", fragment: str | None = None):
    @case(f"config/{name}", code=1, fragment=fragment)
    def build(ws: Workspace):
        tensors = cnn_tensors() if adapter == "cnn" else mlp_tensors()
        return ["inspect", native(ws.tmp / "bad.safetensors", tensors, config, adapter=adapter)]


for _name, _config in MALFORMED_MLP_CONFIGS.items():
    _config_case(_name, _config, fragment="config" if not _name.startswith("activation") else None)
_config_case("not-json", "{widths: [4, 3, 1]", fragment="not valid JSON")
_config_case("deeply-nested-json", nested_json(100_000), fragment="config")
_config_case("nan-in-json", '{"widths": [4, NaN, 1], "activation": "relu"}', fragment="config")

MALFORMED_CNN_CONFIGS = {
    "stride-zero": {**CNN, "conv": [{**CNN["conv"][0], "stride": [0, 1]}]},
    "kernel-negative": {**CNN, "conv": [{**CNN["conv"][0], "kernel_size": [-3, 3]}]},
    "padding-negative": {**CNN, "conv": [{**CNN["conv"][0], "padding": [-1, 1]}]},
    "input-shape-2d": {**CNN, "input_shape": [4, 4]},
    "input-shape-zero": {**CNN, "input_shape": [1, 0, 4]},
    "conv-empty": {**CNN, "conv": []},
    "conv-not-objects": {**CNN, "conv": [3]},
    "pool-zero": {**CNN, "conv": [{**CNN["conv"][0], "pool": "avg:0"}]},
    "pool-unknown": {**CNN, "conv": [{**CNN["conv"][0], "pool": "median:2"}]},
    "pool-number": {**CNN, "conv": [{**CNN["conv"][0], "pool": 2}]},
    "kernel-larger-than-input": {**CNN, "conv": [{**CNN["conv"][0], "kernel_size": [9, 9], "padding": [0, 0]}]},
    "linear-missing-key": {**CNN, "linear": [{"out_features": 1}]},
    "out-channels-string": {**CNN, "conv": [{**CNN["conv"][0], "out_channels": "2"}]},
}
for _name, _config in MALFORMED_CNN_CONFIGS.items():
    _config_case(f"cnn-{_name}", _config, adapter="cnn")


@case("config/unknown-adapter", code=1, fragment="resnet9000")
def _(ws):
    return ["inspect", native(ws.tmp / "bad.safetensors", mlp_tensors(), MLP, adapter="resnet9000")]


@case("config/storage-dtype-bogus", code=1, fragment="storage_dtype")
def _(ws):
    return ["inspect", native(ws.tmp / "bad.safetensors", mlp_tensors(), MLP, **{"kktembed.storage_dtype": "float128"})]


@case("config/data-reference-missing", code=1, fragment="no such file")
def _(ws):
    return ["check", native(ws.tmp / "bad.safetensors", mlp_tensors(), MLP, **{DATA_KEY: "nowhere.safetensors"})]


@case("config/data-reference-is-a-device", code=1, fragment="not a file")
def _(ws):
    return ["check", native(ws.tmp / "bad.safetensors", mlp_tensors(), MLP, **{DATA_KEY: "/dev/zero"})]


@case("config/data-reference-is-the-checkpoint", code=1, fragment="lacks")
def _(ws):
    return ["check", native(ws.tmp / "bad.safetensors", mlp_tensors(), MLP, **{DATA_KEY: "bad.safetensors"})]


@case("config/activation-option-nan-slope", fragment="slope")
def _(ws):
    save_file(mlp_tensors(), str(ws.tmp / "plain.safetensors"))
    return ["check", ws.tmp / "plain.safetensors", "--data", ws.data, "--activation", "leaky_relu:nan"]


@case("config/spec-stride-zero", code=2, fragment="stride")
def _(ws):
    (ws.tmp / "arch.json").write_text(json.dumps({"stride": 0}))
    return ["inspect", ws.cnn, "--arch", ws.tmp / "arch.json"]


@case("config/spec-unknown-field", code=2, fragment="unknown field")
def _(ws):
    (ws.tmp / "arch.toml").write_text("strides = 2\n")
    return ["inspect", ws.narrow, "--arch", ws.tmp / "arch.toml"]


@case("config/spec-deeply-nested", code=2, fragment="not valid JSON")
def _(ws):
    (ws.tmp / "arch.json").write_text(nested_json(100_000))
    return ["inspect", ws.narrow, "--arch", ws.tmp / "arch.json"]


@case("config/spec-input-shape-2d", code=2, fragment="input_shape")
def _(ws):
    (ws.tmp / "arch.json").write_text(json.dumps({"input_shape": [4, 4]}))
    return ["inspect", ws.narrow, "--arch", ws.tmp / "arch.json"]


# == 3. kktembed.embedding records are untrusted ===================================================


def _with_record(ws: Workspace, change: Callable[[dict], object]) -> Path:
    """A copy of the wide checkpoint whose embedding record is changed by ``change`` (which edits the
    record in place, or returns a replacement: a string is stored as the raw metadata value)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(ws.wide), framework="pt") as handle:
        metadata = dict(handle.metadata())
    record = json.loads(metadata[EMBEDDING_KEY])
    replaced = change(record)
    value = replaced if isinstance(replaced, str) else json.dumps(replaced if replaced is not None else record)
    path = ws.tmp / "wide.safetensors"
    save_file(load_file(str(ws.wide)), str(path), metadata={**metadata, EMBEDDING_KEY: value})
    return path


def _split(record: dict) -> dict:
    return record["stages"][0]["splits"][0]


def _as_map(record: dict, source: list, incoming: list, outgoing: list) -> None:
    """Turn the record into version 2 with one unit map for layer "0" (width 3 → len(source))."""
    stage = {key: value for key, value in record["stages"][0].items() if key != "splits"}
    stage.update(maps=[{"layer": "0", "narrow_width": 3, "source": source, "incoming": incoming, "outgoing": outgoing}], origin=[])
    record.update(version=2, stages=[stage])


RECORD_CHANGES: dict[str, Callable[[dict], object]] = {
    "unit-out-of-range": lambda r: _split(r).update(unit=99),
    "unit-negative": lambda r: _split(r).update(unit=-1),
    "width-wrong": lambda r: _split(r).update(width=7),
    "factors-shorter-than-shares": lambda r: _split(r).update(incoming=_split(r)["incoming"][:1]),
    "nan-share": lambda r: _split(r).update(shares=[math.nan, 0.7]),
    "negative-share": lambda r: _split(r).update(shares=[-0.3, 1.3]),
    "string-factor": lambda r: _split(r).update(outgoing=["a", "b"]),
    "positions-wrong": lambda r: _split(r).update(positions=[0, 0]),
    "layer-unknown": lambda r: _split(r).update(layer="fc9"),
    "version-99": lambda r: r.update(version=99),
    "stages-not-a-list": lambda r: r.update(stages={"a": 1}),
    "stage-without-splits": lambda r: r["stages"][0].pop("splits"),
    "parent-config-not-object": lambda r: r["stages"][0].update(parent_config=[1]),
    "record-a-list": lambda r: [r],
    "not-json": lambda r: "{stages: ",
    "deeply-nested": lambda r: nested_json(100_000),
    "more-copies-than-the-file": lambda r: _split(r).update(shares=[0.2, 0.3, 0.5], incoming=[0.2**0.5, 0.3**0.5, 0.5**0.5], outgoing=[0.2**0.5, 0.3**0.5, 0.5**0.5], positions=[0, 3, 4]),
    "map-source-out-of-range": lambda r: _as_map(r, [0, 1, 2, 7], [1] * 4, [1] * 4),
    "map-source-negative": lambda r: _as_map(r, [0, 1, 2, -1], [1] * 4, [1] * 4),
    "map-factors-short": lambda r: _as_map(r, [0, 1, 2, 0], [1] * 3, [1] * 4),
    "map-nan-factor": lambda r: _as_map(r, [0, 1, 2, 0], [math.nan, 1, 1, 1], [1] * 4),
}


def _record_case(name: str, change):
    @case(f"record/embed-{name}", code=1)
    def build_embed(ws: Workspace):
        return ["embed", ws.narrow, _with_record(ws, change)]

    @case(f"record/trace-{name}", code=1)
    def build_trace(ws: Workspace):
        return ["trace", ws.narrow, "--wide", _with_record(ws, change), "--steps", "2"]

    @case(f"record/split-{name}", code=1)
    def build_split(ws: Workspace):
        return ["split", _with_record(ws, change), "-o", ws.tmp / "wider.safetensors", "--neuron", "1"]


for _name, _change in RECORD_CHANGES.items():
    _record_case(_name, _change)


@case("record/wide-not-split-from-narrow", code=1)
def _(ws):
    return ["embed", ws.cnn, ws.wide]


# == 4. memory bombs: refused before allocating ====================================================


@case("bomb/config-widths-1e9", code=1, bomb=True)
def _(ws):
    return ["inspect", native(ws.tmp / "bomb.safetensors", mlp_tensors(), {**MLP, "widths": [4, 10**9, 1]})]


@case("bomb/config-widths-2^31-deep", code=1, bomb=True)
def _(ws):
    return ["check", native(ws.tmp / "bomb.safetensors", mlp_tensors(), {**MLP, "widths": [4, 2**31, 2**31, 1], "keys": ["0", "2", "4"]}), "--data", ws.data]


@case("bomb/cnn-channels-1e9", code=1, bomb=True)
def _(ws):
    config = {**CNN, "conv": [{**CNN["conv"][0], "out_channels": 10**9}]}
    return ["inspect", native(ws.tmp / "bomb.safetensors", cnn_tensors(), config, adapter="cnn")]


@case("bomb/cnn-input-shape-huge", bomb=True, fragment="memory")
def _(ws):
    # A 1×1 kernel with a stride as large as the input: tiny tensors that match the config, but one
    # input sample of 10^12 entries.
    side = 10**6
    config = {**CNN, "input_shape": [1, side, side], "conv": [{"key": "0", "out_channels": 2, "kernel_size": [1, 1], "stride": [side, side], "padding": [0, 0], "pool": None}]}
    tensors = {"0.weight": torch.ones(2, 1, 1, 1, dtype=torch.float64), "3.weight": torch.ones(1, 2, dtype=torch.float64)}
    return ["inspect", native(ws.tmp / "bomb.safetensors", tensors, config, adapter="cnn")]


@case("bomb/cnn-activations-huge", bomb=True, fragment="memory")
def _(ws):
    # 4096 channels of a 1×1 kernel on 64×64 images pooled to 1×1: kilobytes of weights and data,
    # gigabytes of activations in one forward pass over the data.
    config = {**CNN, "input_shape": [1, 64, 64], "conv": [{"key": "0", "out_channels": 4096, "kernel_size": [1, 1], "stride": [1, 1], "padding": [0, 0], "pool": "max:64"}]}
    tensors = {"0.weight": torch.ones(4096, 1, 1, 1, dtype=torch.float32), "3.weight": torch.ones(1, 4096, dtype=torch.float32)}
    x = torch.ones(64, 1, 64, 64, dtype=torch.float16)
    save_file({"x": x, "y": torch.ones(64, dtype=torch.int8)}, str(ws.tmp / "images.safetensors"))
    return ["check", native(ws.tmp / "bomb.safetensors", tensors, config, adapter="cnn"), "--data", ws.tmp / "images.safetensors"]


@case("bomb/header-claims-huge-tensor", bomb=True)
def _(ws):
    # a sparse file: the header is honest about offsets, the file system holds no data
    size = 64 * 2**30
    path = raw_safetensors(ws.tmp / "huge.safetensors", {"0.weight": {"dtype": "F64", "shape": [size // 8 // 4, 4], "data_offsets": [0, size]}})
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size + size)
    return ["inspect", path]


@case("bomb/split-copies-max-on-all-units", bomb=True, fragment="memory")
def _(ws):
    return ["split", ws.narrow, "-o", ws.tmp / "w.safetensors", "--copies", "1000000"]


@case("bomb/split-width-1e9", bomb=True, fragment="memory")
def _(ws):
    return ["split", ws.narrow, "-o", ws.tmp / "w.safetensors", "--width", str(10**9)]


@case("bomb/split-width-2^31", bomb=True, fragment="memory")
def _(ws):
    return ["split", ws.narrow, "-o", ws.tmp / "w.safetensors", "--width", str(2**31)]


@case("bomb/trace-split-copies-1e6", bomb=True, fragment="memory")
def _(ws):
    return ["trace", ws.narrow, "--split", "copies=1000000", "--steps", "2"]


@case("bomb/trace-split-width-1e9", bomb=True, fragment="memory")
def _(ws):
    return ["trace", ws.narrow, "--split", f"width={10**9}", "--steps", "2"]


@case("bomb/data-file-huge-sparse", bomb=True)
def _(ws):
    size = 64 * 2**30
    path = raw_safetensors(ws.tmp / "data.safetensors", {"x": {"dtype": "F64", "shape": [size // 8 // 4, 4], "data_offsets": [0, size]}, "y": {"dtype": "I64", "shape": [1], "data_offsets": [size, size + 8]}})
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size + size + 8)
    return ["check", ws.narrow, "--data", path]


@case("bomb/record-claims-huge-width", bomb=True)
def _(ws):
    return ["embed", ws.narrow, _with_record(ws, lambda r: _split(r).update(width=10**12))]


# == 5. options: NaN, negative, infinite, out of range, for every numeric option ====================

OPTION_VALUES = {
    ("check", "--active-tol"): ["nan", "-1", "inf"],
    ("check", "--complementarity-weight"): ["nan", "-1", "inf"],
    ("check", "--kink-tol"): ["nan", "-1", "inf", "2"],
    ("check", "--kkt-tol"): ["nan", "-1", "inf", "0"],
    ("check", "--approx-tol"): ["nan", "-1", "inf"],
    ("check", "--fail-above"): ["nan", "-1", "inf"],
    ("check", "--max-candidates"): ["0", "-1"],
    ("check", "--workers"): ["0", "-1", "100000"],
    ("embed", "--tol"): ["nan", "-1", "inf"],
    ("embed", "--active-tol"): ["nan", "-1", "inf"],
    ("reduce", "--tol"): ["nan", "-1", "inf"],
    ("split", "--copies"): ["-1", "0", "1", "1000001"],
    ("split", "--width"): ["-1", "0", str(2**31 + 1), str(10**30)],
    ("split", "--ratio"): ["nan", "inf", "-0.5", "1.5", "0.5,0.6", "", "a", "nan,nan"],
    ("split", "--neuron"): ["-1", "99", "a", ""],
    ("trace", "--steps"): ["0", "-1", str(10**13)],
    ("trace", "--lr"): ["nan", "-1", "inf", "0"],
    ("trace", "--batch"): ["0", "-1", "1000000"],
    ("trace", "--seed"): ["-1", str(2**64)],
    ("trace", "--every"): ["0", "-1"],
    ("trace", "--kkt-every"): ["-1"],
    ("trace", "--save-every"): ["-1"],
    ("trace", "--split"): ["copies=nan", "ratio=nan", "width=-1", "copies=0", "bogus", "neuron=-1", "layer=9"],
}


def _option_args(ws: Workspace, command: str, option: str, value: str) -> list:
    out = ws.tmp / "w.safetensors"
    return {
        "check": ["check", ws.narrow, option, value],
        "embed": ["embed", ws.narrow, ws.wide, option, value],
        "reduce": ["reduce", ws.wide, option, value],
        "split": ["split", ws.narrow, "-o", out, option, value],
        "trace": ["trace", ws.narrow, *(["--split", "copies=2"] if option != "--split" else []), "--steps", "2", option, value],
    }[command]


for (_command, _option), _values in OPTION_VALUES.items():
    for _value in _values:

        def _build(ws, command=_command, option=_option, value=_value):
            return _option_args(ws, command, option, value)

        CASES.append(Case(f"option/{_command}{_option}={_value}", _build, code=2, fragment=_option.lstrip("-").split("-")[0] if _option != "--split" else None))


COMMAND_LINE_ERRORS = {  # found by the command-line parser itself: one Error line too, naming --help
    "split-copies-1e9": ["split", "{narrow}", "-o", "{tmp}/w.safetensors", "--copies", "1e9"],
    "trace-steps-1e12": ["trace", "{narrow}", "--split", "copies=2", "--steps", "1e12"],
    "trace-seed-text": ["trace", "{narrow}", "--split", "copies=2", "--seed", "abc"],
    "check-unknown-option": ["check", "{narrow}", "--lr", "3"],
    "check-norm-l3": ["check", "{narrow}", "--norm", "l3"],
    "check-missing-checkpoint-argument": ["check"],
    "unknown-command": ["splitt", "{narrow}"],
}
for _name, _args in COMMAND_LINE_ERRORS.items():

    def _build(ws, args=_args):
        return [part.format(narrow=ws.narrow, tmp=ws.tmp) for part in args]

    CASES.append(Case(f"option/parser-{_name}", _build, code=2, fragment="--help"))


@case("option/memory-limit-variable-malformed", code=2, fragment="KKTEMBED_MEMORY_LIMIT", env={"KKTEMBED_MEMORY_LIMIT": "lots"})
def _(ws):
    return ["split", ws.narrow, "-o", ws.tmp / "w.safetensors"]


@case("option/trace-lr-1e308-diverges", code=1, fragment="non-finite")
def _(ws):
    return ["trace", ws.narrow, "--split", "copies=2", "--steps", "5", "--lr", "1e308"]


@case("option/arch-file-missing", code=2, fragment="no such")
def _(ws):
    return ["check", ws.narrow, "--arch", ws.tmp / "missing.json"]


# == 6. data that are not real numbers ============================================================


def _data_case(name: str, x: torch.Tensor, y: torch.Tensor, fragment: str | None = None):
    @case(f"data/{name}", code=1, fragment=fragment)
    def build(ws: Workspace):
        save_file({"x": x, "y": y}, str(ws.tmp / "d.safetensors"))
        return ["check", ws.narrow, "--data", ws.tmp / "d.safetensors"]


_X = torch.randn(6, 4, dtype=torch.float64)
_Y = torch.tensor([1, -1, 1, -1, 1, -1])
_data_case("complex-y", _X, _Y.to(torch.complex64), "complex")


@case("data/complex-x", code=1, fragment="complex")
def _(ws):
    complex_file(ws.tmp / "x.safetensors", {"x": (6, 4)}, labels=_Y)
    return ["check", ws.narrow, "--data", ws.tmp / "x.safetensors"]
_data_case("bool-x", _X > 0, _Y, "bool")
_data_case("bool-y", _X, _Y > 0, "bool")
_data_case("nan-x", torch.full((6, 4), math.nan, dtype=torch.float64), _Y, "NaN")
_data_case("inf-x", torch.full((6, 4), math.inf, dtype=torch.float64), _Y, "NaN")
_data_case("fractional-y", _X, torch.full((6,), 0.5, dtype=torch.float64), "integers")
_data_case("nan-y", _X, torch.full((6,), math.nan, dtype=torch.float64), "integers")
_data_case("y-not-pm1", _X, torch.arange(6), "±1")
_data_case("x-1d", torch.randn(6, dtype=torch.float64), _Y)
_data_case("x-empty", torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.int64))
_data_case("y-wrong-length", _X, _Y[:3])
_data_case("x-wrong-features", torch.randn(6, 5, dtype=torch.float64), _Y, "shape")


@case("data/named-set-seed-out-of-range", code=1, fragment="seed")
def _(ws):
    return ["check", ws.narrow, "--dataset", "gaussians:99999999999999999999"]


@case("data/named-set-bad-classes", code=1, fragment="digits")
def _(ws):
    return ["check", ws.narrow, "--dataset", "digits:3,3"]


@case("data/named-set-unknown", code=1, fragment="unknown data set")
def _(ws):
    return ["check", ws.narrow, "--dataset", "imagenet:1"]


@case("data/resume-rows-csv-field-too-large", code=1, fragment="--resume")
def _(ws):
    (ws.tmp / "rows.csv").write_text("checkpoint,sha256\n" + "x" * 200_000 + ",y\n")
    return ["check", ws.narrow, "--out", ws.tmp / "rows.csv", "--resume"]


# == 7. outputs that cannot or must not be written =================================================

OUTPUT_COMMANDS = {
    "split": lambda ws, target: ["split", ws.narrow, "-o", target, "--force"],
    "convert": lambda ws, target: ["convert", ws.narrow, "-o", target, "--force"],
    "reduce": lambda ws, target: ["reduce", ws.wide, "-o", target, "--force"],
    "save-multipliers": lambda ws, target: ["check", ws.narrow, "--save-multipliers", target, "--force"],
    "check-out": lambda ws, target: ["check", ws.narrow, "--out", target, "--force"],
    "check-plot": lambda ws, target: ["check", ws.narrow, "--plot", target, "--force"],
    "trace-plot": lambda ws, target: ["trace", ws.narrow, "--split", "copies=2", "--steps", "2", "--plot", target, "--force"],
    "trace-out": lambda ws, target: ["trace", ws.narrow, "--split", "copies=2", "--steps", "2", "--out", target, "--force"],
}


def _target(ws: Workspace, kind: str) -> Path:
    if kind == "folder":
        (ws.tmp / "afolder").mkdir()
        (ws.tmp / "afolder" / "keep.txt").write_text("keep")
        return ws.tmp / "afolder"
    if kind == "fifo":
        os.mkfifo(ws.tmp / "pipe")
        return ws.tmp / "pipe"
    if kind == "devnull":
        return Path("/dev/null")
    if kind == "symlink-to-devnull":
        os.symlink("/dev/null", ws.tmp / "null-link")
        return ws.tmp / "null-link"
    if kind == "read-only-folder":
        (ws.tmp / "readonly").mkdir(mode=0o555)
        return ws.tmp / "readonly" / "out.safetensors"
    if kind == "parent-is-a-file":
        (ws.tmp / "afile").write_text("x")
        return ws.tmp / "afile" / "out.safetensors"
    if kind == "name-too-long":
        return ws.tmp / ("long" + "w" * 300)
    if kind == "parent-name-too-long":
        return ws.tmp / ("long" + "w" * 300) / "out.safetensors"
    raise AssertionError(kind)


OUTPUT_KINDS = ["folder", "fifo", "devnull", "symlink-to-devnull", "read-only-folder", "parent-is-a-file", "name-too-long", "parent-name-too-long"]
for _command in OUTPUT_COMMANDS:
    for _kind in OUTPUT_KINDS:
        if _command == "trace-out" and _kind == "folder":
            continue  # a folder is what --out expects

        def _build(ws, command=_command, kind=_kind):
            if kind == "read-only-folder" and os.geteuid() == 0:
                pytest.skip("root writes into read-only folders")
            return OUTPUT_COMMANDS[command](ws, _target(ws, kind))

        CASES.append(Case(f"output/{_command}-onto-{_kind}", _build))


# == 8. data loss: nothing a command reads is ever overwritten, outputs never collide ===============


@case("loss/split-onto-metadata-data-file", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    return ["split", narrow, "-o", ws.tmp / "data.safetensors", "--force"]


@case("loss/save-multipliers-onto-metadata-data-file", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    return ["check", narrow, "--save-multipliers", ws.tmp / "data.safetensors", "--force"]


@case("loss/convert-onto-metadata-data-file", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    return ["convert", narrow, "-o", ws.tmp / "data.safetensors", "--force"]


@case("loss/reduce-onto-metadata-data-file", code=2, fragment="input of this command")
def _(ws):
    wide = ws.tmp / "wide.safetensors"
    wide.write_bytes(ws.wide.read_bytes())
    (ws.tmp / "data.safetensors").write_bytes(ws.data.read_bytes())
    return ["reduce", wide, "-o", ws.tmp / "data.safetensors", "--force"]


@case("loss/check-out-onto-metadata-data-file", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    return ["check", narrow, "--out", ws.tmp / "data.safetensors", "--force"]


@case("loss/split-onto-data-option", code=2, fragment="input of this command")
def _(ws):
    data = ws.tmp / "d.safetensors"
    data.write_bytes(ws.data.read_bytes())
    return ["split", ws.narrow, "--data", data, "-o", data, "--force"]


@case("loss/split-onto-arch-spec", code=2, fragment="input of this command")
def _(ws):
    (ws.tmp / "arch.json").write_text("{}")
    return ["split", ws.narrow, "--arch", ws.tmp / "arch.json", "-o", ws.tmp / "arch.json", "--force"]


@case("loss/split-onto-hard-link-of-input", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    os.link(narrow, ws.tmp / "link.safetensors")
    return ["split", narrow, "-o", ws.tmp / "link.safetensors", "--force"]


@case("loss/split-onto-symlink-to-input", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    os.symlink(narrow, ws.tmp / "link.safetensors")
    return ["split", narrow, "-o", ws.tmp / "link.safetensors", "--force"]


@case("loss/split-onto-input-other-spelling", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    return ["split", narrow, "-o", ws.tmp / "." / ".." / ws.tmp.name / narrow.name, "--force"]


@case("loss/split-onto-shard-of-input-folder", code=2, fragment="input of this command")
def _(ws):
    folder = ws.tmp / "ckpt"
    folder.mkdir()
    save_file({"0.weight": mlp_tensors()["0.weight"]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"2.weight": mlp_tensors()["2.weight"]}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"0.weight": "model-00001-of-00002.safetensors", "2.weight": "model-00002-of-00002.safetensors"}}))
    return ["split", folder, "-o", folder / "model-00002-of-00002.safetensors", "--force"]


@case("loss/split-onto-its-input", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    return ["split", narrow, "-o", narrow, "--force"]


@case("loss/trace-out-folder-holds-narrow", code=2, fragment="input of this command")
def _(ws):
    out = ws.tmp / "run"
    out.mkdir()
    (out / "narrow_final.safetensors").write_bytes(ws.narrow.read_bytes())
    (out / "data.safetensors").write_bytes(ws.data.read_bytes())
    (out / "kktembed-outputs.json").write_text(json.dumps({"files": ["narrow_final.safetensors", "data.safetensors"]}))
    return ["trace", out / "narrow_final.safetensors", "--split", "copies=2", "--steps", "2", "--out", out, "--force"]


@case("loss/trace-out-folder-holds-metadata-data", code=2, fragment="input of this command")
def _(ws):
    out = ws.tmp / "run"
    out.mkdir()
    narrow = ws.tmp / "narrow.safetensors"
    narrow.write_bytes(native(ws.tmp / "n.safetensors", mlp_tensors(), MLP, **{DATA_KEY: "run/data.safetensors"}).read_bytes())
    (ws.tmp / "n.safetensors").unlink()
    (out / "data.safetensors").write_bytes(ws.data.read_bytes())
    (out / "kktembed-outputs.json").write_text(json.dumps({"files": ["data.safetensors"]}))
    return ["trace", narrow, "--split", "copies=2", "--steps", "2", "--out", out, "--force"]


@case("loss/trace-out-is-the-input-file", code=1)
def _(ws):
    narrow = ws.copy_of_narrow()
    return ["trace", narrow, "--split", "copies=2", "--steps", "2", "--out", narrow, "--force"]


@case("loss/trace-plot-replaces-a-trace-output", code=2, fragment="would replace")
def _(ws):
    return ["trace", ws.narrow, "--split", "copies=2", "--steps", "2", "--out", ws.tmp / "run", "--plot", ws.tmp / "run" / "narrow_final.safetensors"]


@case("loss/trace-plot-replaces-series", code=2, fragment="would replace")
def _(ws):
    return ["trace", ws.narrow, "--split", "copies=2", "--steps", "2", "--out", ws.tmp / "run", "--plot", ws.tmp / "run" / "series.csv"]


@case("loss/trace-plot-is-the-input", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    return ["trace", narrow, "--split", "copies=2", "--steps", "2", "--plot", narrow, "--force"]


@case("loss/check-out-and-plot-collide", code=2, fragment="two outputs")
def _(ws):
    return ["check", ws.narrow, "--out", ws.tmp / "rows.csv", "--plot", ws.tmp / "rows.csv"]


@case("loss/check-save-multipliers-and-out-collide", code=2, fragment="two outputs")
def _(ws):
    return ["check", ws.narrow, "--out", ws.tmp / "x.csv", "--save-multipliers", ws.tmp / "x.csv"]


@case("loss/check-plot-and-out-collide-by-hard-link", code=2)
def _(ws):
    (ws.tmp / "rows.csv").write_text("")
    os.link(ws.tmp / "rows.csv", ws.tmp / "plot.png")
    return ["check", ws.narrow, "--out", ws.tmp / "rows.csv", "--plot", ws.tmp / "plot.png", "--force"]


@case("loss/check-out-onto-a-checkpoint-of-the-run", code=2, fragment="input of this command")
def _(ws):
    narrow = ws.copy_of_narrow()
    return ["check", narrow, ws.wide, "--out", narrow, "--force"]


# == the tests ====================================================================================


def run_case(c: Case, workspace: Workspace, run_cli, monkeypatch) -> tuple[int, str, str]:
    args = c.build(workspace)
    for key, value in c.env.items():
        monkeypatch.setenv(key, value)
    before = snapshot(workspace.shared, workspace.tmp)
    if c.bomb:
        monkeypatch.setenv("KKTEMBED_MEMORY_LIMIT", BOMB_MEMORY_LIMIT)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        resource.setrlimit(resource.RLIMIT_AS, (address_space_in_use() + BOMB_ADDRESS_SPACE, hard))
        try:
            result = run_cli(*args)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
        assert growth < BOMB_RSS_GROWTH, f"peak resident memory grew by {growth / 2**20:.0f} MiB"
    else:
        result = run_cli(*args)
    after = snapshot(workspace.shared, workspace.tmp)
    changed = sorted(set(before) ^ set(after)) + sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not changed, f"files created, removed or modified: {changed}\n{result[2]}"
    return result


@pytest.mark.parametrize("c", [pytest.param(c, id=c.name) for c in CASES])
def test_bad_input_is_refused_cleanly(c: Case, workspace, run_cli, monkeypatch):
    code, out, err = run_case(c, workspace, run_cli, monkeypatch)
    assert_refused(code, out, err, c.code, c.fragment)


# == numbers at the edges of float64: an answer with finite numbers, or a clean error, never both ====

EDGE_SCALES = [("theta", 1e300), ("theta", 1e-300), ("theta", 1e-310), ("theta", 0.0), ("x", 1e300), ("x", 1e-300), ("x", 1e-310)]
# the numbers each command's --json must give as finite floats when it succeeds
EDGE_NUMBERS = {
    "check": ("relative_stationarity_residual", "relative_complementarity_residual", "normalized_margin", "theta_hat_norm"),
    "inspect": ("theta_norm", "degree"),
    "split": ("norm_before", "norm_after", "coefficient_isometry_error"),
    "embed": ("relative_embedding_error", "coefficient_isometry_error"),
    "trace": ("max_trajectory_error", "final_loss_narrow", "final_normalized_margin_narrow"),
    "reduce": (),
}


def strict_json(text: str) -> dict:
    def refuse(constant):
        raise AssertionError(f"--json printed {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(("scaled", "factor"), EDGE_SCALES, ids=[f"{name}x{factor:g}" for name, factor in EDGE_SCALES])
def test_numbers_at_the_edges_of_float64(workspace, run_cli, scaled, factor):
    from safetensors.torch import load_file

    tensors, data = load_file(str(workspace.narrow)), load_file(str(workspace.data))
    if scaled == "theta":
        tensors = {key: value * factor for key, value in tensors.items()}
    else:
        data["x"] = data["x"] * factor
    save_file(data, str(workspace.tmp / "data.safetensors"))
    narrow = native(workspace.tmp / "narrow.safetensors", tensors, MLP, **{DATA_KEY: "data.safetensors"})
    wide = workspace.tmp / "wide.safetensors"
    runs = {
        "check": ["check", narrow, "--no-profile"],
        "inspect": ["inspect", narrow],
        "split": ["split", narrow, "-o", wide, "--neuron", "0"],
        "embed": ["embed", narrow, wide],
        "trace": ["trace", narrow, "--split", "copies=2", "--steps", "3"],
        "reduce": ["reduce", narrow, "--no-profile"],
    }
    for command, args in runs.items():
        if command == "embed" and not wide.exists():
            continue
        code, out, err = run_cli(*args, "--json")
        if code != 0:
            assert_refused(code, out, err, expected_code=1, fragment=None)
            continue
        result = strict_json(out)
        for key in EDGE_NUMBERS[command]:
            assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), (command, key, result[key])
        if command == "embed":  # the scale of θ must not change what the split is
            assert result["verdict"] == "isometric_embedding", result["verdict"]
        if command == "check" and scaled == "theta":  # nor the relative residuals (homogeneity)
            reference = strict_json(run_cli("check", workspace.narrow, "--no-profile", "--json")[1])
            for key in ("relative_stationarity_residual", "relative_complementarity_residual", "normalized_margin"):
                assert math.isclose(result[key], reference[key], rel_tol=1e-9, abs_tol=1e-14), (key, result[key], reference[key])
            assert result["verdict"] == reference["verdict"]


# == usage errors come back at once: refused before torch, numpy or cvxpy is imported ==============

FAST_USAGE_ERRORS = [
    ["split", "{narrow}", "-o", "{tmp}/w.safetensors", "--ratio", "nan"],
    ["split", "{narrow}", "-o", "{tmp}/w.safetensors", "--copies", "0"],
    ["split", "{narrow}", "-o", "{tmp}/w.safetensors", "--width", "-1"],
    ["split", "{narrow}", "-o", "{tmp}/w.safetensors", "--neuron", "a"],
    ["embed", "{narrow}", "{wide}", "--tol", "nan"],
    ["embed", "{narrow}", "{wide}", "--active-tol", "-1"],
    ["reduce", "{wide}", "--tol", "inf"],
    ["trace", "{narrow}", "--split", "bogus"],
    ["trace", "{narrow}", "--split", "ratio=nan"],
    ["trace", "{narrow}", "--split", "copies=2", "--lr", "nan"],
    ["trace", "{narrow}", "--split", "copies=2", "--seed", str(2**64)],
    ["trace", "{narrow}", "--split", "copies=2", "--steps", "0"],
    ["check", "{narrow}", "--kink-tol", "nan"],
    ["check", "{narrow}", "--complementarity-weight", "inf"],
    ["check", "{narrow}", "--fail-above", "nan"],
    ["check", "{narrow}", "--arch", "{tmp}/missing.json"],
]


def test_usage_errors_are_refused_before_heavy_imports(workspace):
    """One interpreter runs every case in turn and reports, after each, its exit status and which
    heavy libraries are loaded: a usage error must not wait for torch."""
    cases = [[part.format(narrow=workspace.narrow, wide=workspace.wide, tmp=workspace.tmp) for part in args] for args in FAST_USAGE_ERRORS]
    script = (
        "import json, sys\n"
        "from kktembed.cli import main\n"
        f"cases = {cases!r}\n"
        "for args in cases:\n"
        "    sys.argv = ['kktembed', *args]\n"
        "    try:\n        main()\n        code = 0\n    except SystemExit as exc:\n        code = exc.code\n"
        "    heavy = [m for m in ('torch', 'numpy', 'cvxpy', 'scipy') if m in sys.modules]\n"
        "    print(json.dumps([args, code, heavy]), flush=True)\n"
    )
    env = {**os.environ, "KKTEMBED_LOAD_PLUGINS": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(reports) == len(cases), result.stderr
    for args, code, heavy in reports:
        assert code == 2 and not heavy, (args, code, heavy)


def test_resumed_rows_that_are_not_ours_are_skipped(tmp_path):
    from kktembed.runs import read_rows

    lines = [nested_json(100_000), json.dumps([1, 2]), json.dumps({"checkpoint": "a", "sha256": "b", "options_key": "c", "n_support": "inf"}), "{cut sh"]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    assert read_rows(tmp_path / "rows.jsonl") == []


def test_corpus_covers_every_class():
    classes = {c.name.split("/")[0] for c in CASES}
    assert classes == {"file", "config", "record", "bomb", "option", "data", "output", "loss"}
    assert len(CASES) > 200
