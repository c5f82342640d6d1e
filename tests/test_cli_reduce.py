"""``kktembed reduce`` as a user runs it: the README's worked example, net2net groups, the
different-batches finding, the output and its recorded map."""

import json

import pytest
import torch
from safetensors.torch import save_file

import kktembed


def run_json(run_cli, *args):
    code, out, err = run_cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def permuted_plain_copy(wide_path, target, seed=0):
    """WIDE's tensors with its hidden units permuted, saved as a plain state_dict (no metadata)."""
    wide = kktembed.load(wide_path)
    generator = torch.Generator().manual_seed(seed)
    params = dict(wide.params)
    for unit_layer in wide.adapter.units(wide.config):
        order = torch.randperm(unit_layer.width, generator=generator)
        for unit_slice in unit_layer.slices:
            tensor = params[unit_slice.param].movedim(unit_slice.axis, 0)
            blocks = tensor.reshape(unit_layer.width, unit_slice.block, *tensor.shape[1:])[order]
            params[unit_slice.param] = blocks.reshape(tensor.shape).movedim(0, unit_slice.axis).contiguous()
    save_file(params, target)


def test_readme_worked_example(run_cli, fixtures_dir, tmp_path):
    narrow = fixtures_dir / "mlp_kkt_gaussians.safetensors"
    run_json(run_cli, "split", narrow, "-o", tmp_path / "wide.safetensors", "--copies", "3")
    permuted_plain_copy(tmp_path / "wide.safetensors", tmp_path / "plain.safetensors")
    # embed finds T without a record, by matching units
    embedded = run_json(run_cli, "embed", narrow, tmp_path / "plain.safetensors", "--dataset", "gaussians")
    assert embedded["verdict"] == "isometric_embedding" and embedded["found_by_matching"] and embedded["kkt_preserved"]
    # reduce recovers a network of the narrow width, writes it with its map into the plain file
    reduced = run_json(run_cli, "reduce", tmp_path / "plain.safetensors", "-o", tmp_path / "reduced.safetensors", "--dataset", "gaussians")
    assert reduced["widths_before"] == {"0": 18} and reduced["widths_after"] == {"0": 6}
    assert reduced["isometric"] and reduced["merge_error"] < 1e-14 and reduced["output_error"] < 1e-13
    agreement = reduced["check_agreement"]
    assert agreement["relative_stationarity_error"] < 1e-12 and agreement["normalized_margin_error"] < 1e-13
    assert reduced["check_wide"]["verdict"] == reduced["check_narrow"]["verdict"] == "kkt"
    verified = run_json(run_cli, "embed", tmp_path / "reduced.safetensors", tmp_path / "plain.safetensors", "--dataset", "gaussians")
    assert verified["verdict"] == "isometric_embedding" and verified["embedding_source"] == "narrow_record" and verified["parent_hash_matches"]
    # the recovered network is the original up to the order of its units
    original, recovered = kktembed.load(narrow), kktembed.load(tmp_path / "reduced.safetensors")
    rows = lambda network: sorted(network.params["0.weight"].tolist())  # noqa: E731
    assert torch.allclose(torch.tensor(rows(recovered)), torch.tensor(rows(original)), rtol=0, atol=1e-14)


def test_net2net_groups_are_found_but_not_merged_without_permission(run_cli, fixtures_dir, tmp_path):
    narrow = fixtures_dir / "mlp_kkt_gaussians.safetensors"
    run_json(run_cli, "split", narrow, "-o", tmp_path / "control.safetensors", "--neuron", "0,1", "--ratio", "0.3", "--strategy", "net2net")
    plain = run_json(run_cli, "reduce", tmp_path / "control.safetensors", "--no-profile")
    layer = plain["layers"][0]
    assert plain["widths_after"] == {"0": 8} and plain["isometric"]  # nothing merged: no claim it does not have
    assert sorted(map(sorted, layer["function_preserving_groups"])) == [[0, 6], [1, 7]]
    allowed = run_json(run_cli, "reduce", tmp_path / "control.safetensors", "--allow-non-isometric", "-o", tmp_path / "merged.safetensors", "--dataset", "gaussians", "--no-profile")
    assert allowed["widths_after"] == {"0": 6} and not allowed["isometric"] and allowed["output_error"] < 1e-13
    embedded = run_json(run_cli, "embed", tmp_path / "merged.safetensors", tmp_path / "control.safetensors", "--dataset", "gaussians")
    assert embedded["verdict"] == "not_isometric"


def test_different_batches_still_embed_some_narrow_network(run_cli, fixtures_dir, tmp_path):
    """With different batches η(t) ≠ Tθ(t), but η(t) is still the split of the narrow network
    trained on η's own batches: reduce finds it exactly."""
    out = tmp_path / "run"
    summary = run_json(
        run_cli, "trace", fixtures_dir / "paper_mlp_leaky.safetensors", "--split", "copies=2", "--batch", "16", "--different-batches",
        "--steps", "300", "--out", out,
    )
    assert summary["max_trajectory_error"] > 1e-4
    not_embedded = run_json(run_cli, "embed", out / "narrow_final.safetensors", out / "wide_final.safetensors")
    assert not_embedded["verdict"] == "not_embedded"
    reduced = run_json(run_cli, "reduce", out / "wide_final.safetensors", "--no-profile")
    assert reduced["widths_before"] == {"0": 2} and reduced["widths_after"] == {"0": 1}
    assert reduced["isometric"] and reduced["merge_error"] < 1e-13


def test_perturbed_copies_merge_only_at_a_loose_tolerance(run_cli, fixtures_dir, tmp_path):
    # the demo network: 32 units, none condensed even at 1e-1
    run_json(run_cli, "split", fixtures_dir / "mlp_gd_digits38.safetensors", "-o", tmp_path / "wide.safetensors", "--neuron", "2", "--ratio", "0.5")
    wide = kktembed.load(tmp_path / "wide.safetensors")
    params = dict(wide.params)
    params["0.weight"] = params["0.weight"].clone()
    bend = 1 + 1e-4 * torch.linspace(-1, 1, params["0.weight"].shape[1], dtype=torch.float64)
    params["0.weight"][32] *= bend  # the copy of unit 2, bent by 1e-4 relative
    save_file(params, tmp_path / "bent.safetensors")
    tight = run_json(run_cli, "reduce", tmp_path / "bent.safetensors", "--tol", "1e-8", "--no-profile")
    loose = run_json(run_cli, "reduce", tmp_path / "bent.safetensors", "--tol", "1e-2", "--no-profile")
    assert tight["widths_after"] == {"0": 33} and tight["merge_error"] < 1e-15
    assert loose["widths_after"] == {"0": 32} and 1e-8 < loose["merge_error"] < 1e-4  # reported, not hidden


def test_reduce_refuses_bad_options_and_non_degree_one_units(run_cli, fixtures_dir, tmp_path):
    code, _, err = run_cli("reduce", fixtures_dir / "mlp_kkt_gaussians.safetensors", "--tol", "nan")
    assert code == 2 and "--tol" in err
    code, _, err = run_cli("reduce", fixtures_dir / "mlp_kkt_gaussians.safetensors", "-o", fixtures_dir / "mlp_kkt_gaussians.safetensors", "--force")
    assert code != 0 and "is an input of this command" in err


def test_reduce_table_for_people(run_cli, fixtures_dir):
    code, out, err = run_cli("reduce", fixtures_dir / "mlp_kkt_gaussians.safetensors")
    assert code == 0, err
    assert "kktembed reduce" in out and "effective width against the tolerance" in out and "T is an isometry" in out


@pytest.mark.parametrize("fixture", ["cnn_digits38", "mlp_multiclass_digits012"])
def test_split_then_reduce_round_trip_on_fixtures(run_cli, fixtures_dir, tmp_path, fixture):
    run_json(run_cli, "split", fixtures_dir / f"{fixture}.safetensors", "-o", tmp_path / "wide.safetensors", "--copies", "2", *(["--layer", "0"] if fixture == "cnn_digits38" else []))
    reduced = run_json(run_cli, "reduce", tmp_path / "wide.safetensors", "-o", tmp_path / "narrow.safetensors", "--no-profile")
    before = kktembed.inspect(fixtures_dir / f"{fixture}.safetensors").hidden_layers
    assert reduced["widths_after"] == {layer["name"]: layer["width"] for layer in before}
    assert reduced["merge_error"] < 1e-14 and reduced["isometric"]
