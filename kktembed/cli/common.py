"""Helpers shared by command modules: reading options into hints, loading, progress."""

from __future__ import annotations

import contextlib
from pathlib import Path

from kktembed.errors import UsageError


def arch_spec(arch: Path | None, arch_config: Path | None, activation: str | None, layers: str | None):
    """The architecture spec from --arch (or its older name --arch-config), --activation and --layers;
    validated before torch loads."""
    from kktembed.archspec import ArchSpec

    if arch is not None and arch_config is not None:
        raise UsageError("--arch and --arch-config are the same option; give one")
    path = arch if arch is not None else arch_config
    spec = ArchSpec.from_file(path) if path is not None else ArchSpec()
    return spec.with_options(activation=activation, layers=layers)


@contextlib.contextmanager
def progress_steps(enabled: bool = True):
    """Yield an ``on_step(message)`` callback that shows a spinner with the current step on stderr."""
    if not enabled:
        yield lambda message: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("starting") as status:
        yield lambda message: status.update(f"{message} …")
