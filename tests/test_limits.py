"""The estimates and guards behind the bad-input corpus, checked against what they estimate: memory of
a forward pass, sizes of a split, bytes a header lists, norms and margins at the ends of float64,
strict JSON, the files a checkpoint refers to."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from helpers import CNN_CONFIG, MLP_CONFIG, random_network
from kktembed.checkpoint import ADAPTER_KEY, CONFIG_KEY, DATA_KEY, header_bytes_needed, read_safetensors_header, referenced_files
from kktembed.errors import CheckpointError, UsageError
from kktembed.kkt.margins import normalized_margin
from kktembed.network import safe_norm
from kktembed.plugins import adapters
from kktembed.splitting import SplitPlan
from kktembed.validation import parse_json


def test_activation_elements_count_every_intermediate_output():
    # MLP 5-7-6-1 with a first-layer bias: input 5, Linear 7, ReLU 7, Linear 6, ReLU 6, Linear 1
    assert adapters()["mlp"].activation_elements(MLP_CONFIG) == 5 + 7 + 7 + 6 + 6 + 1
    # CNN on 2×6×6: conv 3×6×6, relu, avg-pool 3×3×3, conv (2×2) 2×2×2, relu, max-pool 2×1×1, flatten 2, linear 4, relu, linear 1
    expected = 72 + 108 + 108 + 27 + 8 + 8 + 2 + 2 + 4 + 4 + 1
    assert adapters()["cnn"].activation_elements(CNN_CONFIG) == expected


def test_activation_elements_match_a_real_forward_pass():
    network = random_network("cnn", CNN_CONFIG)
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel())) for m in network.module.modules() if next(m.children(), None) is None]
    network.module(torch.zeros((1, *network.input_shape), dtype=torch.float64))
    for hook in hooks:
        hook.remove()
    assert adapters()["cnn"].activation_elements(CNN_CONFIG) == math.prod(network.input_shape) + sum(outputs)


@pytest.mark.parametrize(
    "options",
    [dict(copies=3), dict(neuron="1,4", ratio="0.2,0.3,0.5"), dict(width=17), dict(width=8), dict(layers=["0", "2"], copies=2), dict(layers=["2"], width=20)],
)
def test_split_sizes_are_those_of_the_embedding_built(options):
    network = random_network("mlp", MLP_CONFIG)
    plan = SplitPlan.from_options(**{"layers": ["0"], **options})
    before, after, copies = plan.sizes(network)
    embedding = plan.embedding(network)
    wide_widths = {unit.name: unit.width for unit in network.adapter.units(embedding.wide_config)}
    assert after == {layer: wide_widths[layer] for layer in after}
    assert before == {layer: unit.width for unit in network.adapter.units(network.config) for layer in [unit.name] if layer in after}
    assert copies == sum(split.copies for split in embedding.splits)


def test_split_refused_when_its_record_would_not_fit_a_header(monkeypatch):
    network = random_network("mlp", {**MLP_CONFIG, "widths": [5, 40, 1], "keys": ["0", "2"]})
    monkeypatch.setenv("KKTEMBED_MEMORY_LIMIT", "64GiB")
    plan = SplitPlan.from_options(copies=1_000_000)  # 40 units × 10^6 copies: a record of gigabytes
    with pytest.raises(UsageError, match="header"):
        plan.embedding(network, recorded=True)
    monkeypatch.setenv("KKTEMBED_MEMORY_LIMIT", "100MiB")
    with pytest.raises(UsageError, match="memory limit"):
        plan.embedding(network, recorded=False)


def test_header_bytes_needed_counts_stored_and_float64_bytes(tmp_path):
    tensors = {"a": torch.zeros(3, 4, dtype=torch.float32), "b": torch.zeros(5, dtype=torch.float16), "c": torch.zeros(2, dtype=torch.float64)}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    _, entries = read_safetensors_header(tmp_path / "t.safetensors")
    assert header_bytes_needed(entries) == (12 * 4 + 12 * 8) + (5 * 2 + 5 * 8) + 2 * 8  # float64 is not copied
    lying = {"w": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}  # disagrees with its offsets
    assert header_bytes_needed(lying) == 0  # safetensors refuses it as corrupt; no estimate from it


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e-310, 1.0])
def test_norms_at_the_ends_of_float64(scale):
    network = random_network("mlp", MLP_CONFIG)
    reference = network.norm()
    scaled = network.with_params({key: value * scale for key, value in network.params.items()})
    assert math.isclose(scaled.norm(), reference * scale, rel_tol=1e-12 if scale >= 1e-300 else 1e-3)
    assert math.isclose(safe_norm(scaled.params), reference * scale, rel_tol=1e-12 if scale >= 1e-300 else 1e-3)


def test_normalized_margin_where_the_power_overflows_or_underflows():
    assert normalized_margin(3.0, 2.0**600, 2) == 3.0 * 2.0**-1200  # 2^1200 overflows, the quotient does not
    assert normalized_margin(3.0, 2.0**-600, 2) == math.inf  # γ̄ itself is out of range
    assert normalized_margin(3.0, 2.0**-300, 2) == 3.0 * 2.0**600
    assert math.isnan(normalized_margin(0.0, 0.0, 2))
    assert normalized_margin(0.5, 4.0, 2) == 0.5 / 16.0


def test_parse_json_refuses_deep_nesting_and_constants():
    assert parse_json('{"a": [1, 2.5]}', "doc", CheckpointError) == {"a": [1, 2.5]}
    with pytest.raises(CheckpointError, match="nested too deeply"):
        parse_json("[" * 100_000 + "]" * 100_000, "doc", CheckpointError)
    with pytest.raises(CheckpointError, match="NaN"):
        parse_json('{"a": NaN}', "doc", CheckpointError)
    assert math.isnan(parse_json('{"a": NaN}', "doc", CheckpointError, constants=True)["a"])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        parse_json(b"\xff{", "doc", CheckpointError)


def test_referenced_files_of_a_checkpoint(tmp_path):
    tensors = {"0.weight": torch.zeros(7, 5, dtype=torch.float64)}
    metadata = {"format": "pt", ADAPTER_KEY: "mlp", CONFIG_KEY: json.dumps(MLP_CONFIG), DATA_KEY: "../data/train.safetensors"}
    (tmp_path / "ckpt").mkdir()
    save_file(tensors, str(tmp_path / "ckpt" / "model.safetensors"), metadata=metadata)
    (tmp_path / "ckpt" / "kktembed.json").write_text("{}")
    assert referenced_files(tmp_path / "ckpt") == [tmp_path / "ckpt" / "model.safetensors", tmp_path / "ckpt" / "kktembed.json", tmp_path / "ckpt" / "../data/train.safetensors"]
    assert referenced_files(tmp_path / "ckpt" / "model.safetensors") == [tmp_path / "ckpt" / "model.safetensors", tmp_path / "ckpt" / "../data/train.safetensors"]
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint")
    assert referenced_files(tmp_path / "garbage.safetensors") == [tmp_path / "garbage.safetensors"]
    assert referenced_files(tmp_path / "missing.safetensors") == [tmp_path / "missing.safetensors"]
