"""The library API (kktembed.load/check/split/embed/trace/inspect/convert): the documented example
runs, and each function's to_dict() is its command's --json."""

import json
import re

import numpy as np
import pytest
import torch

import kktembed
from conftest import ROOT
from kktembed.errors import UsageError

TIMINGS = {"solver_seconds", "gram_seconds"}


def without_timings(payload: dict) -> dict:
    return {key: value for key, value in payload.items() if key not in TIMINGS}


def as_json(result) -> dict:
    """What --json would print for this result (the same conversion, NaN → null)."""
    from kktembed.report import _plain

    return json.loads(json.dumps(_plain(result.to_dict())))


def test_api_doc_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)


def test_cli_and_api_give_identical_json(run_cli, fixtures_dir):
    checkpoint = fixtures_dir / "mlp_gd_digits38.safetensors"
    code, out, err = run_cli("check", checkpoint, "--json")
    assert code == 0, err
    assert without_timings(json.loads(out)) == without_timings(as_json(kktembed.check(checkpoint)))
    code, out, err = run_cli("inspect", checkpoint, "--json")
    assert code == 0, err
    assert json.loads(out) == as_json(kktembed.inspect(checkpoint))


def test_split_and_trace_json_match_the_api(run_cli, fixtures_dir, tmp_path):
    narrow = fixtures_dir / "mlp_kkt_gaussians.safetensors"
    code, out, err = run_cli("split", narrow, "-o", tmp_path / "cli.safetensors", "--neuron", "2", "--ratio", "0.3", "--json")
    assert code == 0, err
    api = as_json(kktembed.split(narrow, tmp_path / "api.safetensors", neuron=2, ratio=0.3))
    cli = json.loads(out)
    assert {k: v for k, v in cli.items() if k != "output"} == {k: v for k, v in api.items() if k != "output"}
    code, out, err = run_cli("trace", fixtures_dir / "paper_mlp_leaky.safetensors", "--split", "copies=2", "--steps", "30", "--json")
    assert code == 0, err
    report = kktembed.trace(fixtures_dir / "paper_mlp_leaky.safetensors", split="copies=2", steps=30)
    assert json.loads(out) == as_json(report)
    assert len(report.records) == 4 and report.wide_final.config["widths"] == [2, 2, 1]


def test_check_accepts_arrays_and_a_loaded_network(fixtures_dir):
    from kktembed.loading import load_data

    network = kktembed.load(fixtures_dir / "mlp_kkt_gaussians.safetensors")
    dataset = load_data(None, None, network.metadata, network.path.parent)  # the file's own data reference
    from_arrays = kktembed.check(network, x=dataset.x.numpy(), y=dataset.y.numpy(), profile=False)
    from_file = kktembed.check(fixtures_dir / "mlp_kkt_gaussians.safetensors", profile=False)
    assert from_arrays.verdict == from_file.verdict == "kkt"
    assert from_arrays.relative_stationarity_residual == pytest.approx(from_file.relative_stationarity_residual, rel=1e-12)
    assert from_arrays.data == "<tensors>"


def test_results_are_immutable(fixtures_dir):
    result = kktembed.check(fixtures_dir / "mlp_kkt_gaussians.safetensors", profile=False)
    with pytest.raises(AttributeError):
        result.verdict = "kkt"


@pytest.mark.parametrize(
    "call,fragment",
    [
        (lambda f: kktembed.check(f, normm="l2"), "unknown check option"),
        (lambda f: kktembed.check(f, norm="l3"), "unknown norm"),
        (lambda f: kktembed.check(f, kink_tol=float("nan")), "--kink-tol"),
        (lambda f: kktembed.check(f, x=np.zeros((2, 2))), "x= and y="),
        (lambda f: kktembed.split(f, ratio="0.2,0.2"), "sum to"),
        (lambda f: kktembed.trace(f, split="copies=2", stepz=3), "unknown trace option"),
        (lambda f: kktembed.trace(f, split="layer=0", wide=f), "exactly one"),
        (lambda f: kktembed.load(3.5), "cannot load a network from a float"),
    ],
)
def test_api_errors_are_kktembed_errors(fixtures_dir, call, fragment):
    with pytest.raises(kktembed.KktembedError, match=re.escape(fragment)):
        call(fixtures_dir / "mlp_kkt_gaussians.safetensors")


def test_usage_errors_come_before_loading(tmp_path):
    missing = tmp_path / "absent.safetensors"  # never read: the options are refused first
    with pytest.raises(UsageError):
        kktembed.check(missing, active_tol=-1.0)
    with pytest.raises(UsageError):
        kktembed.split(missing, copies=1)


def test_split_in_memory_keeps_the_output(fixtures_dir):
    result = kktembed.split(fixtures_dir / "mlp_kkt_gaussians.safetensors", neuron=[0, 1], copies=3, dataset="gaussians")
    assert result.output is None and result.output_error < 1e-13
    narrow = kktembed.load(fixtures_dir / "mlp_kkt_gaussians.safetensors")
    mapped = result.embedding.apply(narrow.params)
    assert all(torch.equal(mapped[key], result.network.params[key]) for key in mapped)
