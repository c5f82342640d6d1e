import os
import sys
from pathlib import Path

import pytest

# Tests never load installed third-party plugins by accident.
os.environ["KKTEMBED_LOAD_PLUGINS"] = ""

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run ``kktembed ARGS`` in-process; return (exit code, stdout, stderr)."""
    from kktembed.cli import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["kktembed", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
