"""``reduce`` (MATH.md §4 read backwards) and finding T without a record: properties over random
shapes, splits (shares 0 included) and permutations, checked against independent computations."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import random_inputs
from kktembed.adapters.mlp import MLPAdapter
from kktembed.checkpoint import load_network, save_checkpoint
from kktembed.comparison import find_embedding
from kktembed.embedding import EMBEDDING_KEY, Embedding, EmbeddingRecord, UnitMap, UnitSplit, unit_blocks
from kktembed.errors import CheckpointError, InputError, UsageError
from kktembed.network import Network, flatten_params
from kktembed.plugins import adapters
from kktembed.reduction import (
    assign_copies,
    direction_components,
    match_embedding,
    reduce_network,
    reduction_metadata,
    write_reduced_checkpoint,
)
from test_embedding import cnn_configs, mlp_configs, random_params

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def shares_with_zero(draw):
    copies = draw(st.integers(2, 4))
    raw = draw(st.lists(st.one_of(st.just(0.0), st.floats(0.01, 1.0)), min_size=copies, max_size=copies).filter(lambda v: sum(v) > 0))
    return [value / sum(raw) for value in raw]


def split_and_permute(data, adapter, config, max_splits=4) -> Embedding:
    """Random isometric splits (shares 0 included), then a random permutation of every hidden layer."""
    embedding = Embedding(adapter, config, [])
    for _ in range(data.draw(st.integers(1, max_splits))):
        current = embedding.wide_config
        layer = data.draw(st.sampled_from(adapter.units(current)))
        shares = data.draw(shares_with_zero())
        factors = tuple(math.sqrt(share) for share in shares)
        unit = data.draw(st.integers(0, layer.width - 1))
        embedding = embedding.then(Embedding(adapter, current, [UnitSplit(layer.name, unit, layer.width, tuple(shares), factors, factors, "isometric")]))
    permutations = []
    for layer in adapter.units(embedding.wide_config):
        order = data.draw(st.permutations(list(range(layer.width))))
        permutations.append(UnitMap(layer.name, layer.width, tuple(order), (1.0,) * layer.width, (1.0,) * layer.width))
    return embedding.then(Embedding(adapter, embedding.wide_config, layer_maps=tuple(permutations)))


def unit_norms(network: Network) -> dict[str, list[float]]:
    """Sorted ‖(u_i, v_i)‖ per hidden layer: unchanged by any permutation of any layer's units."""
    norms = {}
    for layer in network.adapter.units(network.config):
        squares = torch.zeros(layer.width, dtype=torch.float64)
        for direction in ("incoming", "outgoing"):
            for block in unit_blocks(network.params, layer, layer.width, direction):
                squares += (block.reshape(layer.width, -1) ** 2).sum(dim=1)
        norms[layer.name] = sorted(squares.sqrt().tolist())
    return norms


def relative_difference(first: dict, second: dict) -> float:
    return float((flatten_params(first) - flatten_params({key: second[key] for key in first})).norm() / flatten_params(first).norm())


def check_reduce_recovers_narrow(adapter, config, data, seed):
    narrow = Network(adapter, config, random_params(adapter, config, seed))
    embedding = split_and_permute(data, adapter, config)
    wide = Network(adapter, embedding.wide_config, embedding.apply(narrow.params))
    result = reduce_network(wide, profile=None)
    # the narrow network, up to the order of units: widths, per-unit norms, norm, outputs
    assert {layer.name: layer.width for layer in adapter.units(result.narrow.config)} == {layer.name: layer.width for layer in adapter.units(config)}
    for name, norms in unit_norms(result.narrow).items():
        assert norms == pytest.approx(unit_norms(narrow)[name], rel=1e-12, abs=1e-14)
    assert result.norm_narrow == pytest.approx(narrow.norm(), rel=1e-13)
    x = random_inputs(narrow, 5, seed=seed)
    assert torch.allclose(result.narrow.forward(x), narrow.forward(x), rtol=1e-11, atol=1e-12)
    assert result.output_error(x) <= 1e-11 * float(wide.forward(x).abs().max() + 1)
    # θ̃ = Tθ with an isometric T, to rounding
    assert result.merge_error <= 1e-14 and result.coefficient_isometry_error <= 1e-14 and result.isometric
    assert relative_difference(wide.params, result.embedding.apply(result.narrow.params)) <= 1e-14
    # T found without a record, from the original narrow network, verifies
    found = match_embedding(narrow, wide)
    assert relative_difference(wide.params, found.apply(narrow.params)) <= 1e-13
    assert found.isometry_error <= 1e-13
    wide_again = Network(adapter, found.wide_config, found.apply(narrow.params))
    assert torch.allclose(wide_again.forward(x), narrow.forward(x), rtol=1e-11, atol=1e-12)


@SETTINGS
@given(config=mlp_configs(), data=st.data(), seed=st.integers(0, 1000))
def test_mlp_reduce_recovers_the_narrow_network(config, data, seed):
    adapter = adapters()["mlp"]
    assume(adapter.units(config))
    check_reduce_recovers_narrow(adapter, config, data, seed)


@SETTINGS
@given(config=cnn_configs(), data=st.data(), seed=st.integers(0, 1000))
def test_cnn_reduce_recovers_the_narrow_network(config, data, seed):
    check_reduce_recovers_narrow(adapters()["cnn"], config, data, seed)


def brute_force_components(vectors: np.ndarray, tol: float) -> list[set[int]]:
    """Single linkage at ‖ŵ_i − ŵ_k‖ ≤ tol from every pairwise distance."""
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import cdist

    directions = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    _, labels = connected_components(cdist(directions, directions) <= tol, directed=False)
    return sorted(({int(i) for i in np.flatnonzero(labels == label)} for label in set(labels)), key=min)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    dimension=st.sampled_from([2, 5, 40, 400]),
    centres=st.integers(1, 6),
    spread_exponent=st.integers(-14, -1),
    tol_exponent=st.integers(-12, -1),
)
def test_direction_components_equal_brute_force_single_linkage(seed, dimension, centres, spread_exponent, tol_exponent):
    """Clusters of positive multiples of a few directions, spread at a given scale; both code paths
    (projections + pairs, and Gram blocks for tol·√d > 1) against all pairwise distances."""
    generator = np.random.default_rng(seed)
    directions = generator.standard_normal((centres, dimension))
    members = generator.integers(0, centres, 60)
    vectors = directions[members] + 10.0**spread_exponent * generator.standard_normal((60, dimension))
    vectors *= generator.uniform(0.1, 10, (60, 1))
    tol = 10.0**tol_exponent
    labels = direction_components(torch.from_numpy(vectors), tol)
    found = sorted(({int(i) for i in np.flatnonzero(labels == label)} for label in set(labels)), key=min)
    assert found == brute_force_components(vectors, tol)
    assert list(dict.fromkeys(labels)) == list(range(len(found)))  # numbered by first member


def two_copy_network(perturbation: float, seed: int = 0) -> tuple[Network, Network]:
    """MLP 4-5-1 and its split of unit 2 into two copies (0.5, 0.5), one copy moved by
    ``perturbation`` times its norm in a random direction of (u, v)."""
    adapter = adapters()["mlp"]
    config = {"widths": [4, 5, 1], "activation": "relu", "first_layer_bias": False}
    narrow = Network(adapter, config, random_params(adapter, config, seed))
    c = (0.5**0.5, 0.5**0.5)
    embedding = Embedding(adapter, config, [UnitSplit("0", 2, 5, (0.5, 0.5), c, c, "isometric")])
    params = embedding.apply(narrow.params)
    copy = torch.cat([params["0.weight"][5], params["2.weight"][:, 5]])
    direction = torch.randn(copy.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    moved = copy + perturbation * copy.norm() * direction / direction.norm()
    params["0.weight"][5], params["2.weight"][:, 5] = moved[:4], moved[4:]
    return narrow, Network(adapter, embedding.wide_config, params)


def least_squares_merge_error(wide: Network, group: list[int]) -> float:
    """‖θ̃ − Tθ‖/‖θ̃‖ of merging ``group`` of the single hidden layer by c_i = ‖w_i‖/(Σ‖w_k‖²)^½:
    Σ_i ‖w_i − c_i m‖² with m = Σ c_i w_i, computed directly on the unit vectors."""
    rows = torch.cat([wide.params["0.weight"], wide.params["2.weight"].T], dim=1)[group]
    c = rows.norm(dim=1) / rows.norm()
    merged = (c[:, None] * rows).sum(dim=0)
    return float((rows - c[:, None] * merged).norm() / flatten_params(wide.params).norm())


def test_perturbed_copy_merges_only_at_a_loose_tolerance_with_an_honest_error():
    _, wide = two_copy_network(1e-4)
    strict = reduce_network(wide, tol=1e-8, profile=None)
    assert strict.layers[0].width_after == 6 and strict.merge_error == 0.0
    loose = reduce_network(wide, tol=1e-2, profile=None)
    assert loose.layers[0].width_after == 5 and loose.layers[0].groups[2] == [2, 5]
    assert loose.merge_error == pytest.approx(least_squares_merge_error(wide, [2, 5]), rel=1e-6)
    assert 1e-7 < loose.merge_error < 1e-4  # the perturbation's scale, not rounding
    assert loose.isometric and loose.coefficient_isometry_error <= 1e-15  # T is an isometry, θ̃ ≠ Tθ
    assert loose.norm_narrow <= loose.norm_wide  # θ = Tᵀθ̃ is the orthogonal projection onto the image
    profile = {row["tol"]: row["widths"]["0"] for row in reduce_network(wide).profile}
    assert profile[1e-8] == 6 and profile[1e-3] == 5


def test_condensed_directions_in_the_profile():
    """15 units around 3 directions (relative spread 1e-3): width 15 at 1e-6, 3 at 1e-2."""
    generator = torch.Generator().manual_seed(0)
    adapter = adapters()["mlp"]
    config = {"widths": [6, 15, 1], "activation": "relu", "first_layer_bias": False}
    centres = torch.randn(3, 7, generator=generator, dtype=torch.float64)
    rows = centres.repeat_interleave(5, dim=0) * torch.rand(15, 1, generator=generator, dtype=torch.float64)
    rows += 1e-3 * rows.norm(dim=1, keepdim=True) * torch.randn(15, 7, generator=generator, dtype=torch.float64) / 7**0.5
    wide = Network(adapter, config, {"0.weight": rows[:, :6].contiguous(), "2.weight": rows[:, 6:].T.contiguous()})
    profile = {row["tol"]: row["widths"]["0"] for row in reduce_network(wide, profile=(1e-6, 1e-2)).profile}
    assert profile == {1e-6: 15, 1e-2: 3}


def net2net_wide(seed: int = 0) -> tuple[Network, Network]:
    """MLP 3-4-2 whose unit 1 is net2net-split (0.3, 0.7): incoming copied, outgoing times r_i."""
    adapter = adapters()["mlp"]
    config = {"widths": [3, 4, 2], "activation": "relu", "first_layer_bias": True}
    narrow = Network(adapter, config, random_params(adapter, config, seed))
    embedding = Embedding(adapter, config, [UnitSplit("0", 1, 4, (0.3, 0.7), (1.0, 1.0), (0.3, 0.7), "net2net")])
    return narrow, Network(adapter, embedding.wide_config, embedding.apply(narrow.params))


def test_net2net_groups_are_reported_and_not_merged_by_default():
    _, wide = net2net_wide()
    result = reduce_network(wide, profile=None)
    layer = result.layers[0]
    assert layer.width_after == 5 and layer.function_preserving_groups == [[1, 4]] and layer.non_isometric_groups == []
    assert result.isometric and result.merge_error == 0.0 and result.embedding.unit_maps == ()


def test_net2net_groups_merge_only_when_allowed_and_then_do_not_claim_isometry():
    narrow, wide = net2net_wide()
    result = reduce_network(wide, allow_non_isometric=True, profile=None)
    layer = result.layers[0]
    assert layer.width_after == 4 and layer.non_isometric_groups == [[1, 4]]
    assert not result.isometric and result.coefficient_isometry_error > 0.1
    assert result.merge_error <= 1e-15  # θ̃ = Tθ: the outgoing parameters are proportional
    x = random_inputs(narrow, 7)
    assert torch.allclose(result.narrow.forward(x), wide.forward(x), rtol=1e-12, atol=1e-13)


def test_function_preserving_merge_of_unrelated_outgoing_parameters():
    """Two units with the same incoming direction and unrelated outgoing columns: the output is
    kept, no unit map reproduces θ̃, and the merge error says so."""
    adapter = adapters()["mlp"]
    config = {"widths": [3, 4, 3], "activation": "leaky_relu:0.1", "first_layer_bias": False}
    params = random_params(adapter, config, 3)
    params["0.weight"][3] = 2.5 * params["0.weight"][0]
    wide = Network(adapter, config, params)
    assert reduce_network(wide, profile=None).layers[0].function_preserving_groups == [[0, 3]]
    result = reduce_network(wide, allow_non_isometric=True, profile=None)
    assert result.layers[0].width_after == 3 and not result.isometric and result.merge_error > 1e-3
    x = random_inputs(wide, 9)
    assert torch.allclose(result.narrow.forward(x), wide.forward(x), rtol=1e-12, atol=1e-13)


class SquaredActivationMLP(MLPAdapter):
    name = "squared-test"

    def activation_degree(self, config, layer):
        return 2


def test_activation_degree_other_than_one_is_refused():
    config = {"widths": [2, 3, 1], "activation": "relu", "first_layer_bias": False}
    adapter = SquaredActivationMLP()
    wide = Network(adapter, config, random_params(adapter, config, 0))
    with pytest.raises(UsageError, match="1-homogeneous"):
        reduce_network(wide)
    with pytest.raises(UsageError, match="1-homogeneous"):
        match_embedding(wide, wide)


def test_layer_choice_and_unknown_layers():
    adapter = adapters()["mlp"]
    config = {"widths": [3, 2, 2, 1], "activation": "relu", "first_layer_bias": False}
    params = random_params(adapter, config, 0)
    c = (0.5**0.5, 0.5**0.5)
    splits = [UnitSplit("0", 0, 2, (0.5, 0.5), c, c, "isometric"), UnitSplit("2", 1, 2, (0.5, 0.5), c, c, "isometric")]
    embedding = Embedding(adapter, config, splits)
    wide = Network(adapter, embedding.wide_config, embedding.apply(params))
    only_first = reduce_network(wide, layers=["0"], profile=None)
    assert [(layer.layer, layer.width_after) for layer in only_first.layers] == [("0", 2)]
    assert only_first.narrow.config["widths"] == [3, 2, 3, 1] and only_first.merge_error <= 1e-15
    with pytest.raises(UsageError, match="output layer"):
        reduce_network(wide, layers=["4"])
    with pytest.raises(UsageError, match="unknown layer"):
        reduce_network(wide, layers=["7"])


def test_assign_copies():
    assert assign_copies([0.7, 0.3], [0.35, 0.3, 0.35]) == [0, 1, 0]
    assert assign_copies([0.6, 0.4], [0.3, 0.3, 0.2, 0.2]) is not None
    assert assign_copies([0.5, 0.5], [0.3, 0.3, 0.4]) is None
    assert assign_copies([1.0, 0.0], [1.0, 0.0]) == [0, 1]
    assert assign_copies([1.0, 0.0], [1.0]) is None  # a share-0 narrow copy needs a share-0 wide copy


def test_matching_assigns_copies_of_a_narrow_network_that_has_copies():
    """NARROW is itself a split (0.3, 0.7); WIDE splits NARROW's second copy again and is permuted:
    matching must give the wide copies to the right narrow copies for an isometry."""
    adapter = adapters()["mlp"]
    config = {"widths": [3, 3, 1], "activation": "relu", "first_layer_bias": False}
    root = random_params(adapter, config, 1)
    a, b = (0.3**0.5, 0.7**0.5), (0.5**0.5, 0.5**0.5)
    first = Embedding(adapter, config, [UnitSplit("0", 0, 3, (0.3, 0.7), a, a, "isometric")])
    narrow = Network(adapter, first.wide_config, first.apply(root))
    second = Embedding(adapter, first.wide_config, [UnitSplit("0", 3, 4, (0.5, 0.5), b, b, "isometric")])
    order = (4, 2, 0, 3, 1)
    permuted = second.then(Embedding(adapter, second.wide_config, layer_maps=(UnitMap("0", 5, order, (1.0,) * 5, (1.0,) * 5),)))
    wide = Network(adapter, permuted.wide_config, permuted.apply(narrow.params))
    found = match_embedding(narrow, wide)
    assert relative_difference(wide.params, found.apply(narrow.params)) <= 1e-14
    assert found.isometry_error <= 1e-14


def test_a_network_with_a_dead_unit_embeds_into_itself():
    """A unit with u = v = 0 is a share-0 copy: reduce removes it, matching maps it onto itself."""
    adapter = adapters()["mlp"]
    config = {"widths": [3, 4, 2], "activation": "relu", "first_layer_bias": False}
    params = random_params(adapter, config, 2)
    params["0.weight"][1] = 0.0
    params["2.weight"][:, 1] = 0.0
    network = Network(adapter, config, params)
    result = reduce_network(network, profile=None)
    assert result.layers[0].width_after == 3 and result.layers[0].zero_copies == 1 and result.merge_error == 0.0
    found = match_embedding(network, network)
    assert found.unit_maps == () and found.isometry_error == 0.0


def plain_permuted_split(tmp_path, seed=0):
    """A kktembed narrow file and the plain file of its split with permuted units (no metadata)."""
    adapter = adapters()["mlp"]
    config = {"widths": [4, 3, 2], "activation": "relu", "first_layer_bias": True}
    narrow = Network(adapter, config, random_params(adapter, config, seed))
    c = (0.2**0.5, 0.0, 0.8**0.5)
    split = Embedding(adapter, config, [UnitSplit("0", 1, 3, (0.2, 0.0, 0.8), c, c, "isometric")])
    order = (2, 4, 0, 3, 1)
    embedding = split.then(Embedding(adapter, split.wide_config, layer_maps=(UnitMap("0", 5, order, (1.0,) * 5, (1.0,) * 5),)))
    save_checkpoint(tmp_path / "narrow.safetensors", narrow)
    save_checkpoint(tmp_path / "wide.safetensors", Network(adapter, embedding.wide_config, embedding.apply(narrow.params)))
    return load_network(tmp_path / "narrow.safetensors"), load_network(tmp_path / "wide.safetensors")


def test_embed_finds_T_by_matching_and_from_reduce_record(tmp_path):
    narrow, wide = plain_permuted_split(tmp_path)
    matched = find_embedding(narrow, wide)
    assert matched.found_by_matching and matched.source == "matched" and matched.hash_matches is None
    assert relative_difference(wide.params, matched.embedding.apply(narrow.params)) <= 1e-15
    assert matched.embedding.isometry_error <= 1e-15 and matched.embedding.strategies == ["matched"]
    # reduce WIDE, write NARROW′ with its map into WIDE: embed reads the record, hash included
    result = reduce_network(wide, profile=None)
    write_reduced_checkpoint(result, tmp_path / "reduced.safetensors")
    reduced = load_network(tmp_path / "reduced.safetensors")
    recorded = find_embedding(reduced, wide)
    assert recorded.source == "narrow_record" and recorded.hash_matches is True and not recorded.found_by_matching
    assert relative_difference(wide.params, recorded.embedding.apply(reduced.params)) <= 1e-15
    assert json.loads(reduced.metadata[EMBEDDING_KEY])["version"] == 2
    from kktembed.outputs import command_scope

    with command_scope():  # within one command, WIDE is read and therefore never overwritten
        load_network(tmp_path / "wide.safetensors")
        with pytest.raises(UsageError, match="is an input of this command"):
            write_reduced_checkpoint(result, tmp_path / "wide.safetensors", force=True)


def test_unrelated_plain_files_are_refused(tmp_path):
    narrow, wide = plain_permuted_split(tmp_path)
    other = Network(narrow.adapter, {**narrow.config, "widths": [4, 2, 2]}, random_params(narrow.adapter, {**narrow.config, "widths": [4, 2, 2]}, 5))
    with pytest.raises(InputError, match="no embedding recorded.*hidden widths"):
        find_embedding(other, wide)


def test_a_split_of_a_reduced_file_drops_its_map_into_the_wide_file(tmp_path):
    _, wide = plain_permuted_split(tmp_path)
    result = reduce_network(wide, profile=None)
    record = EmbeddingRecord.from_metadata(reduction_metadata(result))
    c = (0.5**0.5, 0.5**0.5)
    split = Embedding(result.narrow.adapter, result.narrow.config, [UnitSplit("0", 0, 3, (0.5, 0.5), c, c, "isometric")])
    appended = record.appended("0" * 64, "reduced.safetensors", split)
    assert appended.embeds_into == [] and json.loads(appended.to_json())["version"] == 1


# -- record validation ---------------------------------------------------------------------------


def corrupted(tmp_path, change) -> dict:
    """The metadata reduce writes, with ``change`` applied to its parsed record."""
    _, wide = plain_permuted_split(tmp_path)
    body = json.loads(reduction_metadata(reduce_network(wide, profile=None))[EMBEDDING_KEY])
    change(body)
    return {EMBEDDING_KEY: json.dumps(body)}


def set_in(path, value):
    def change(body):
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    "change,field",
    [
        (set_in(["embeds_into", 0, "maps", 0, "source", 1], 3), "embeds_into[0].maps[0].source[1]"),
        (set_in(["embeds_into", 0, "maps", 0, "source", 0], -1), "embeds_into[0].maps[0].source[0]"),
        (set_in(["embeds_into", 0, "maps", 0, "incoming"], [1.0]), "embeds_into[0].maps[0].incoming"),
        (set_in(["embeds_into", 0, "maps", 0, "outgoing", 2], float("nan")), "embeds_into[0].maps[0].outgoing[2]"),
        (set_in(["embeds_into", 0, "maps", 0, "narrow_width"], 0), "embeds_into[0].maps[0].narrow_width"),
        (set_in(["embeds_into", 0, "target_config"], "mlp"), "embeds_into[0].target_config"),
        (set_in(["version"], 3), "version 3"),
    ],
)
def test_malformed_map_records_name_the_field(tmp_path, change, field):
    with pytest.raises(CheckpointError, match=field.replace("[", r"\[").replace("]", r"\]")):
        EmbeddingRecord.from_metadata(corrupted(tmp_path, change))


def split_record(parent_config=None, **changes) -> dict:
    split = {"layer": "0", "unit": 1, "width": 3, "positions": [1, 3], "shares": [0.5, 0.5], "incoming": [0.5**0.5] * 2, "outgoing": [0.5**0.5] * 2, "strategy": "isometric"}
    stage = {"parent_sha256": "0" * 64, "parent_name": "narrow.safetensors", "parent_config": parent_config or {"widths": [4, 3, 2]}, "splits": [{**split, **changes}]}
    return {EMBEDDING_KEY: json.dumps({"version": 1, "stages": [stage]})}


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"unit": 3}, "stages[0].splits[0].unit"),
        ({"unit": -1}, "stages[0].splits[0].unit"),
        ({"incoming": [0.5]}, "stages[0].splits[0].incoming"),
        ({"shares": [float("nan"), 0.5]}, r"stages[0].splits[0].shares[0]"),
        ({"shares": [-0.5, 1.5]}, r"stages[0].splits[0].shares[0]"),
        ({"positions": [1, 2]}, "stages[0].splits[0].positions"),
        ({"width": True}, "stages[0].splits[0].width"),
    ],
)
def test_malformed_split_records_name_the_field(changes, field):
    with pytest.raises(CheckpointError, match=field.replace("[", r"\[").replace("]", r"\]")):
        EmbeddingRecord.from_metadata(split_record(**changes))


def test_records_must_fit_the_files_widths(tmp_path):
    narrow, wide = plain_permuted_split(tmp_path)
    record = EmbeddingRecord.from_metadata(split_record(narrow.config, width=4, positions=[1, 4]))  # NARROW's layer has 3 units
    with pytest.raises(CheckpointError, match=r"stages\[0\]\.splits\[0\]\.width is 4"):
        record.embedding_from(narrow.adapter, narrow.config)
    result = reduce_network(wide, profile=None)
    metadata = reduction_metadata(result)
    narrower = {**result.narrow.config, "widths": [4, 2, 2]}
    bad = EmbeddingRecord.from_metadata(metadata)
    with pytest.raises(CheckpointError, match=r"embeds_into\[0\]\.maps\[0\]\.narrow_width"):
        bad.embedding_into(narrow.adapter, narrower, wide.config)
    grown = EmbeddingRecord.from_metadata(metadata)
    grown.embeds_into[0]["target_config"] = {**wide.config, "widths": [4, 6, 2]}
    with pytest.raises(CheckpointError, match=r"embeds_into\[0\]\.maps\[0\]\.source has 5 entries"):
        grown.embedding_into(narrow.adapter, result.narrow.config, {**wide.config, "widths": [4, 6, 2]})
