"""The example plugin: conformance kit in-process, and the installed entry point end to end."""

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch
from safetensors.torch import save_file

from kktembed.testing import assert_adapter_conforms
from kktembed_squared_relu import plugin

ENV = {**os.environ, "KKTEMBED_LOAD_PLUGINS": "squared_relu"}


@pytest.mark.parametrize("widths", [[2, 4, 1], [3, 5, 4, 1], [3, 4, 3]])
def test_adapter_passes_the_conformance_kit(widths):
    assert_adapter_conforms(
        plugin.SquaredReLUMLP(), {"widths": widths}, strategy=plugin.PowerSplit(), detect=plugin.kktembed_detect_adapter, detect_hints={"activation": "squared_relu"}
    )


def test_degree_is_not_the_depth():
    assert plugin.SquaredReLUMLP().degree({"widths": [2, 4, 1]}) == 3
    assert plugin.SquaredReLUMLP().degree({"widths": [2, 4, 4, 1]}) == 7


def kktembed(*args, expect=0):
    result = subprocess.run([sys.executable, "-m", "kktembed", *map(str, args)], capture_output=True, text=True, env=ENV)
    assert result.returncode == expect, result.stderr
    return result


@pytest.fixture
def checkpoint(tmp_path):
    """A plain squared-ReLU MLP 2-4-1 that separates the paper's Gaussians: Φ ≈ (x₁ − x₂)|x₁ − x₂|."""
    generator = torch.Generator().manual_seed(0)
    first = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    second = torch.tensor([[0.5, -0.5, 0.5, -0.5]], dtype=torch.float64)
    state = {"0.weight": first + 0.05 * torch.randn(4, 2, generator=generator, dtype=torch.float64), "2.weight": second}
    path = tmp_path / "squared.safetensors"
    save_file(state, path)
    return path


def test_entry_point_is_installed_and_listed():
    assert metadata.distribution("kktembed-squared-relu").version == "0.1.0"
    infos = {info["name"]: info for info in json.loads(kktembed("plugins", "--json").stdout)["plugins"]}
    info = infos["squared_relu"]
    assert (info["version"], info["builtin"], info["adapters"], info["strategies"], info["datasets"]) == ("0.1.0", False, ["squared-relu-mlp"], ["power"], [])
    assert set(info["descriptions"]) == {"adapter:squared-relu-mlp", "strategy:power"}


def test_check_split_embed_trace_end_to_end(checkpoint, tmp_path):
    common = ["--activation", "squared_relu", "--dataset", "gaussians"]
    result = json.loads(kktembed("check", checkpoint, *common, "--json").stdout)
    assert result["adapter"] == "squared-relu-mlp" and result["degree"] == 3 and result["euler_error"] < 1e-12
    assert result["q_min"] > 0 and result["verdict"] in ("kkt", "approximate", "not_kkt")
    refused = kktembed("split", checkpoint, "-o", tmp_path / "iso.safetensors", *common, expect=2)
    assert "1-homogeneous" in refused.stderr and not (tmp_path / "iso.safetensors").exists()
    summary = json.loads(kktembed("split", checkpoint, "-o", tmp_path / "wide.safetensors", *common, "--neuron", "1", "--ratio", "0.3", "--strategy", "power", "--json").stdout)
    assert summary["output_error"] < 1e-12 and summary["norm_after"] > summary["norm_before"]
    embedded = json.loads(kktembed("embed", checkpoint, tmp_path / "wide.safetensors", "--dataset", "gaussians", "--activation", "squared_relu", "--json").stdout)
    assert embedded["verdict"] == "not_isometric" and embedded["output_error"] < 1e-12 and embedded["relative_embedding_error"] == 0.0
    traced = json.loads(kktembed("trace", checkpoint, *common, "--split", "copies=2;strategy=power", "--steps", "50", "--lr", "0.01", "--json").stdout)
    assert traced["steps"] == 50 and traced["max_trajectory_error"] > 0
    control = json.loads(kktembed("trace", checkpoint, *common, "--split", "copies=2;strategy=net2net", "--steps", "50", "--lr", "0.01", "--json").stdout)
    assert control["steps"] == 50
