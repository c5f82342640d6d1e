"""Adapters: plain state_dict detection, round trips, homogeneity checks, unit descriptions."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import FIXTURES
from helpers import CNN_CONFIG, MLP_CONFIG, random_inputs, random_network
from kktembed import hookimpl
from kktembed.adapters.mlp import MLPAdapter
from kktembed.checkpoint import load_network, save_checkpoint
from kktembed.loading import load_network_and_data
from kktembed.errors import ArchitectureError, NotHomogeneousError
from kktembed.homogeneity import homogeneity_report, verify_homogeneity


def test_plain_mlp_is_detected_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 5, bias=True), torch.nn.LeakyReLU(0.2), torch.nn.Linear(5, 4, bias=False), torch.nn.LeakyReLU(0.2), torch.nn.Linear(4, 1, bias=False)
    ).double()
    save_file(model.state_dict(), tmp_path / "plain.safetensors")
    network = load_network(tmp_path / "plain.safetensors", {"activation": "leaky_relu:0.2"})
    assert network.adapter.name == "mlp" and network.degree == 3
    assert network.config["widths"] == [6, 5, 4, 1] and network.config["first_layer_bias"]
    x = torch.randn(7, 6, dtype=torch.float64)
    assert torch.allclose(network.forward(x), model(x), atol=1e-14)


def test_plain_cnn_needs_and_uses_arch_config(tmp_path, run_cli):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1, bias=False), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(48, 1, bias=False)
    ).double()
    save_file(model.state_dict(), tmp_path / "cnn.safetensors")
    x = torch.rand(9, 1, 8, 8, dtype=torch.float64)
    save_file({"x": x, "y": torch.where(model(x)[:, 0] > 0, 1, -1)}, tmp_path / "data.safetensors")
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"padding": 1, "pool": "max:2"}))
    network, _ = load_network_and_data(tmp_path / "cnn.safetensors", data=str(tmp_path / "data.safetensors"), hints={"arch_config": {"padding": 1, "pool": "max:2"}})
    assert network.adapter.name == "cnn" and network.degree == 2
    assert torch.allclose(network.forward(x), model(x), atol=1e-14)
    # without the padding and pooling the flatten size does not fit: a clear error
    code, _, err = run_cli("inspect", tmp_path / "cnn.safetensors", "--data", tmp_path / "data.safetensors")
    assert code == 1 and "flatten" in err and "--arch-config" in err
    code, out, err = run_cli("check", tmp_path / "cnn.safetensors", "--data", tmp_path / "data.safetensors", "--arch-config", arch, "--json")
    assert code == 0, err
    assert json.loads(out)["degree"] == 2


@pytest.mark.parametrize("adapter,config", [("mlp", MLP_CONFIG), ("cnn", CNN_CONFIG)])
def test_checkpoint_round_trip(tmp_path, adapter, config):
    network = random_network(adapter, config)
    save_checkpoint(tmp_path / "net.safetensors", network)
    loaded = load_network(tmp_path / "net.safetensors")
    assert loaded.config == network.config
    x = random_inputs(network, 5)
    assert torch.equal(loaded.forward(x), network.forward(x))


@pytest.mark.parametrize("adapter,config", [("mlp", MLP_CONFIG), ("cnn", CNN_CONFIG)])
def test_builtin_adapters_are_homogeneous(adapter, config):
    network = random_network(adapter, config)
    report = verify_homogeneity(network, random_inputs(network, 16))
    assert report.euler_error < 1e-12 and report.scaling_error < 1e-12
    assert report.estimated_degree == pytest.approx(network.degree)


class BiasedMLP(MLPAdapter):
    """A deliberately broken adapter: biases in every layer, declared degree unchanged."""

    name = "biased-mlp"

    def build(self, config):
        module = super().build(config)
        for layer in module:
            if isinstance(layer, torch.nn.Linear) and layer.bias is None:
                layer.bias = torch.nn.Parameter(torch.zeros(layer.out_features, dtype=torch.float64))
        return module


def test_numerical_check_refuses_a_non_homogeneous_adapter():
    config = {"widths": [3, 4, 1], "activation": "relu", "first_layer_bias": False}
    adapter = BiasedMLP()
    params = {key: torch.randn_like(value) for key, value in adapter.build(config).state_dict().items()}
    from kktembed.network import Network

    network = Network(adapter, config, params)
    x = torch.randn(10, 3, dtype=torch.float64)
    assert homogeneity_report(network, x).error > 1e-3
    with pytest.raises(NotHomogeneousError, match="declared degree L=2"):
        verify_homogeneity(network, x)


def test_unit_descriptions_cover_hidden_layers():
    mlp = random_network("mlp", MLP_CONFIG)
    units = mlp.adapter.units(mlp.config)
    assert [(u.name, u.width) for u in units] == [("0", 7), ("2", 6)]
    assert {s.param for s in units[0].incoming} == {"0.weight", "0.bias"}
    cnn = random_network("cnn", CNN_CONFIG)
    last_conv = [u for u in cnn.adapter.units(cnn.config) if u.name == "3"][0]
    (flatten_slice,) = last_conv.outgoing
    assert flatten_slice.param == "7.weight" and flatten_slice.block == 1  # 6x6 -> pool 2 -> 3x3 -> conv 2 -> 2x2 -> pool 2 -> 1x1
    assert cnn.params["7.weight"].shape[1] == last_conv.width * flatten_slice.block
    fixture = load_network(FIXTURES / "cnn_digits38.safetensors")  # 8 channels, 8x8 -> avg pool 2 -> 4x4
    (conv_units,) = fixture.adapter.units(fixture.config)
    assert conv_units.outgoing[0].block == 16 and conv_units.width == 8
    assert fixture.params["4.weight"].shape == (1, 8 * 16)


def test_widen_updates_config():
    adapter = MLPAdapter()
    wider = adapter.widen(MLP_CONFIG, "2", 9)
    assert wider["widths"] == [5, 7, 9, 1]
    with pytest.raises(ArchitectureError, match="not a hidden layer"):
        adapter.widen(MLP_CONFIG, "4", 9)


def test_activation_must_be_homogeneous():
    from kktembed.adapters.activations import parse_activation

    assert parse_activation("leaky_relu:0.01") == ("leaky_relu", 0.01)
    with pytest.raises(ArchitectureError, match="gelu"):
        parse_activation("gelu")
