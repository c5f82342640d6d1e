"""Properties of the embedding map T (MATH.md §4) over random shapes and shares."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import random_inputs
from kktembed.embedding import EMBEDDING_KEY, Embedding, EmbeddingRecord, UnitMap, UnitSplit
from kktembed.network import Network, flatten_params
from kktembed.plugins import adapters, split_strategies

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def shares(draw, max_copies=4):
    copies = draw(st.integers(2, max_copies))
    raw = draw(st.lists(st.floats(0.0, 1.0), min_size=copies, max_size=copies).filter(lambda v: sum(v) > 1e-3))
    total = sum(raw)
    return [value / total for value in raw]


@st.composite
def mlp_configs(draw):
    depth = draw(st.integers(1, 3))  # hidden layers
    widths = [draw(st.integers(1, 5))] + [draw(st.integers(1, 5)) for _ in range(depth)] + [draw(st.sampled_from([1, 3]))]
    activation = draw(st.sampled_from(["relu", "leaky_relu:0.1", "identity"]))
    return {"widths": widths, "activation": activation, "first_layer_bias": draw(st.booleans())}


@st.composite
def cnn_configs(draw):
    n_conv = draw(st.integers(1, 2))
    conv = []
    for i in range(n_conv):
        conv.append(
            {
                "key": str(10 * i),
                "out_channels": draw(st.integers(1, 3)),
                "kernel_size": [3, 3],
                "stride": [1, 1],
                "padding": [1, 1],
                "pool": draw(st.sampled_from([None, "avg:2", "max:2"])) if i == 0 else None,
            }
        )
    n_linear = draw(st.integers(1, 2))
    linear = [{"key": str(100 + i), "out_features": draw(st.integers(1, 3))} for i in range(n_linear - 1)] + [{"key": "200", "out_features": 1}]
    return {"input_shape": [draw(st.integers(1, 2)), 4, 4], "activation": "relu", "first_layer_bias": draw(st.booleans()), "conv": conv, "linear": linear}


def random_params(adapter, config, seed):
    generator = torch.Generator().manual_seed(seed)
    module = adapter.build(config)
    return {key: torch.randn(value.shape, generator=generator, dtype=torch.float64) for key, value in module.state_dict().items()}


def random_embedding(data, adapter, config, strategy_name="isometric", n_splits=3) -> Embedding:
    strategy = split_strategies()[strategy_name]
    embedding = Embedding(adapter, config, [])
    for _ in range(data.draw(st.integers(1, n_splits))):
        current = embedding.wide_config
        layers = adapter.units(current)
        layer = data.draw(st.sampled_from(layers))
        share_list = data.draw(shares())
        incoming, outgoing = strategy.scales(share_list)
        unit = data.draw(st.integers(0, layer.width - 1))
        embedding = embedding.then(
            Embedding(adapter, current, [UnitSplit(layer.name, unit, layer.width, tuple(share_list), tuple(incoming), tuple(outgoing), strategy.name)])
        )
    if data.draw(st.booleans()):  # the copies interleaved with the other units: T given by unit maps
        embedding = embedding.then(random_permutation(data, adapter, embedding.wide_config))
    return embedding


def random_permutation(data, adapter, config) -> Embedding:
    maps = []
    for layer in adapter.units(config):
        order = tuple(data.draw(st.permutations(list(range(layer.width)))))
        maps.append(UnitMap(layer.name, layer.width, order, (1.0,) * layer.width, (1.0,) * layer.width))
    return Embedding(adapter, config, layer_maps=tuple(maps))


def inner(a, b):
    return float(flatten_params(a) @ flatten_params(b))


def check_isometric_properties(adapter, config, data, seed):
    embedding = random_embedding(data, adapter, config)
    theta, phi = random_params(adapter, config, seed), random_params(adapter, config, seed + 1)
    wide_theta = embedding.apply(theta)
    # TᵀT = I: Tᵀ(Tθ) = θ, and ⟨Tθ, Tφ⟩ = ⟨θ, φ⟩
    back = embedding.adjoint(wide_theta)
    assert all(torch.allclose(back[key], theta[key], atol=1e-12) for key in theta)
    assert inner(wide_theta, embedding.apply(phi)) == pytest.approx(inner(theta, phi), rel=1e-12, abs=1e-12)
    # Tᵀ is the adjoint of T: ⟨Tθ, ψ̃⟩ = ⟨θ, Tᵀψ̃⟩ for a wide ψ̃ outside the image
    psi = random_params(adapter, embedding.wide_config, seed + 2)
    assert inner(wide_theta, psi) == pytest.approx(inner(theta, embedding.adjoint(psi)), rel=1e-10, abs=1e-10)
    # output preservation and the gradient map ∇Φ̃(Tθ; x) = T∇Φ(θ; x)
    narrow = Network(adapter, config, theta)
    wide = Network(adapter, embedding.wide_config, wide_theta)
    x = random_inputs(narrow, 6, seed=seed)
    assert torch.allclose(wide.forward(x), narrow.forward(x), atol=1e-12, rtol=1e-12)
    weights = torch.randn(narrow.output_dim, dtype=torch.float64)

    def gradient(network, params):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        grads = torch.autograd.grad((network.forward(x, leaves) @ weights).sum(), list(leaves.values()))
        return dict(zip(leaves, grads))

    mapped = embedding.apply(gradient(narrow, theta))
    wide_gradient = gradient(wide, wide_theta)
    assert all(torch.allclose(wide_gradient[key], mapped[key], atol=1e-11) for key in mapped)
    assert embedding.isometry_error < 1e-12


@SETTINGS
@given(config=mlp_configs(), data=st.data(), seed=st.integers(0, 1000))
def test_mlp_isometric_split_properties(config, data, seed):
    adapter = adapters()["mlp"]
    assume(adapter.units(config))
    check_isometric_properties(adapter, config, data, seed)


@SETTINGS
@given(config=cnn_configs(), data=st.data(), seed=st.integers(0, 1000))
def test_cnn_isometric_split_properties(config, data, seed):
    check_isometric_properties(adapters()["cnn"], config, data, seed)


@SETTINGS
@given(config=mlp_configs(), data=st.data(), seed=st.integers(0, 1000))
def test_net2net_preserves_output_but_not_norm(config, data, seed):
    adapter = adapters()["mlp"]
    assume(adapter.units(config))
    embedding = random_embedding(data, adapter, config, "net2net")
    theta = random_params(adapter, config, seed)
    narrow, wide = Network(adapter, config, theta), Network(adapter, embedding.wide_config, embedding.apply(theta))
    x = random_inputs(narrow, 5, seed=seed)
    assert torch.allclose(wide.forward(x), narrow.forward(x), atol=1e-11, rtol=1e-11)
    assert embedding.isometry_error > 0.5  # copies keep the full incoming weights
    # still injective: project inverts it on its image
    back = embedding.project(wide.params)
    assert all(torch.allclose(back[key], theta[key], atol=1e-12) for key in theta)


def test_composition_equals_sequential_application():
    adapter = adapters()["mlp"]
    config = {"widths": [3, 4, 2, 1], "activation": "relu", "first_layer_bias": True}
    theta = random_params(adapter, config, 0)
    c = math.sqrt(0.3), math.sqrt(0.7)
    first = Embedding(adapter, config, [UnitSplit("0", 1, 4, (0.3, 0.7), c, c, "isometric")])
    second = Embedding(adapter, first.wide_config, [UnitSplit("0", 4, 5, (0.5, 0.5), (0.5**0.5,) * 2, (0.5**0.5,) * 2, "isometric")])
    composed = first.then(second)
    direct = second.apply(first.apply(theta))
    # the composition multiplies the factors of a copy of a copy once: equal up to one rounding
    assert all(torch.allclose(composed.apply(theta)[key], direct[key], rtol=1e-15, atol=0) for key in theta)
    assert composed.wide_config["widths"] == [3, 6, 2, 1]


def test_flatten_block_split_moves_whole_channel_blocks():
    adapter = adapters()["cnn"]
    config = {
        "input_shape": [1, 4, 4], "activation": "relu", "first_layer_bias": False,
        "conv": [{"key": "0", "out_channels": 2, "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "pool": None}],
        "linear": [{"key": "3", "out_features": 1}],
    }
    theta = random_params(adapter, config, 0)
    embedding = Embedding(adapter, config, [UnitSplit("0", 0, 2, (0.5, 0.5), (0.5**0.5,) * 2, (0.5**0.5,) * 2, "isometric")])
    wide = embedding.apply(theta)
    block = theta["3.weight"][:, :16]
    assert torch.allclose(wide["3.weight"][:, :16], 0.5**0.5 * block)
    assert torch.allclose(wide["3.weight"][:, 32:48], 0.5**0.5 * block)
    assert torch.equal(wide["3.weight"][:, 16:32], theta["3.weight"][:, 16:32])


def test_vector_forms_agree_with_state_dict_forms():
    adapter = adapters()["mlp"]
    config = {"widths": [3, 4, 2, 1], "activation": "relu", "first_layer_bias": True}
    theta = random_params(adapter, config, 0)
    c = (0.3**0.5, 0.7**0.5)
    embedding = Embedding(adapter, config, [UnitSplit("2", 1, 2, (0.3, 0.7), c, c, "isometric")])
    order = list(adapter.parameter_shapes(config))
    vector = flatten_params({key: theta[key] for key in order})
    wide = embedding.apply(theta)
    wide_order = list(adapter.parameter_shapes(embedding.wide_config))
    assert torch.equal(embedding.apply_vector(vector), flatten_params({key: wide[key] for key in wide_order}))
    assert torch.allclose(embedding.adjoint_vector(embedding.apply_vector(vector)), vector, atol=1e-15)
    with pytest.raises(Exception, match="parameter vector of 3 entries"):
        embedding.apply_vector(torch.zeros(3, dtype=torch.float64))


@st.composite
def unit_maps(draw, layer, narrow_width):
    """A map with wide units in any order: every narrow unit gets at least one copy."""
    extra = draw(st.lists(st.integers(0, narrow_width - 1), max_size=4))
    source = draw(st.permutations(list(range(narrow_width)) + extra))
    factors = st.lists(st.floats(-2, 2, allow_nan=False), min_size=len(source), max_size=len(source))
    return UnitMap(layer, narrow_width, tuple(source), tuple(draw(factors)), tuple(draw(factors)))


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 1000))
def test_unit_maps_compose_like_their_application(data, seed):
    adapter = adapters()["cnn"]
    config = data.draw(cnn_configs())
    layers = adapter.units(config)
    first = Embedding(adapter, config, layer_maps=tuple(data.draw(unit_maps(layer.name, layer.width)) for layer in layers))
    middle = {layer.name: layer.width for layer in adapter.units(first.wide_config)}
    chosen = data.draw(st.lists(st.sampled_from([layer.name for layer in layers]), unique=True))
    second = Embedding(adapter, first.wide_config, layer_maps=tuple(data.draw(unit_maps(name, middle[name])) for name in chosen))
    theta = random_params(adapter, config, seed)
    composed, direct = first.then(second).apply(theta), second.apply(first.apply(theta))
    assert all(torch.allclose(composed[key], direct[key], rtol=1e-14, atol=1e-14) for key in theta)
    # Tᵀ is the adjoint of T for any factors: ⟨Tθ, ψ̃⟩ = ⟨θ, Tᵀψ̃⟩
    psi = random_params(adapter, second.wide_config, seed + 1)
    assert inner(first.then(second).apply(theta), psi) == pytest.approx(inner(theta, first.then(second).adjoint(psi)), rel=1e-10, abs=1e-10)


def test_split_records_stay_version_1_and_map_records_are_version_2():
    adapter = adapters()["mlp"]
    config = {"widths": [3, 4, 2], "activation": "relu", "first_layer_bias": True}
    c = (0.3**0.5, 0.7**0.5)
    split = Embedding(adapter, config, [UnitSplit("0", 1, 4, (0.3, 0.7), c, c, "isometric")])
    split_json = json.loads(EmbeddingRecord([]).appended("a" * 64, "n.safetensors", split).to_json())
    assert split_json == {"version": 1, "stages": [{"parent_sha256": "a" * 64, "parent_name": "n.safetensors", "parent_config": config, "splits": [split.splits[0].to_dict()]}]}
    permuted = split.then(Embedding(adapter, split.wide_config, layer_maps=(UnitMap("0", 5, (4, 0, 3, 1, 2), (1.0,) * 5, (1.0,) * 5),)))
    assert not permuted.given_by_splits and permuted.strategies == ["isometric"]
    record = EmbeddingRecord([]).appended("a" * 64, "n.safetensors", permuted)
    assert json.loads(record.to_json())["version"] == 2
    read, stage = EmbeddingRecord.from_metadata({EMBEDDING_KEY: record.to_json()}).embedding_from(adapter, config, wide_config=permuted.wide_config)
    theta = random_params(adapter, config, 0)
    assert all(torch.equal(read.apply(theta)[key], permuted.apply(theta)[key]) for key in theta)
    assert read.isometry_error <= 1e-15 and stage["parent_sha256"] == "a" * 64


def test_isometry_error_of_a_map_counts_missing_and_extra_copies():
    assert UnitMap("0", 2, (0, 1), (1.0, 1.0), (1.0, 1.0)).isometry_error == 0.0
    assert UnitMap("0", 2, (0, 0), (0.6, 0.8), (0.6, 0.8)).isometry_error == pytest.approx(1.0)  # unit 1 has no copy
    assert UnitMap("0", 1, (0, 0), (1.0, 1.0), (0.3, 0.7)).isometry_error == pytest.approx(1.0)  # net2net
