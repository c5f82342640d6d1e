"""The architecture spec: everything the weights of a plain checkpoint cannot tell.

A JSON or TOML file (``--arch FILE``; ``kktembed.json`` / ``kktembed.toml`` beside a checkpoint
folder's files; ``--arch-config FILE``, the older name, reads the same format) with any of::

    adapter      "mlp", "cnn" or a plugin's adapter name (default: the one that claims the tensors)
    layers       ["fc1", "fc2", "fc3"]: the weight layers' module names in network order
    activation   "relu", "leaky_relu:0.01", "identity" (or a plugin's)
    input_shape  [d] or [C, H, W] (default: the data's)
    stride, padding   one int for every conv layer, or a list with one entry (int or [h, w]) per conv layer
    pool         null, "avg:K", "max:K", "avg:K:S", or a list with one entry per conv layer

Command-line ``--activation`` and ``--layers`` state the same fields; a value given twice
differently is refused. Imports nothing heavy, so that a bad spec is refused before torch loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kktembed.errors import UsageError
from kktembed.validation import parse_json

SPEC_FIELDS = ("adapter", "layers", "activation", "input_shape", "stride", "padding", "pool")
_CONV_FIELDS = ("stride", "padding", "pool")


@dataclass(frozen=True)
class ArchSpec:
    adapter: str | None = None
    layers: tuple[str, ...] | None = None
    activation: str | None = None
    input_shape: tuple[int, ...] | None = None
    conv: dict[str, Any] = field(default_factory=dict)  # stride / padding / pool as written
    source: str | None = None  # where it came from, for messages and reports

    @classmethod
    def from_file(cls, path: str | Path) -> "ArchSpec":
        """Read a JSON (``.json``) or TOML (``.toml``) spec; UsageError naming the problem."""
        from kktembed.outputs import note_read

        path = Path(path)
        try:
            text = path.read_text()
            note_read(path)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such architecture spec file")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: cannot read the architecture spec ({exc})")
        if path.suffix.lower() == ".toml":
            import tomllib

            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise UsageError(f"{path}: not valid TOML ({exc})")
            except RecursionError:
                raise UsageError(f"{path}: not valid TOML (nested too deeply)") from None
        else:
            data = parse_json(text, str(path), UsageError)
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str = "architecture spec") -> "ArchSpec":
        """Validate a spec given as a dict; every problem names the field."""
        if not isinstance(data, dict):
            raise UsageError(f"{source}: an architecture spec is an object with fields {', '.join(SPEC_FIELDS)}")
        unknown = sorted(set(data) - set(SPEC_FIELDS))
        if unknown:
            raise UsageError(f"{source}: unknown field(s) {', '.join(unknown)}", hint=f"known: {', '.join(SPEC_FIELDS)}")
        return cls(
            adapter=_optional_string(data, "adapter", source),
            layers=_layer_names(data.get("layers"), source),
            activation=_optional_string(data, "activation", source),
            input_shape=_input_shape(data.get("input_shape"), source),
            conv={key: _conv_value(key, data[key], source) for key in _CONV_FIELDS if key in data},
            source=source,
        )

    def with_options(self, activation: str | None = None, layers: str | list[str] | None = None) -> "ArchSpec":
        """This spec with ``--activation`` / ``--layers`` from the command line; a field stated twice
        with different values is a UsageError."""
        spec = self
        if activation is not None:
            if spec.activation is not None and spec.activation != activation:
                raise UsageError(f"--activation {activation!r} contradicts {spec.source}'s activation {spec.activation!r}")
            spec = replace(spec, activation=activation)
        if layers is not None:
            names = _layer_names(layers.split(",") if isinstance(layers, str) else list(layers), "--layers")
            if spec.layers is not None and spec.layers != names:
                raise UsageError(f"--layers {','.join(names)} contradicts {spec.source}'s layers {','.join(spec.layers)}")
            spec = replace(spec, layers=names)
        return spec

    def or_else(self, fallback: "ArchSpec | None") -> "ArchSpec":
        """Fields of this spec, the missing ones taken from ``fallback`` (e.g. a folder's spec)."""
        if fallback is None:
            return self
        return ArchSpec(
            adapter=self.adapter or fallback.adapter,
            layers=self.layers or fallback.layers,
            activation=self.activation or fallback.activation,
            input_shape=self.input_shape or fallback.input_shape,
            conv={**fallback.conv, **self.conv},
            source=" + ".join(filter(None, (self.source, fallback.source))) or None,
        )

    def hints(self, data_input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        """The ``hints`` of the ``kktembed_detect_adapter`` hook: ``activation``, ``arch_config``
        (stride/padding/pool/input_shape as a dict), ``layers``, ``input_shape``, ``adapter``."""
        arch_config = dict(self.conv)
        if self.input_shape is not None:
            arch_config["input_shape"] = list(self.input_shape)
        hints: dict[str, Any] = {"arch_config": arch_config}
        if self.activation is not None:
            hints["activation"] = self.activation
        if self.layers is not None:
            hints["layers"] = list(self.layers)
        if self.adapter is not None:
            hints["adapter"] = self.adapter
        input_shape = self.input_shape or data_input_shape
        if input_shape is not None:
            hints["input_shape"] = tuple(input_shape)
        return hints

    @classmethod
    def from_hints(cls, hints: dict[str, Any] | None) -> "ArchSpec":
        """The inverse of ``hints`` for callers of the older ``hints`` dicts."""
        hints = dict(hints or {})
        data = dict(hints.get("arch_config") or {})
        for key in ("activation", "layers", "adapter"):
            if hints.get(key) is not None:
                data[key] = hints[key]
        if hints.get("input_shape") is not None and "input_shape" not in data:
            data["input_shape"] = list(hints["input_shape"])
        return cls.from_mapping(data, "hints")

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {key: value for key, value in self.conv.items()}
        for key in ("adapter", "activation"):
            if getattr(self, key) is not None:
                result[key] = getattr(self, key)
        if self.layers is not None:
            result["layers"] = list(self.layers)
        if self.input_shape is not None:
            result["input_shape"] = list(self.input_shape)
        return result


def _optional_string(data: dict, key: str, source: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise UsageError(f"{source}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _layer_names(value: Any, source: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise UsageError(f"{source}: layers must be a non-empty list of layer names, got {value!r}")
    names = tuple(v.strip() for v in value)
    if len(set(names)) != len(names):
        raise UsageError(f"{source}: layers lists a name twice ({', '.join(names)})")
    return names


def _input_shape(value: Any, source: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) not in (1, 3)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise UsageError(f"{source}: input_shape must be [d] or [C, H, W] with positive integers, got {value!r}")
    if math.prod(value) > 2**31:
        raise UsageError(f"{source}: input_shape {list(value)} is implausibly large")
    return tuple(value)


def _conv_value(key: str, value: Any, source: str) -> Any:
    """Validate stride (≥ 1), padding (≥ 0) and pool: one value for every conv layer, or a list
    with one entry per conv layer; stride/padding entries are an int or a pair [h, w]."""
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise UsageError(f"{source}: {key} is an empty list")
    for entry in entries:
        if key == "pool":
            _check_pool(entry, source)
            continue
        pair = entry if isinstance(entry, list) else [entry]
        low = 1 if key == "stride" else 0
        if len(pair) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= 4096 for v in pair):
            raise UsageError(f"{source}: {key} must be an integer ≥ {low} or a pair [h, w] (a list gives one per conv layer), got {value!r}")
    return value


def _check_pool(entry: Any, source: str) -> None:
    if entry in (None, "", "none"):
        return
    parts = str(entry).split(":") if isinstance(entry, str) else []
    ok = len(parts) in (2, 3) and parts[0] in ("avg", "max") and all(p.isdigit() and 1 <= int(p) <= 4096 for p in parts[1:])
    if not ok:
        raise UsageError(f'{source}: pool must be null, "avg:K", "max:K" or "MODE:K:STRIDE", got {entry!r}')
