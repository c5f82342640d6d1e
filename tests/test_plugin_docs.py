"""docs/plugins.md: the minimal plugin in it works, and every hook is in its table."""

import re
import types

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT
from kktembed import hookspecs
from kktembed.plugins import get_plugin_manager, reset_plugin_manager
from kktembed.testing import assert_adapter_conforms

DOC = (ROOT / "docs" / "plugins.md").read_text()


def example_module():
    source = re.search(r"## A minimal complete plugin.*?```python\n(.*?)```", DOC, re.S).group(1)
    module = types.ModuleType("docs_example_plugin")
    exec(compile(source, "docs/plugins.md", "exec"), module.__dict__)
    return module


def test_every_hook_is_in_the_authors_guide():
    for name in (n for n in dir(hookspecs) if n.startswith("kktembed_")):
        assert f"`{name}(" in DOC, name


def test_documented_example_conforms():
    module = example_module()
    assert_adapter_conforms(module.TwoLayerNet(), {"inputs": 3, "width": 4, "outputs": 1}, detect=module.kktembed_detect_adapter)


@pytest.fixture
def registered_example():
    reset_plugin_manager()
    get_plugin_manager().register(example_module(), name="docs_example")
    yield
    reset_plugin_manager()


def test_documented_example_runs_check_and_split(registered_example, run_cli, tmp_path):
    generator = torch.Generator().manual_seed(0)
    save_file(
        {"hidden.weight": torch.randn(4, 2, generator=generator, dtype=torch.float64), "out.weight": torch.randn(1, 4, generator=generator, dtype=torch.float64)},
        tmp_path / "named.safetensors",
    )
    code, out, err = run_cli("inspect", tmp_path / "named.safetensors", "--dataset", "gaussians", "--json")
    assert code == 0, err
    assert '"adapter": "two-layer-named"' in out
    code, out, err = run_cli("split", tmp_path / "named.safetensors", "-o", tmp_path / "wide.safetensors", "--dataset", "gaussians", "--copies", "3", "--json")
    assert code == 0, err
    code, out, err = run_cli("embed", tmp_path / "named.safetensors", tmp_path / "wide.safetensors", "--dataset", "gaussians", "--json")
    assert code == 0, err
    assert '"verdict": "isometric_embedding"' in out
