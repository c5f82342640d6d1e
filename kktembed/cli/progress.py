"""Progress on stderr: a rich bar with ETA on a terminal, a line every few seconds otherwise (logs,
pipes, --json runs), so that long work is never silent."""

from __future__ import annotations

import contextlib
import sys
import time

LINE_INTERVAL = 10.0  # seconds between lines when stderr is not a terminal


@contextlib.contextmanager
def progress_bar(label: str, total: int, unit: str):
    """Yield ``advance(completed)``; ``total`` may be changed later with ``advance(completed, total=n)``."""
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(label, total=total)
            yield lambda completed, total=None: progress.update(task, completed=completed, total=total)
        return
    state = {"total": total, "started": time.monotonic(), "printed": time.monotonic()}

    def advance(completed: int, total: int | None = None) -> None:
        if total is not None:
            state["total"] = total
        now = time.monotonic()
        if now - state["printed"] < LINE_INTERVAL and completed < state["total"]:
            return
        state["printed"] = now
        elapsed = now - state["started"]
        eta = f"{elapsed / completed * (state['total'] - completed):.0f} s" if completed else "unknown"
        print(f"{label}: {completed:,}/{state['total']:,} {unit}, {elapsed:.0f} s elapsed, ETA {eta}", file=sys.stderr, flush=True)

    yield advance
