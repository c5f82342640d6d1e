"""Compute resources: the memory limit, torch's intra-op thread count, and the compute device.

Importing this module imports only the standard library; torch is imported inside the functions
that need it. Memory checks call ``ensure_fits`` before a large allocation, so that a problem too
big for the machine is refused with its estimate instead of being killed by the kernel.

The limit is ``KKTEMBED_MEMORY_LIMIT`` when set (``"8GiB"``, ``"500MB"``, ``"1.5G"`` or plain bytes),
else ``AVAILABLE_FRACTION`` of the memory the kernel reports as available (``MemAvailable`` in
/proc/meminfo, else ``os.sysconf``, else ``FALLBACK_LIMIT``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from kktembed.errors import UsageError

MEMORY_LIMIT_VARIABLE = "KKTEMBED_MEMORY_LIMIT"
AVAILABLE_FRACTION = 0.8
FALLBACK_LIMIT = 4 * 2**30
# Decimal units are powers of 1000, binary units (and the bare letters, as in `docker --memory`) of 1024.
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")
SIZE_HELP = 'a size such as "8GiB", "500MB", "1.5G" or a number of bytes'


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``"8GiB"`` → 8·2³⁰, ``"500MB"`` → 5·10⁸, ``"1.5G"`` → 1.5·2³⁰, ``"123"`` → 123."""
    match = _SIZE_PATTERN.fullmatch(str(text))
    unit = match.group(2).lower() if match else None
    if unit not in _UNITS:
        raise UsageError(f"invalid size {text!r}", hint=f"use {SIZE_HELP}")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n_bytes: float) -> str:
    """``n_bytes`` in binary units with three significant figures: 2254857830 → ``"2.10 GiB"``."""
    value, unit = float(n_bytes), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, larger
    return f"{int(value)} B" if unit == "B" else f"{value:.3g} {unit}"


def available_memory_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """Memory the kernel can give without swapping: MemAvailable, else free pages, else None."""
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def memory_limit_bytes() -> int:
    """The memory a single large allocation plan may use (module docstring)."""
    configured = os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip()
    if configured:
        try:
            return parse_size(configured)
        except UsageError as error:
            raise UsageError(f"{MEMORY_LIMIT_VARIABLE}: {error.message}", hint=error.hint) from None
    available = available_memory_bytes()
    return int(AVAILABLE_FRACTION * available) if available else FALLBACK_LIMIT


def ensure_fits(needed_bytes: int, what: str, hint: str, limit: int | None = None) -> None:
    """Raise UsageError if ``needed_bytes`` (an estimate for ``what``) exceeds ``limit`` (default:
    ``memory_limit_bytes()``); the message gives both numbers, the hint what to lower and how to
    raise the limit."""
    limit = memory_limit_bytes() if limit is None else limit
    if needed_bytes > limit:
        raise UsageError(
            f"{what} needs about {format_size(needed_bytes)}, over the memory limit of {format_size(limit)}",
            hint=f"{hint}, or set {MEMORY_LIMIT_VARIABLE} (e.g. {MEMORY_LIMIT_VARIABLE}=16GiB) if the machine has more",
        )


# Threads. Measured with benchmarks/bench_gram.py --threads [--busy] on a 2-core machine shared with
# other jobs (two runs each). With one core kept busy by another process, 2 intra-op threads were
# slower than 1 on every problem tried: the Gram matrix of 200 constraints of a 64-16-16-1 MLP
# 1.8 ms against 290 ms, of 500 constraints of a 64-64-64-1 MLP 1.5–19×, of 16,173 constraints of a
# 64-256-256-10 MLP 2.4–3.3× (the weighted gradient alike). Without that process, 2 threads won by
# 1.2–1.8× while the other jobs left a core free and lost by up to 3.7× while they did not.
# Hence: one thread below SMALL_WORK floating-point operations, and above it no more threads than
# the load average leaves idle cores.
SMALL_WORK = 1e9


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for_work(work: float, current: int) -> int:
    """Intra-op threads for ``work`` floating-point operations, at most ``current``: 1 below
    SMALL_WORK; else the cores not busy with other work by the 1-minute load average (one unit of
    the load is taken to be this process)."""
    if work < SMALL_WORK:
        return 1
    try:
        others = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:
        others = 0.0
    return max(1, min(current, usable_cores() - int(others)))


@contextmanager
def torch_threads(count: int) -> Iterator[int]:
    """Run the block with ``count`` torch intra-op threads; the previous setting is restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


@contextmanager
def intra_op_threads(work: float) -> Iterator[int]:
    """Run the block with ``threads_for_work(work, torch.get_num_threads())`` intra-op threads,
    then restore torch's previous setting. Yields the count used."""
    import torch

    with torch_threads(threads_for_work(work, torch.get_num_threads())) as count:
        yield count


DEVICE_HELP = 'use "cpu", "cuda" (or "cuda:N") or "auto"'


def resolve_device(device=None):
    """The torch device for ``device``: None or "cpu" → CPU; "auto" → the first GPU if torch sees
    one, else the CPU; "cuda"/"cuda:N" (or a torch.device) → that GPU, a UsageError without one."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}", hint=DEVICE_HELP) from None
    if resolved.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {device!r}", hint=DEVICE_HELP)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but torch sees no CUDA GPU", hint='use --device cpu or "auto"')
    return resolved
