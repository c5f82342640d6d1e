"""What kktembed writes: checks before any output is written (MATH-free, torch-free).

Rules: an output is never one of the command's inputs (even with --force); an existing output
needs --force.
"""

from __future__ import annotations

from pathlib import Path

from kktembed.errors import OutputExistsError, UsageError


def guard_output(path: str | Path, force: bool, inputs: list) -> None:
    """Refuse an output that is one of the inputs (even with --force) or that exists without --force."""
    target = Path(path).resolve()
    for source in inputs:
        if source is not None and isinstance(source, (str, Path)) and Path(source).resolve() == target:
            raise UsageError(f"{path} is an input of this command; refusing to overwrite it", hint="choose another output file")
    if target.exists() and not force:
        raise OutputExistsError(f"{path} exists", hint="pass --force to overwrite it")
