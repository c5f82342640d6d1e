"""``kktembed split`` and ``kktembed embed`` as a user runs them (MATH.md §4)."""

import json

import pytest
from safetensors import safe_open

from test_cli_errors import assert_one_line_error


def split(run_cli, source, target, *options):
    code, out, err = run_cli("split", source, "-o", target, "--json", *options)
    assert code == 0, err
    return json.loads(out)


def embed(run_cli, narrow, wide, *options):
    code, out, err = run_cli("embed", narrow, wide, "--json", *options)
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize(
    "name,options",
    [
        ("mlp_kkt_gaussians", ["--neuron", "2", "--ratio", "0.3"]),
        ("mlp_gd_digits38", ["--neuron", "0,5,31", "--ratio", "0.2,0.3,0.5"]),
        ("mlp_multiclass_digits012", ["--copies", "3"]),
        ("cnn_digits38", ["--neuron", "1,6", "--ratio", "0.9"]),  # conv channels owning flatten blocks
    ],
)
def test_isometric_split_preserves_everything(run_cli, fixtures_dir, tmp_path, name, options):
    narrow = fixtures_dir / f"{name}.safetensors"
    summary = split(run_cli, narrow, tmp_path / "wide.safetensors", *options)
    assert summary["norm_after"] == pytest.approx(summary["norm_before"], rel=1e-14)
    assert summary["output_error"] < 1e-12
    result = embed(run_cli, narrow, tmp_path / "wide.safetensors")
    assert result["verdict"] == "isometric_embedding" and result["kkt_preserved"] is True
    assert result["parent_hash_matches"] is True
    assert result["relative_embedding_error"] == 0.0
    assert result["norm_error"] <= 1e-12 * result["norm_narrow"]
    assert result["coefficient_isometry_error"] <= 1e-15
    assert result["normalized_margin_error"] <= 1e-12 * result["check_narrow"]["normalized_margin"]
    narrow_check, wide_check = result["check_narrow"], result["check_wide"]
    assert wide_check["stationarity_residual"] == pytest.approx(narrow_check["stationarity_residual"], rel=1e-7, abs=1e-12)
    assert wide_check["complementarity_residual"] == pytest.approx(narrow_check["complementarity_residual"], rel=1e-7, abs=1e-12)
    assert wide_check["n_support"] == narrow_check["n_support"]
    assert result["relative_multiplier_error"] < 1e-6


def test_net2net_changes_norm_and_kkt(run_cli, fixtures_dir, tmp_path):
    narrow = fixtures_dir / "mlp_kkt_gaussians.safetensors"
    summary = split(run_cli, narrow, tmp_path / "control.safetensors", "--neuron", "2", "--ratio", "0.3", "--strategy", "net2net")
    assert summary["output_error"] < 1e-12 and summary["norm_after"] > summary["norm_before"] + 1e-3
    result = embed(run_cli, narrow, tmp_path / "control.safetensors")
    assert result["verdict"] == "not_isometric" and result["kkt_preserved"] is False
    assert result["norm_error"] > 1e-3 and result["coefficient_isometry_error"] == pytest.approx(1.0)
    assert result["check_narrow"]["verdict"] == "kkt" and result["check_wide"]["relative_stationarity_residual"] > 1e-2


def test_splits_compose_and_record_enough_to_rebuild_T(run_cli, fixtures_dir, tmp_path):
    root = fixtures_dir / "mlp_gd_digits38.safetensors"
    split(run_cli, root, tmp_path / "w1.safetensors", "--neuron", "3", "--ratio", "0.3")
    split(run_cli, tmp_path / "w1.safetensors", tmp_path / "w2.safetensors", "--neuron", "32", "--copies", "2")
    from_root = embed(run_cli, root, tmp_path / "w2.safetensors")
    assert from_root["n_splits"] == 2 and from_root["verdict"] == "isometric_embedding"
    from_parent = embed(run_cli, tmp_path / "w1.safetensors", tmp_path / "w2.safetensors")
    assert from_parent["n_splits"] == 1 and from_parent["verdict"] == "isometric_embedding"
    with safe_open(str(tmp_path / "w2.safetensors"), "pt") as handle:
        record = json.loads(handle.metadata()["kktembed.embedding"])
    assert [len(stage["splits"]) for stage in record["stages"]] == [1, 1]
    first = record["stages"][0]["splits"][0]
    assert first["layer"] == "0" and first["unit"] == 3 and first["positions"] == [3, 32]
    assert first["shares"] == [0.3, 0.7] and first["incoming"] == pytest.approx([0.3**0.5, 0.7**0.5])


def test_width_option_and_several_layers(run_cli, tmp_path):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3, bias=False), torch.nn.ReLU(), torch.nn.Linear(3, 4, bias=False), torch.nn.ReLU(), torch.nn.Linear(4, 1, bias=False))
    save_file(model.state_dict(), tmp_path / "deep.safetensors")
    summary = split(run_cli, tmp_path / "deep.safetensors", tmp_path / "wide.safetensors", "--layer", "0", "--layer", "2", "--width", "8", "--dataset", "gaussians")
    assert summary["widths_after"] == {"0": 8, "2": 8}
    assert summary["output_error"] < 1e-12
    result = embed(run_cli, tmp_path / "deep.safetensors", tmp_path / "wide.safetensors", "--dataset", "gaussians")
    assert result["verdict"] == "isometric_embedding"


def test_split_output_finds_its_data_from_another_folder(run_cli, fixtures_dir, tmp_path):
    (tmp_path / "sub").mkdir()
    split(run_cli, fixtures_dir / "mlp_gd_digits38.safetensors", tmp_path / "sub" / "wide.safetensors", "--neuron", "1")
    code, out, err = run_cli("check", tmp_path / "sub" / "wide.safetensors", "--json", "--no-profile")
    assert code == 0, err and json.loads(out)["n_samples"] == 357


@pytest.mark.parametrize(
    "options,fragment",
    [
        (["--ratio", "0.3,0.3"], "sum to 0.6"),
        (["--ratio", "-0.5,1.5"], "≥ 0"),
        (["--ratio", "1.5"], "[0, 1]"),
        (["--copies", "1"], "at least 2"),
        (["--layer", "7"], "unknown layer"),
        (["--layer", "2"], "output layer"),
        (["--neuron", "32"], "out of range"),
        (["--strategy", "magic"], "unknown split strategy"),
    ],
)
def test_bad_split_options(run_cli, fixtures_dir, tmp_path, options, fragment):
    target = tmp_path / "wide.safetensors"
    assert_one_line_error(*run_cli("split", fixtures_dir / "mlp_gd_digits38.safetensors", "-o", target, *options), expected_code=2, fragment=fragment)
    assert not target.exists()


def test_split_never_overwrites(run_cli, fixtures_dir, tmp_path):
    source = fixtures_dir / "mlp_gd_digits38.safetensors"
    before = source.read_bytes()
    assert_one_line_error(*run_cli("split", source, "-o", source, "--force"), expected_code=2, fragment="input")
    assert source.read_bytes() == before
    target = tmp_path / "wide.safetensors"
    target.write_bytes(b"keep")
    assert_one_line_error(*run_cli("split", source, "-o", target), fragment="--force")
    assert target.read_bytes() == b"keep"
    split(run_cli, source, target, "--force")
    assert target.read_bytes() != b"keep"


def test_embed_rejects_unrelated_pairs(run_cli, fixtures_dir, tmp_path):
    split(run_cli, fixtures_dir / "mlp_gd_digits38.safetensors", tmp_path / "wide.safetensors", "--neuron", "1")
    assert_one_line_error(
        *run_cli("embed", fixtures_dir / "mlp_kkt_gaussians.safetensors", tmp_path / "wide.safetensors", "--data", fixtures_dir / "digits38.safetensors"),
        fragment="",
    )
    assert_one_line_error(
        *run_cli("embed", fixtures_dir / "mlp_gd_digits38.safetensors", fixtures_dir / "digits35_mlp_init.safetensors"), fragment="no embedding recorded"
    )
    itself = embed(run_cli, fixtures_dir / "mlp_gd_digits38.safetensors", fixtures_dir / "mlp_gd_digits38.safetensors")
    assert itself["found_by_matching"] is True and itself["verdict"] == "isometric_embedding"
    assert_one_line_error(
        *run_cli("embed", fixtures_dir / "cnn_digits38.safetensors", tmp_path / "wide.safetensors"), fragment="do not belong together"
    )


def test_embed_detects_a_wide_checkpoint_that_moved_away(run_cli, fixtures_dir, tmp_path):
    import torch

    from kktembed.checkpoint import load_network, save_checkpoint

    split(run_cli, fixtures_dir / "mlp_gd_digits38.safetensors", tmp_path / "wide.safetensors", "--neuron", "1")
    wide = load_network(tmp_path / "wide.safetensors")
    moved = wide.with_params({key: value + 1e-3 * torch.ones_like(value) for key, value in wide.params.items()})
    save_checkpoint(tmp_path / "moved.safetensors", moved, dict(wide.metadata))
    result = embed(run_cli, fixtures_dir / "mlp_gd_digits38.safetensors", tmp_path / "moved.safetensors")
    assert result["verdict"] == "not_embedded" and result["relative_embedding_error"] > 1e-5


def test_malformed_embedding_metadata(run_cli, fixtures_dir, tmp_path):
    from kktembed.checkpoint import load_network, save_checkpoint

    split(run_cli, fixtures_dir / "mlp_gd_digits38.safetensors", tmp_path / "wide.safetensors", "--neuron", "1")
    wide = load_network(tmp_path / "wide.safetensors")
    save_checkpoint(tmp_path / "broken.safetensors", wide, {**wide.metadata, "kktembed.embedding": '{"stages": [{"splits": [{"layer": "0"}]}]}'})
    assert_one_line_error(*run_cli("embed", fixtures_dir / "mlp_gd_digits38.safetensors", tmp_path / "broken.safetensors"), fragment="malformed")


def test_tables_for_people(run_cli, fixtures_dir, tmp_path):
    narrow = fixtures_dir / "mlp_kkt_gaussians.safetensors"
    code, out, err = run_cli("split", narrow, "-o", tmp_path / "wide.safetensors", "--neuron", "2")
    assert code == 0 and "‖θ‖ → ‖Tθ‖" in out and "positions" in out, err
    code, out, err = run_cli("embed", narrow, tmp_path / "wide.safetensors")
    assert code == 0 and "verdict: isometric_embedding" in out and "KKT check, side by side" in out, err
    code, out, err = run_cli("trace", fixtures_dir / "paper_mlp_leaky.safetensors", "--split", "copies=2", "--steps", "20")
    assert code == 0 and "max ‖η(t) − Tθ(t)‖" in out, err
