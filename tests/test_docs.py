"""Docs are tested: the README's two commands, every command's help with examples."""

import re

import pytest

from conftest import ROOT

COMMANDS = ["check", "inspect", "split", "embed", "trace", "reduce", "convert", "plugins"]


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


REPRODUCE_ROWS = {
    "gd_separable": "GD, separable",
    "gd_nonseparable": "GD, non-separable",
    "sgd_identical": "SGD, identical batches",
    "sgd_different": "SGD, different batches",
    "gd_cnn": "GD, CNN",
    "sgd_digits_mlp": "digits 3 vs 5, MLP",
    "sgd_digits_cnn": "digits 3 vs 5, CNN",
}


def short(value: float) -> str:
    """2.6e-13 style: two significant digits, no zero-padded exponent."""
    return re.sub(r"e([+-])0(\d)", r"e\1\2", f"{value:.1e}")


def test_reproduction_table_matches_the_recorded_runs():
    """Each row's number is the one its run wrote, and its command is the script's."""
    import json

    doc = (ROOT / "docs" / "reproduce.md").read_text()
    script = (ROOT / "docs" / "reproduce_paper.sh").read_text().replace("\\\n", " ")
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| ") and "|" in line[2:]}
    for name, label in REPRODUCE_ROWS.items():
        summary = json.loads((ROOT / "docs" / "reproduce" / f"{name}.json").read_text())
        row = next(line for key, line in rows.items() if key.endswith(label))
        assert short(summary["max_trajectory_error"]) in row, (name, row)
        assert f"({short(summary['max_relative_trajectory_error'])})" in row, (name, row)
        command = next(line for line in script.splitlines() if line.startswith(f"run {name} "))
        arguments = " ".join(command.split()[2:]).replace(' "$OUT/', " docs/reproduce/").replace('"', "").replace(" --force", "")
        assert " ".join(arguments.split()) in " ".join(doc.replace("\\\n", " ").split()), name
