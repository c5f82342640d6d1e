"""Checks of untrusted values, before any work: range checks for user-given numbers (options, spec
fields; a UsageError, exit 2, naming the option; NaN never passes: every comparison is written so
that it fails) and strict parsing of JSON read from files (``parse_json``)."""

from __future__ import annotations

import math

from kktembed.errors import KktembedError, UsageError


def require_number(value, name: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False) -> float:
    """A finite real number in [low, high] (or (low, high] with ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bounds = []
        if low > -math.inf:
            bounds.append(f"{'>' if low_open else '≥'} {low:g}")
        if high < math.inf:
            bounds.append(f"≤ {high:g}")
        raise UsageError(f"{name} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}, got {value}")
    return float(value)


def require_integer(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """An integer (not a bool) in [low, high]."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = " and ".join(filter(None, (f"≥ {low}" if low is not None else "", f"≤ {high:,}" if high is not None else "")))
        raise UsageError(f"{name} must be an integer{' ' + bounds if bounds else ''}, got {value!r}")
    return value


def parse_json(text: str | bytes, what: str, error: type[KktembedError], constants: bool = False):
    """JSON from an untrusted source (metadata, headers, index files): ``error`` naming ``what`` for
    malformed text, for nesting too deep to parse (RecursionError) and, unless ``constants`` (for
    documents whose every number a schema checks, naming the field), for the non-standard
    constants NaN and Infinity, which Python's json would otherwise accept."""
    import json

    def refuse_constant(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=None if constants else refuse_constant)
    except RecursionError:
        raise error(f"{what} is not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise error(f"{what} is not valid JSON ({exc})") from None
