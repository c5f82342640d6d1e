"""Helpers shared by command modules: reading options into hints, loading, progress."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from kktembed.errors import UsageError


def architecture_hints(activation: str | None, arch_config: Path | None) -> dict:
    """The ``hints`` of the adapter-detection hook from --activation and --arch-config."""
    hints: dict = {}
    if activation:  # validated by the adapter that claims the checkpoint (plugins may add activations)
        hints["activation"] = activation
    if arch_config:
        try:
            hints["arch_config"] = json.loads(Path(arch_config).read_text())
        except FileNotFoundError:
            raise UsageError(f"{arch_config}: no such file")
        except json.JSONDecodeError as exc:
            raise UsageError(f"{arch_config}: not valid JSON ({exc})")
        if not isinstance(hints["arch_config"], dict):
            raise UsageError(f"{arch_config}: expected a JSON object")
    return hints


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


def guard_output(path: Path, force: bool, inputs: list[Path | None]) -> None:
    """Refuse an output that is one of the inputs (even with --force) or that exists without --force."""
    from kktembed.errors import OutputExistsError

    target = Path(path).resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == target:
            raise UsageError(f"{path} is an input of this command; refusing to overwrite it", hint="choose another output file")
    if target.exists() and not force:
        raise OutputExistsError(f"{path} exists", hint="pass --force to overwrite it")
