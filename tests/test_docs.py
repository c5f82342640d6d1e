"""Docs are tested: the README's two commands, every command's help with examples."""

import re

import pytest

from conftest import ROOT

COMMANDS = ["check", "inspect", "split", "embed", "trace", "plugins"]


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile.split("\ntest:")[1].split("\n\n")[0]
    assert "pytest" in test_recipe and "plugins/kktembed-squared-relu/tests" in test_recipe
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_demo_command_runs(run_cli):
    makefile = (ROOT / "Makefile").read_text()
    demo_line = makefile.split("\ndemo:")[1].split("\n\n")[0].strip().splitlines()[-1]
    args = demo_line.split("kktembed ", 1)[1].split()
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "verdict" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(run_cli, command):
    code, out, _ = run_cli(command, "--help")
    assert code == 0
    assert "Examples" in out and f"kktembed {command}" in out
