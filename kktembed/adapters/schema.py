"""Schema checks for adapter configs, which come from checkpoint metadata and so are untrusted input:
every field's type and range is checked, with the field named, before anything is built."""

from __future__ import annotations

from typing import Any

from kktembed.errors import ArchitectureError

MAX_SIZE = 2**31  # no width, channel count or spatial size beyond this is plausible


class ConfigError(ArchitectureError):
    """A config (e.g. metadata ``kktembed.config``) with a missing or malformed field."""


def require_object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def require_int(value: Any, where: str, low: int = 1, high: int = MAX_SIZE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where} must be an integer from {low} to {high:,}, got {value!r}")
    return value


def require_ints(value: Any, where: str, length: int | None = None, low: int = 1, min_length: int = 1) -> list[int]:
    if not isinstance(value, list) or (length is not None and len(value) != length) or len(value) < min_length:
        expected = f"{length}" if length is not None else f"at least {min_length}"
        raise ConfigError(f"{where} must be a list of {expected} integers, got {value!r}")
    return [require_int(item, f"{where}[{i}]", low=low) for i, item in enumerate(value)]


def require_name(value: Any, where: str) -> str:
    """A module name as it appears in state_dict keys: non-empty parts separated by dots."""
    if not isinstance(value, str) or not value or any(not part.strip() or part != part.strip() for part in value.split(".")):
        raise ConfigError(f"{where} must be a layer name like 'fc1' or 'features.0', got {value!r}")
    return value


def require_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    return value


def require_keys(config: dict, required: tuple[str, ...], where: str) -> None:
    missing = [key for key in required if key not in config]
    if missing:
        raise ConfigError(f"{where} lacks field(s) {', '.join(missing)}")
