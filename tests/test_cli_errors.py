"""Bad input: one ``Error:`` line on stderr, no traceback, non-zero exit, nothing written."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from kktembed.checkpoint import ADAPTER_KEY, CONFIG_KEY


def assert_one_line_error(code, out, err, expected_code=1, fragment=""):
    assert code == expected_code, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    assert fragment.lower() in lines[0].lower(), lines[0]


def plain_mlp_state(bias_everywhere=False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 8, bias=bias_everywhere), torch.nn.ReLU(), torch.nn.Linear(8, 1, bias=bias_everywhere))
    return {key: value.detach() for key, value in model.state_dict().items()}


def test_missing_checkpoint(run_cli, tmp_path):
    assert_one_line_error(*run_cli("check", tmp_path / "nope.safetensors"), fragment="no such file")


def test_truncated_checkpoint(run_cli, tmp_path, fixtures_dir):
    data = (fixtures_dir / "mlp_gd_digits38.safetensors").read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(*run_cli("check", path, "--data", fixtures_dir / "digits38.safetensors"), fragment="truncated")


def test_corrupt_header(run_cli, tmp_path):
    path = tmp_path / "corrupt.safetensors"
    header = b'{"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]'  # unterminated JSON
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    assert_one_line_error(*run_cli("check", path), fragment="corrupt")


def test_pickle_is_refused_and_never_loaded(run_cli, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(Exploit()))
    assert_one_line_error(*run_cli("check", path), fragment="pickle")
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pt")
    assert_one_line_error(*run_cli("inspect", tmp_path / "zip.pt"), fragment="pickle")
    assert not marker.exists()


def test_nan_parameters(run_cli, tmp_path, fixtures_dir):
    state = plain_mlp_state()
    state["0.weight"][0, 0] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    assert_one_line_error(*run_cli("check", tmp_path / "nan.safetensors", "--data", fixtures_dir / "digits38.safetensors"), fragment="NaN")


def test_data_shape_mismatch(run_cli, tmp_path, fixtures_dir):
    save_file({"x": torch.zeros(5, 10, dtype=torch.float64), "y": torch.ones(5, dtype=torch.int64)}, tmp_path / "d.safetensors")
    assert_one_line_error(*run_cli("check", fixtures_dir / "mlp_gd_digits38.safetensors", "--data", tmp_path / "d.safetensors"), fragment="shape")


def test_labels_that_do_not_fit(run_cli, tmp_path, fixtures_dir):
    x = torch.rand(4, 64, dtype=torch.float64)
    save_file({"x": x, "y": torch.tensor([0, 1, 0, 1])}, tmp_path / "binary01.safetensors")
    assert_one_line_error(*run_cli("check", fixtures_dir / "mlp_gd_digits38.safetensors", "--data", tmp_path / "binary01.safetensors"), fragment="±1")
    save_file({"x": x, "y": torch.tensor([0, 1, 2, 5])}, tmp_path / "classes.safetensors")
    assert_one_line_error(
        *run_cli("check", fixtures_dir / "mlp_multiclass_digits012.safetensors", "--data", tmp_path / "classes.safetensors"), fragment="0..2"
    )


def test_data_file_without_y(run_cli, tmp_path, fixtures_dir):
    save_file({"x": torch.zeros(3, 64, dtype=torch.float64)}, tmp_path / "d.safetensors")
    assert_one_line_error(*run_cli("check", fixtures_dir / "mlp_gd_digits38.safetensors", "--data", tmp_path / "d.safetensors"), fragment="y")


def test_later_layer_bias_is_named(run_cli, tmp_path, fixtures_dir):
    save_file(plain_mlp_state(bias_everywhere=True), tmp_path / "biased.safetensors")
    assert_one_line_error(*run_cli("check", tmp_path / "biased.safetensors", "--data", fixtures_dir / "digits38.safetensors"), fragment="2.bias")


def test_batchnorm_is_named(run_cli, tmp_path, fixtures_dir):
    model = torch.nn.Sequential(torch.nn.Linear(64, 8, bias=False), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1, bias=False))
    save_file(model.state_dict(), tmp_path / "bn.safetensors")
    assert_one_line_error(*run_cli("check", tmp_path / "bn.safetensors", "--data", fixtures_dir / "digits38.safetensors"), fragment="tensor 1.")
    assert "normalization" in run_cli("check", tmp_path / "bn.safetensors", "--data", fixtures_dir / "digits38.safetensors")[2]


def test_non_homogeneous_activation(run_cli, tmp_path, fixtures_dir):
    save_file(plain_mlp_state(), tmp_path / "plain.safetensors")
    assert_one_line_error(
        *run_cli("check", tmp_path / "plain.safetensors", "--data", fixtures_dir / "digits38.safetensors", "--activation", "tanh"), fragment="tanh"
    )


def test_unknown_adapter(run_cli, tmp_path, fixtures_dir):
    save_file(plain_mlp_state(), tmp_path / "odd.safetensors", metadata={ADAPTER_KEY: "resnet9000", CONFIG_KEY: "{}"})
    assert_one_line_error(*run_cli("check", tmp_path / "odd.safetensors", "--data", fixtures_dir / "digits38.safetensors"), fragment="resnet9000")


def test_no_data_reference(run_cli, tmp_path):
    save_file(plain_mlp_state(), tmp_path / "plain.safetensors")
    assert_one_line_error(*run_cli("check", tmp_path / "plain.safetensors"), expected_code=2, fragment="--data")


def test_unknown_dataset(run_cli, fixtures_dir):
    assert_one_line_error(*run_cli("check", fixtures_dir / "mlp_gd_digits38.safetensors", "--dataset", "imagenet"), fragment="imagenet")


def test_usage_error_exit_code(run_cli, fixtures_dir):
    code, _, err = run_cli("check", fixtures_dir / "mlp_gd_digits38.safetensors", "--norm", "l3")
    assert code == 2 and "Traceback" not in err


def test_save_multipliers_refuses_existing_and_input(run_cli, tmp_path, fixtures_dir):
    existing = tmp_path / "lambda.safetensors"
    existing.write_bytes(b"keep me")
    assert_one_line_error(*run_cli("check", fixtures_dir / "linear_svm_digits38.safetensors", "--save-multipliers", existing), fragment="--force")
    assert existing.read_bytes() == b"keep me"
    checkpoint = fixtures_dir / "linear_svm_digits38.safetensors"
    before = checkpoint.read_bytes()
    assert_one_line_error(*run_cli("check", checkpoint, "--save-multipliers", checkpoint, "--force"), expected_code=2, fragment="input")
    assert checkpoint.read_bytes() == before


def test_debug_shows_traceback(tmp_path):
    env = {**os.environ, "KKTEMBED_DEBUG": "1", "KKTEMBED_LOAD_PLUGINS": ""}
    result = subprocess.run([sys.executable, "-m", "kktembed", "check", str(tmp_path / "missing.safetensors")], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_data_file_given_as_checkpoint(run_cli, fixtures_dir):
    assert_one_line_error(*run_cli("check", fixtures_dir / "digits38.safetensors"), fragment="--data")
