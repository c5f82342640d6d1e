"""Paired training (MATH.md §5): trajectories stay embedded under identical updates."""

import csv
import json

import pytest

from test_cli_errors import assert_one_line_error


def trace(run_cli, *args):
    code, out, err = run_cli("trace", *args, "--json")
    assert code == 0, err
    return json.loads(out)


REQUIRED = {"max_trajectory_error", "final_trajectory_error", "steps", "final_loss_narrow", "final_loss_wide", "final_normalized_margin_narrow", "final_normalized_margin_wide"}


@pytest.mark.parametrize(
    "checkpoint,options",
    [
        ("paper_mlp_leaky", ["--lr", "0.1"]),
        ("paper_mlp_leaky", ["--lr", "0.1", "--dataset", "gaussians-overlap"]),
        ("paper_mlp_leaky", ["--lr", "0.1", "--batch", "16"]),
        ("paper_cnn", ["--lr", "0.01"]),
        ("paper_cnn", ["--lr", "0.01", "--batch", "16"]),
        ("mlp_multiclass_digits012", ["--lr", "0.05", "--batch", "32", "--loss", "logistic"]),
    ],
)
def test_identical_updates_keep_the_embedding(run_cli, fixtures_dir, checkpoint, options):
    summary = trace(run_cli, fixtures_dir / f"{checkpoint}.safetensors", "--split", "copies=2", "--steps", "200", "--every", "20", *options)
    assert REQUIRED <= set(summary)
    assert summary["steps"] == 200
    assert summary["max_relative_trajectory_error"] < 1e-13
    assert summary["final_loss_wide"] == pytest.approx(summary["final_loss_narrow"], rel=1e-12)
    assert summary["final_normalized_margin_wide"] == pytest.approx(summary["final_normalized_margin_narrow"], rel=1e-10, abs=1e-15)


def test_different_batches_break_the_embedding(run_cli, fixtures_dir):
    summary = trace(run_cli, fixtures_dir / "paper_mlp_leaky.safetensors", "--split", "copies=2", "--steps", "200", "--lr", "0.1", "--batch", "16", "--different-batches")
    assert summary["max_trajectory_error"] > 1e-4


def test_net2net_trajectories_drift_apart(run_cli, fixtures_dir):
    summary = trace(run_cli, fixtures_dir / "paper_mlp_leaky.safetensors", "--split", "copies=2;strategy=net2net", "--steps", "200", "--lr", "0.1")
    assert summary["max_trajectory_error"] > 1e-4


def test_outputs_are_written_readable_and_embedded(run_cli, fixtures_dir, tmp_path):
    out = tmp_path / "run"
    summary = trace(
        run_cli, fixtures_dir / "paper_cnn.safetensors", "--split", "copies=2", "--steps", "100", "--lr", "0.01", "--every", "10",
        "--kkt-every", "50", "--out", out, "--plot", out / "trace.png",
    )
    with open(out / "series.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == list(range(0, 101, 10))
    assert float(rows[-1]["trajectory_error"]) == pytest.approx(summary["final_trajectory_error"])
    series = json.loads((out / "series.json").read_text())
    assert series["summary"]["steps"] == 100 and len(series["records"]) == 11
    assert (out / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, output, err = run_cli("embed", out / "narrow_final.safetensors", out / "wide_final.safetensors", "--json")
    assert code == 0, err
    result = json.loads(output)
    assert result["verdict"] == "isometric_embedding" and result["relative_embedding_error"] < 1e-13
    code, output, err = run_cli("check", out / "wide_final.safetensors", "--json", "--no-profile")
    assert code == 0, err
    # writing again needs --force
    assert_one_line_error(*run_cli("trace", fixtures_dir / "paper_cnn.safetensors", "--split", "copies=2", "--steps", "5", "--out", out), fragment="--force")


def test_trace_from_a_split_checkpoint(run_cli, fixtures_dir, tmp_path):
    code, _, err = run_cli("split", fixtures_dir / "paper_mlp_leaky.safetensors", "-o", tmp_path / "wide.safetensors", "--ratio", "0.3")
    assert code == 0, err
    summary = trace(run_cli, fixtures_dir / "paper_mlp_leaky.safetensors", "--wide", tmp_path / "wide.safetensors", "--steps", "100", "--lr", "0.1")
    assert summary["max_relative_trajectory_error"] < 1e-13


@pytest.mark.parametrize(
    "options,fragment",
    [
        (["--split", "copies=2", "--lr", "0"], "--lr"),
        (["--split", "copies=2", "--lr", "-1"], "--lr"),
        (["--split", "copies=2", "--steps", "0"], "--steps"),
        (["--split", "copies=2", "--batch", "1000"], "--batch"),
        (["--split", "copies=2", "--different-batches"], "--batch"),
        (["--steps", "5"], "exactly one"),
        (["--split", "copies=2", "--wide", "x.safetensors"], "exactly one"),
        (["--split", "ratio=0.5,0.2"], "sum to 0.7"),
        (["--split", "banana"], "invalid --split"),
    ],
)
def test_bad_trace_options(run_cli, fixtures_dir, options, fragment):
    assert_one_line_error(*run_cli("trace", fixtures_dir / "paper_mlp_leaky.safetensors", *options), expected_code=2, fragment=fragment)


def test_save_every_writes_checkable_pairs(run_cli, fixtures_dir, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(
        "trace", fixtures_dir / "paper_mlp_leaky.safetensors", "--split", "copies=2", "--dataset", "gaussians", "--optimizer", "normalized",
        "--lr", "0.01", "--steps", "60", "--save-every", "20", "--out", out, "--json",
    )
    assert code == 0, err
    names = sorted(path.name for path in out.iterdir())
    assert [name for name in names if name.startswith("narrow_step_")] == ["narrow_step_20.safetensors", "narrow_step_40.safetensors", "narrow_step_60.safetensors"]
    code, stdout, err = run_cli("check", out / "narrow_step_20.safetensors", out / "narrow_step_40.safetensors", out / "narrow_step_60.safetensors", "--json")
    assert code == 0, err
    assert [row["step"] for row in json.loads(stdout)["rows"]] == [20, 40, 60]
    assert all(row["step_source"] == "metadata" for row in json.loads(stdout)["rows"])
    code, stdout, err = run_cli("embed", out / "narrow_step_40.safetensors", out / "wide_step_40.safetensors", "--json")
    assert code == 0, err
    assert json.loads(stdout)["verdict"] == "isometric_embedding" and json.loads(stdout)["parent_hash_matches"]


def test_save_every_needs_out(run_cli, fixtures_dir):
    code, _, err = run_cli("trace", fixtures_dir / "paper_mlp_leaky.safetensors", "--split", "copies=2", "--save-every", "5")
    assert code == 2 and "--out" in err


def test_divergence_is_an_error_naming_the_step(run_cli, fixtures_dir, tmp_path):
    code, _, err = run_cli("trace", fixtures_dir / "paper_mlp_leaky.safetensors", "--split", "copies=2", "--lr", "1e308", "--steps", "30", "--out", tmp_path / "run")
    assert code == 1 and "non-finite" in err and "by step" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_trace_split_errors_use_its_own_vocabulary(run_cli, tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"0.weight": torch.randn(8, 64), "2.weight": torch.randn(8, 8), "4.weight": torch.randn(1, 8)}, tmp_path / "deep.safetensors")
    code, _, err = run_cli("trace", tmp_path / "deep.safetensors", "--dataset", "digits:3,8", "--split", "copies=2", "--steps", "2")
    assert code == 2 and "layer=" in err and "--layer" not in err, err
    code, _, err = run_cli("trace", tmp_path / "deep.safetensors", "--dataset", "digits:3,8", "--split", "layer=0;neuron=99", "--steps", "2")
    assert code == 2 and "neuron=99 is out of range" in err, err
