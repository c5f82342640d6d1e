"""Loading real checkpoints (kktembed.loading): key names, prefixes, folders, shards, specs, logits,
storage precision. Every case starts from a real torch.nn module saved with safetensors' own API,
and the analysis of the loaded network must equal that of the same tensors under nn.Sequential
keys ("0.weight", "2.weight", …), which kktembed read from the start."""

import json
import math
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import kktembed
from kktembed.errors import ArchitectureError, CheckpointError, KktembedWarning, UsageError
from kktembed.loading import ReconstructionError, load_network, strip_wrapper_prefixes

TIMINGS = ("solver_seconds", "gram_seconds")


class NamedMLP(nn.Module):
    """fc1 → relu → fc2 → relu → fc3, bias-free: keys fc1.weight, fc2.weight, fc3.weight."""

    def __init__(self, widths=(10, 12, 12, 1)):
        super().__init__()
        self.fc1 = nn.Linear(widths[0], widths[1], bias=False)
        self.fc2 = nn.Linear(widths[1], widths[2], bias=False)
        self.fc3 = nn.Linear(widths[2], widths[3], bias=False)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class FeaturesCNN(nn.Module):
    """features.0 (conv) … features.3 (conv) → classifier: the torchvision naming."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2)
        )
        self.classifier = nn.Linear(16, 1, bias=False)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def separable_data(model, x):
    with torch.no_grad():
        logits = model(x)
    return torch.where(logits[:, 0] > 0, 1, -1), logits


@pytest.fixture
def mlp_files(tmp_path):
    """A float32 NamedMLP, its nn.Sequential-keyed twin, and data with the module's logits."""
    torch.manual_seed(0)
    model = NamedMLP()
    x = torch.randn(60, 10)
    y, logits = separable_data(model, x)
    save_file(model.state_dict(), tmp_path / "named.safetensors")
    state = model.state_dict()
    save_file({"0.weight": state["fc1.weight"], "2.weight": state["fc2.weight"], "4.weight": state["fc3.weight"]}, tmp_path / "sequential.safetensors")
    save_file({"x": x, "y": y, "logits": logits}, tmp_path / "data.safetensors")
    return model, tmp_path


def numbers(result) -> dict:
    """The numbers of a check (labels, timings and the load report aside)."""
    return {key: value for key, value in result.to_dict().items() if key not in ("checkpoint", "load", *TIMINGS)}


def assert_same_analysis(a, b) -> None:
    left, right = numbers(a), numbers(b)
    assert left.keys() == right.keys()
    for key in left:
        if isinstance(left[key], float):
            assert math.isclose(left[key], right[key], rel_tol=1e-9, abs_tol=1e-12), key
        elif key != "profile":
            assert left[key] == right[key], key


def test_named_layers_analyse_like_sequential_keys(mlp_files):
    model, folder = mlp_files
    named = kktembed.check(folder / "named.safetensors", data=folder / "data.safetensors")
    sequential = kktembed.check(folder / "sequential.safetensors", data=folder / "data.safetensors")
    assert named.load["layer_order"] == ["fc1", "fc2", "fc3"] and not named.load["native"]
    assert named.verdict != "not_separable"
    assert_same_analysis(named, sequential)


@pytest.mark.parametrize("prefixes", [("module.",), ("_orig_mod.",), ("module.", "_orig_mod."), ("_orig_mod.", "module.")])
def test_wrapper_prefixes_are_stripped_and_reported(mlp_files, prefixes):
    model, folder = mlp_files
    save_file({"".join(prefixes) + key: value for key, value in model.state_dict().items()}, folder / "wrapped.safetensors")
    wrapped = kktembed.check(folder / "wrapped.safetensors", data=folder / "data.safetensors", profile=False)
    assert tuple(wrapped.load["stripped_prefixes"]) == prefixes
    assert_same_analysis(wrapped, kktembed.check(folder / "sequential.safetensors", data=folder / "data.safetensors", profile=False))


def test_prefix_shared_by_only_some_keys_is_kept():
    tensors, stripped = strip_wrapper_prefixes({"module.a.weight": 1, "b.weight": 2})
    assert stripped == () and set(tensors) == {"module.a.weight", "b.weight"}


def test_torchvision_style_cnn_and_module_structure(tmp_path):
    torch.manual_seed(1)
    model = FeaturesCNN().double()
    x = torch.randn(30, 1, 8, 8, dtype=torch.float64)
    y, logits = separable_data(model, x)
    save_file(model.state_dict(), tmp_path / "cnn.safetensors")
    save_file({"x": x, "y": y, "logits": logits}, tmp_path / "data.safetensors")
    (tmp_path / "arch.toml").write_text('padding = 1\npool = ["max:2", "avg:2"]\n')
    network = kktembed.load(tmp_path / "cnn.safetensors", arch=tmp_path / "arch.toml", data=tmp_path / "data.safetensors")
    assert network.load_report.layer_order == ("features.0", "features.3", "classifier")
    assert torch.allclose(network.forward(x), model(x), rtol=1e-13, atol=1e-15)
    # an nn.Module says its own pooling and padding; its forward is the reference
    from_module = kktembed.load(model, x=x, y=y)
    assert from_module.config == network.config
    assert torch.allclose(from_module.forward(x), network.forward(x), rtol=1e-13, atol=1e-15)


def test_wrong_spec_is_caught_by_logits(tmp_path):
    torch.manual_seed(1)
    model = FeaturesCNN().double()
    x = torch.randn(30, 1, 8, 8, dtype=torch.float64)
    y, logits = separable_data(model, x)
    save_file(model.state_dict(), tmp_path / "cnn.safetensors")
    save_file({"x": x, "y": y, "logits": logits}, tmp_path / "data.safetensors")
    (tmp_path / "wrong.json").write_text(json.dumps({"padding": 1, "pool": "avg:2"}))  # max-pooling network read as avg
    with pytest.raises(ReconstructionError, match="does not reproduce the logits"):
        kktembed.check(tmp_path / "cnn.safetensors", data=tmp_path / "data.safetensors", arch=tmp_path / "wrong.json")


def test_wrong_activation_is_caught_by_logits(mlp_files, run_cli):
    _, folder = mlp_files
    code, _, err = run_cli("check", folder / "named.safetensors", "--data", folder / "data.safetensors", "--activation", "leaky_relu:0.1")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "largest difference" in lines[0] and "--activation" in lines[0]


def test_float32_logits_pass_at_their_precision(mlp_files):
    model, folder = mlp_files  # the logits were computed in float32, the rebuilt network runs in float64
    network = kktembed.load(folder / "named.safetensors", data=folder / "data.safetensors")
    assert network.load_report.storage_dtype == "float32"


def test_sharded_folder_with_spec_beside_it(mlp_files):
    model, folder = mlp_files
    hub = folder / "hub"
    hub.mkdir()
    state = model.state_dict()
    shards = {"fc1.weight": "model-00001-of-00002.safetensors", "fc2.weight": "model-00002-of-00002.safetensors", "fc3.weight": "model-00002-of-00002.safetensors"}
    for shard in set(shards.values()):
        save_file({key: state[key] for key, name in shards.items() if name == shard}, hub / shard)
    (hub / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": shards}))
    (hub / "kktembed.json").write_text(json.dumps({"layers": ["fc1", "fc2", "fc3"], "activation": "relu"}))
    (hub / "config.json").write_text("{}")  # a hub's own config is not ours and is ignored
    result = kktembed.check(hub, data=folder / "data.safetensors", profile=False)
    assert len(result.load["files"]) == 2 and result.load["spec"].endswith("kktembed.json")
    assert_same_analysis(result, kktembed.check(folder / "sequential.safetensors", data=folder / "data.safetensors", profile=False))


def test_single_file_folder_and_broken_folders(mlp_files):
    model, folder = mlp_files
    (folder / "single").mkdir()
    save_file(model.state_dict(), folder / "single" / "model.safetensors")
    assert kktembed.load(folder / "single").load_report.files[0].endswith("model.safetensors")
    (folder / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        kktembed.load(folder / "empty")
    (folder / "lying").mkdir()
    save_file({"fc1.weight": model.state_dict()["fc1.weight"]}, folder / "lying" / "a.safetensors")
    (folder / "lying" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"fc1.weight": "a.safetensors", "fc2.weight": "a.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing fc2.weight"):
        kktembed.load(folder / "lying")


def test_ambiguous_order_is_refused_and_settled_by_layers(tmp_path, run_cli):
    class Square(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder, self.head = nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False), nn.Linear(6, 1, bias=False)

    save_file(Square().state_dict(), tmp_path / "square.safetensors")
    code, _, err = run_cli("inspect", tmp_path / "square.safetensors")
    assert code == 1 and "ambiguous" in err and "decoder → encoder → head" in err and "encoder → decoder → head" in err and "--layers" in err
    code, out, err = run_cli("inspect", tmp_path / "square.safetensors", "--layers", "encoder,decoder,head", "--json")
    assert code == 0, err
    assert json.loads(out)["load"]["layer_order"] == ["encoder", "decoder", "head"]
    code, _, err = run_cli("inspect", tmp_path / "square.safetensors", "--layers", "head,encoder,decoder")
    assert code == 1 and "does not chain" in err


def test_numbered_family_fixes_the_order_of_equal_shapes(tmp_path):
    state = {f"fc{i}.weight": torch.randn(5, 5) for i in (1, 2, 10)} | {"fc11.weight": torch.randn(1, 5)}
    save_file(state, tmp_path / "family.safetensors")
    assert kktembed.load(tmp_path / "family.safetensors").load_report.layer_order == ("fc1", "fc2", "fc10", "fc11")


def test_every_offending_tensor_is_named_at_once(tmp_path):
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 1))
    save_file(model.state_dict(), tmp_path / "bad.safetensors")
    with pytest.raises(ArchitectureError) as raised:
        kktembed.load(tmp_path / "bad.safetensors")
    message = str(raised.value)
    for name in ("1.running_mean", "1.weight", "4.weight", "4.bias", "3.bias", "6.bias"):
        assert f"tensor {name}" in message, name
    assert "tensor 0.bias" not in message  # a first-layer bias is allowed


def test_low_precision_is_reported_and_caps_the_verdict(tmp_path):
    from kktembed.kkt.result import verdict_for

    torch.manual_seed(0)
    model = NamedMLP()
    save_file({key: value.to(torch.bfloat16) for key, value in model.state_dict().items()}, tmp_path / "bf16.safetensors")
    with pytest.warns(KktembedWarning, match="bfloat16"):
        network = kktembed.load(tmp_path / "bf16.safetensors")
    assert network.load_report.unit_roundoff == 2.0**-8  # bfloat16 keeps 8 significant bits
    floor = network.degree * network.unit_roundoff
    assert verdict_for(1e-9, 0.0, 1e-6, 0.1, floor)[0] == "approximate"  # below the floor: never "kkt"
    assert verdict_for(1e-9, 0.0, 1e-6, 0.1, 1e-16)[0] == "kkt"


def test_storage_precision_survives_convert_and_split(mlp_files, tmp_path):
    _, folder = mlp_files
    converted = kktembed.convert(folder / "named.safetensors", tmp_path / "native.safetensors", data=folder / "data.safetensors")
    assert converted.storage_dtype == "float32" and converted.reconstruction_verified
    native = kktembed.load(tmp_path / "native.safetensors")
    assert native.load_report.native and native.load_report.storage_dtype == "float32"
    kktembed.split(native, tmp_path / "wide.safetensors", layer="fc1", neuron=0)
    assert kktembed.load(tmp_path / "wide.safetensors").load_report.storage_dtype == "float32"


def test_convert_writes_a_native_checkpoint_that_is_never_guessed_again(mlp_files, tmp_path, run_cli):
    _, folder = mlp_files
    code, out, err = run_cli("convert", folder / "named.safetensors", "-o", tmp_path / "native.safetensors", "--data", folder / "data.safetensors", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["adapter"] == "mlp" and report["config"]["keys"] == ["fc1", "fc2", "fc3"] and report["reconstruction_verified"]
    code, out, err = run_cli("check", tmp_path / "native.safetensors", "--json", "--no-profile")  # data come from the metadata
    assert code == 0, err
    native = json.loads(out)
    assert native["load"]["native"] and native["data"].endswith("data.safetensors")
    plain = kktembed.check(folder / "named.safetensors", data=folder / "data.safetensors", profile=False)
    assert native["relative_stationarity_residual"] == pytest.approx(plain.relative_stationarity_residual, rel=1e-12)
    code, _, err = run_cli("convert", folder / "named.safetensors", "-o", tmp_path / "native.safetensors")
    assert code == 1 and "exists" in err  # no overwrite without --force


def test_state_dict_and_module_inputs_are_not_touched(mlp_files):
    model, folder = mlp_files
    before = {key: value.clone() for key, value in model.state_dict().items()}
    network = kktembed.load(model)
    network.params["fc1.weight"].add_(1.0)  # the loaded copy is independent
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32 and network.params["fc2.weight"].dtype == torch.float64
    assert kktembed.load(dict(model.state_dict())).load_report.source == "<state_dict>"


def test_spec_files_are_validated_before_loading(tmp_path, run_cli, fixtures_dir):
    cases = {
        "unknown.json": ('{"stide": 1}', "unknown field"),
        "list.json": ("[1, 2]", "an object"),
        "shape.json": ('{"input_shape": [8, 8]}', "input_shape"),
        "stride.json": ('{"stride": 0}', "stride"),
        "pool.json": ('{"pool": "median:2"}', "pool"),
        "bad.toml": ("padding = [", "TOML"),
    }
    for name, (text, fragment) in cases.items():
        (tmp_path / name).write_text(text)
        code, _, err = run_cli("inspect", fixtures_dir / "mlp_gd_digits38.safetensors", "--arch", tmp_path / name)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, (name, err)
    code, _, err = run_cli("inspect", fixtures_dir / "mlp_gd_digits38.safetensors", "--arch", tmp_path / "list.json", "--arch-config", tmp_path / "list.json")
    assert code == 2 and "same option" in err


def test_activation_given_twice_differently_is_refused(tmp_path):
    (tmp_path / "spec.json").write_text('{"activation": "relu"}')
    from kktembed.archspec import ArchSpec

    with pytest.raises(UsageError, match="contradicts"):
        ArchSpec.from_file(tmp_path / "spec.json").with_options(activation="leaky_relu:0.1")


def test_native_checkpoint_with_conflicting_activation(fixtures_dir):
    with pytest.raises(ArchitectureError, match="records activation"):
        load_network(fixtures_dir / "mlp_gd_digits38.safetensors", hints={"activation": "leaky_relu:0.3"})


def test_data_file_holding_logits_of_the_wrong_width(mlp_files, tmp_path):
    model, folder = mlp_files
    x = torch.randn(5, 10)
    save_file({"x": x, "y": torch.ones(5), "logits": torch.zeros(5, 2)}, tmp_path / "wide_logits.safetensors")
    with pytest.raises(kktembed.KktembedError, match="logits with 2 outputs"):
        kktembed.load(folder / "named.safetensors", data=tmp_path / "wide_logits.safetensors")


def test_no_warning_for_float64_and_float32(mlp_files, fixtures_dir):
    _, folder = mlp_files
    with warnings.catch_warnings():
        warnings.simplefilter("error", KktembedWarning)
        kktembed.load(folder / "named.safetensors")
        kktembed.load(fixtures_dir / "mlp_gd_digits38.safetensors")
