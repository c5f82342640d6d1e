"""Range checks for user-given numbers (options, spec fields): a UsageError (exit 2) naming the
option, raised before any work. NaN never passes: every comparison is written so that it fails."""

from __future__ import annotations

import math

from kktembed.errors import UsageError


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
