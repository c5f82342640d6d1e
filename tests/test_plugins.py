"""The plugin system: built-ins through hooks, entry points, broken plugins, start-up cost."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from kktembed import hookspecs


def make_distribution(root, name, module_source, version="1.2.3"):
    """A minimal installed distribution with a ``kktembed`` entry point, importable from ``root``."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[kktembed]\n{name} = {name}\n")


def run_kktembed(*args, pythonpath=None, load=None):
    env = {key: value for key, value in os.environ.items() if key != "KKTEMBED_LOAD_PLUGINS"}
    if load is not None:
        env["KKTEMBED_LOAD_PLUGINS"] = load
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "kktembed", *args], capture_output=True, text=True, env=env)


GOOD_PLUGIN = """
from kktembed import hookimpl

@hookimpl
def kktembed_register_datasets(register):
    register("tiny", lambda args: ([[1.0], [-1.0]], [1, -1]), "two points")
"""

DUPLICATE_PLUGIN = """
from kktembed import hookimpl
from kktembed.adapters.mlp import MLPAdapter

@hookimpl
def kktembed_register_adapters(register):
    register(MLPAdapter())
"""


MISSPELLED_PLUGIN = """
from kktembed import hookimpl

@hookimpl
def kktembed_register_adaptors(register):
    pass
"""

RAISING_PLUGIN = """
from kktembed import hookimpl

@hookimpl
def kktembed_register_datasets(register):
    raise SystemExit(0)
"""


@pytest.fixture
def plugin_dir(tmp_path):
    make_distribution(tmp_path, "goodplug", GOOD_PLUGIN)
    make_distribution(tmp_path, "brokenplug", "raise RuntimeError('boom at import')\n")
    make_distribution(tmp_path, "dupplug", DUPLICATE_PLUGIN)
    return tmp_path


def test_plugins_that_exit_or_misspell_a_hook_are_skipped_with_a_warning(tmp_path, fixtures_dir):
    make_distribution(tmp_path, "exitplug", "import sys\nsys.exit(0)\n")
    make_distribution(tmp_path, "typoplug", MISSPELLED_PLUGIN)
    make_distribution(tmp_path, "raiseplug", RAISING_PLUGIN)
    result = run_kktembed("check", str(fixtures_dir / "mlp_kkt_gaussians.safetensors"), "--json", "--no-profile", pythonpath=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "kkt"
    listing = run_kktembed("plugins", pythonpath=tmp_path)  # builds every registry, datasets included
    assert listing.returncode == 0 and "goodplug" not in listing.stdout
    for output, name, fragment in ((result, "exitplug", "SystemExit"), (result, "typoplug", "kktembed_register_adaptors"), (listing, "raiseplug", "SystemExit")):
        assert any(name in line and fragment in line for line in output.stderr.splitlines() if line.startswith("Warning:")), (name, output.stderr)


def test_plugins_json_lists_builtins_and_installed(plugin_dir):
    result = run_kktembed("plugins", "--json", pythonpath=plugin_dir)
    assert result.returncode == 0, result.stderr
    infos = {info["name"]: info for info in json.loads(result.stdout)["plugins"]}
    assert infos["kktembed.adapters.builtin"]["adapters"] == ["mlp", "cnn"]
    assert "digits" in infos["kktembed.datasets"]["datasets"]
    assert infos["kktembed.strategies.builtin"]["strategies"] == ["isometric", "net2net"]
    assert infos["goodplug"]["version"] == "1.2.3" and infos["goodplug"]["datasets"] == ["tiny"]
    assert "brokenplug" not in infos
    assert "Warning: plugin 'brokenplug'" in result.stderr and "boom at import" in result.stderr
    assert "dupplug" in result.stderr and "already registered" in result.stderr


def test_load_plugins_variable_selects(plugin_dir):
    result = run_kktembed("plugins", "--json", pythonpath=plugin_dir, load="goodplug")
    names = {info["name"] for info in json.loads(result.stdout)["plugins"]}
    assert "goodplug" in names and "dupplug" not in names
    assert "brokenplug" not in result.stderr
    result = run_kktembed("plugins", "--json", pythonpath=plugin_dir, load="")
    names = {info["name"] for info in json.loads(result.stdout)["plugins"]}
    assert names == {"kktembed.adapters.builtin", "kktembed.strategies.builtin", "kktembed.datasets"}


def test_plugin_dataset_is_usable(plugin_dir):
    result = run_kktembed("plugins", pythonpath=plugin_dir, load="goodplug")
    assert "tiny" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["check", "--help"]])
def test_fast_commands_do_not_import_heavy_libraries(args):
    code = (
        "import sys\n"
        f"sys.argv = ['kktembed', *{args!r}]\n"
        "from kktembed.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'cvxpy', 'numpy', 'sklearn') if m in sys.modules]\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "KKTEMBED_LOAD_PLUGINS": ""})
    assert "HEAVY=" in result.stderr
    assert result.stderr.split("HEAVY=")[1].strip() == ""


def test_every_hook_is_documented():
    hooks = [name for name in dir(hookspecs) if name.startswith("kktembed_")]
    assert {"kktembed_register_adapters", "kktembed_detect_adapter", "kktembed_register_split_strategies", "kktembed_register_datasets"} <= set(hooks)
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert len(doc.split()) >= 20, f"{name} needs a docstring that says when it is called, its arguments and return value"
