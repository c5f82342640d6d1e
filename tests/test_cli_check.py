"""``kktembed check`` and ``inspect`` as a user runs them."""

import json

import torch
from safetensors.torch import load_file, save_file

REQUIRED_KEYS = {
    "adapter", "degree", "n_samples", "n_constraints", "q_min", "normalized_margin", "theta_hat_norm", "stationarity_residual",
    "relative_stationarity_residual", "complementarity_residual", "n_support", "verdict",
}


def test_json_has_the_documented_keys(run_cli, fixtures_dir):
    code, out, err = run_cli("check", fixtures_dir / "linear_svm_digits38.safetensors", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert REQUIRED_KEYS <= set(result)
    assert result["verdict"] == "kkt" and result["n_constraints"] == 357
    assert isinstance(result["profile"], list) and result["profile"]


def test_table_output_shows_verdict_and_profile(run_cli, fixtures_dir):
    code, out, _ = run_cli("check", fixtures_dir / "mlp_gd_digits38.safetensors")
    assert code == 0
    assert "verdict: not_kkt" in out and "active-set profile" in out and "normalized margin" in out


def test_save_multipliers(run_cli, fixtures_dir, tmp_path):
    target = tmp_path / "lambda.safetensors"
    code, out, err = run_cli("check", fixtures_dir / "mlp_multiclass_digits012.safetensors", "--save-multipliers", target, "--json", "--no-profile")
    assert code == 0, err
    saved = load_file(target)
    result = json.loads(out)
    assert saved["lambda"].shape == (result["n_constraints"],)
    assert saved["constraint_index"].shape == (result["n_constraints"], 2)
    assert int((saved["lambda"] > 0).sum()) >= result["n_support"]
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_fail_above_exit_code(run_cli, fixtures_dir):
    checkpoint = fixtures_dir / "mlp_gd_digits38.safetensors"
    assert run_cli("check", checkpoint, "--no-profile", "--fail-above", "0.01")[0] == 3
    assert run_cli("check", checkpoint, "--no-profile", "--fail-above", "0.9")[0] == 0


def test_not_separable_is_a_verdict_not_an_error(run_cli, fixtures_dir, tmp_path):
    data = load_file(fixtures_dir / "digits38.safetensors")
    save_file({"x": data["x"], "y": -data["y"]}, tmp_path / "flipped.safetensors")
    code, out, _ = run_cli("check", fixtures_dir / "mlp_gd_digits38.safetensors", "--data", tmp_path / "flipped.safetensors", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["verdict"] == "not_separable" and result["q_min"] < 0 and result["stationarity_residual"] is None
    code, out, _ = run_cli("check", fixtures_dir / "mlp_gd_digits38.safetensors", "--data", tmp_path / "flipped.safetensors")
    assert "not separated" in out


def test_named_dataset_and_plain_checkpoint(run_cli, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 4, bias=False), torch.nn.ReLU(), torch.nn.Linear(4, 1, bias=False))
    save_file(model.state_dict(), tmp_path / "plain.safetensors")
    code, out, err = run_cli("check", tmp_path / "plain.safetensors", "--dataset", "gaussians", "--json", "--no-profile")
    assert code == 0, err
    result = json.loads(out)
    assert result["adapter"] == "mlp" and result["activation"] == "relu" and result["n_samples"] == 100


def test_inspect_json(run_cli, fixtures_dir):
    code, out, err = run_cli("inspect", fixtures_dir / "cnn_digits38.safetensors", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["adapter"] == "cnn" and summary["degree"] == 2 and summary["homogeneous"]
    assert summary["hidden_layers"] == [{"name": "0", "width": 8}]
    assert summary["n_parameters"] == 8 * 9 + 128
    assert summary["data"]["n_samples"] == 357


def test_l1_and_linf_from_the_command_line(run_cli, fixtures_dir):
    for norm in ("l1", "linf"):
        code, out, err = run_cli("check", fixtures_dir / "mlp_kkt_gaussians.safetensors", "--norm", norm, "--json", "--no-profile")
        assert code == 0, err
        result = json.loads(out)
        assert result["solver"] == "HIGHS" and result["verdict"] == "kkt"
