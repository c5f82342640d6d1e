"""Per-constraint gradients and the Gram matrix (MATH.md §3) against independent computations."""

import pytest
import torch
from torch import nn

from helpers import CNN_CONFIG, MLP_CONFIG, MULTICLASS_CONFIG, random_inputs, random_labels, random_network
from kktembed.adapters.base import Adapter
from kktembed.errors import UsageError
from kktembed.kkt.gram import estimate_gram_bytes, gradient_matrix, gram_matrix, gram_plan, weighted_margin_gradient
from kktembed.kkt.margins import build_constraints, margins
from kktembed.network import Network, flatten_params, unflatten_params
from kktembed.resources import format_size

CASES = [("mlp", MLP_CONFIG), ("mlp", MULTICLASS_CONFIG), ("cnn", CNN_CONFIG)]


@pytest.fixture(params=CASES, ids=["mlp-bias", "mlp-multiclass", "cnn-pool-flatten"])
def problem(request):
    adapter, config = request.param
    network = random_network(adapter, config)
    x = random_inputs(network, 13)
    constraints = build_constraints(random_labels(13, network.output_dim), network.output_dim)
    return network, x, constraints


def test_layerwise_gram_equals_gradient_gram(problem):
    network, x, constraints = problem
    gram = gram_matrix(network, x, constraints, network.params, chunk_size=5)
    gradients = gradient_matrix(network, x, constraints, network.params, chunk_size=4)
    assert torch.allclose(gram, gradients.T @ gradients, rtol=1e-12, atol=1e-12 * float(gram.abs().max()))


def test_euler_identity_gives_b(problem):
    """b = Gᵀθ = L q(θ) (MATH.md §1, §3)."""
    network, x, constraints = problem
    gradients = gradient_matrix(network, x, constraints, network.params)
    q = margins(network, x, constraints)
    b = gradients.T @ flatten_params(network.params)
    assert torch.allclose(b, network.degree * q, rtol=1e-12, atol=1e-12)


def test_gradients_match_finite_differences(problem):
    network, x, constraints = problem
    gradients = gradient_matrix(network, x, constraints, network.params)
    direction = {key: torch.randn_like(value) for key, value in network.params.items()}
    h = 1e-6
    plus = margins(network, x, constraints, {k: v + h * direction[k] for k, v in network.params.items()})
    minus = margins(network, x, constraints, {k: v - h * direction[k] for k, v in network.params.items()})
    finite = (plus - minus) / (2 * h)
    analytic = gradients.T @ flatten_params(direction)
    assert torch.allclose(finite, analytic, rtol=1e-6, atol=1e-6)


def test_weighted_gradient_is_G_times_weights(problem):
    network, x, constraints = problem
    weights = torch.rand(len(constraints), dtype=torch.float64)
    combined = flatten_params(weighted_margin_gradient(network, x, constraints, weights, network.params))
    gradients = gradient_matrix(network, x, constraints, network.params)
    assert torch.allclose(combined, gradients @ weights, rtol=1e-12, atol=1e-12)


def test_multiclass_constraints_are_pairs():
    y = torch.tensor([0, 2, 1])
    constraints = build_constraints(y, 3)
    pairs = constraints.index_table().tolist()
    assert pairs == [[0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 2]]
    outputs = torch.arange(9, dtype=torch.float64).reshape(3, 3) ** 2
    from kktembed.kkt.margins import margins_from_outputs

    q = margins_from_outputs(outputs, constraints)
    expected = [outputs[k, y[k]] - outputs[k, j] for k, j in pairs]
    assert torch.allclose(q, torch.stack(expected))


# -- the blocked Gram matrix against GᵀG from the Jacobian of q(θ) ---------------------------------


def jacobian_gram(network: Network, x: torch.Tensor, constraints) -> torch.Tensor:
    """GᵀG with G the Jacobian of the margin vector q(θ) (torch.func.jacrev over the flat θ):
    independent of the per-layer factors and of vmap(grad)."""
    theta = flatten_params(network.params)

    def q_of(vector):
        return margins(network, x, constraints, unflatten_params(vector, network.params))

    jacobian = torch.func.jacrev(q_of)(theta)  # (n_c, p) = Gᵀ
    return jacobian @ jacobian.T


def assert_gram_matches(gram: torch.Tensor, reference: torch.Tensor) -> None:
    assert gram.dtype == torch.float64 and gram.device.type == "cpu"
    assert torch.equal(gram, gram.T)
    assert float((gram - reference).abs().max()) <= 1e-12 * float(reference.abs().max())


MLP_BINARY = {"widths": [6, 9, 7, 1], "activation": "relu", "first_layer_bias": True}
MLP_TEN_CLASS = {"widths": [6, 8, 5], "activation": "leaky_relu:0.2", "first_layer_bias": True}


def cnn_config(outputs: int, first_pool: str, second_pool: str | None) -> dict:
    return {
        "input_shape": [2, 7, 7],
        "activation": "relu",
        "first_layer_bias": True,
        "conv": [
            {"key": "0", "out_channels": 3, "kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "pool": first_pool},
            {"key": "3", "out_channels": 4, "kernel_size": [2, 2], "stride": [1, 1], "padding": [1, 1], "pool": second_pool},
        ],
        "linear": [{"key": "7", "out_features": 5}, {"key": "9", "out_features": outputs}],
    }


NETWORKS = {
    "mlp-binary-bias": ("mlp", MLP_BINARY),
    "mlp-multiclass-bias": ("mlp", MLP_TEN_CLASS),
    "cnn-binary-stride-pad-avg": ("cnn", cnn_config(1, "avg:2:1", None)),
    "cnn-multiclass-max-avg": ("cnn", cnn_config(3, "max:2:1", "avg:2")),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("chunk_size", [4, 7, 1000])
def test_blocked_gram_matches_jacobian_gram(name, chunk_size):
    """Chunks that divide n_c (4 | 12 or 4 | 16), that do not (7), and a single chunk."""
    adapter, config = NETWORKS[name]
    network = random_network(adapter, config, seed=3)
    n_samples = 12 if network.output_dim == 1 else 8  # n_c = 12 binary, 8·(C−1) = 16 or 32 multi-class
    x = random_inputs(network, n_samples, seed=4)
    constraints = build_constraints(random_labels(n_samples, network.output_dim, seed=5), network.output_dim)
    gram = gram_matrix(network, x, constraints, network.params, chunk_size=chunk_size)
    assert_gram_matches(gram, jacobian_gram(network, x, constraints))


RANDOM_SUBSET = torch.randperm(40, generator=torch.Generator().manual_seed(9))[:23].tolist()
# chunks of 8: samples 0–1 (4 constraints each: shared inputs), samples 2–9 once each (not shared),
# samples 2–4 again (shared): tiles mix both forms in both orders.
MIXED_CHUNKS = list(range(8)) + list(range(8, 40, 4)) + [9, 10, 11, 13, 14, 15, 17, 18]


@pytest.mark.parametrize("order", [RANDOM_SUBSET, MIXED_CHUNKS], ids=["random-subset", "shared-and-not"])
def test_a_subset_of_constraints_in_any_order(order):
    """Candidate sets are subsets; constraints of one sample need not be adjacent."""
    network = random_network("mlp", MLP_TEN_CLASS, seed=6)
    x = random_inputs(network, 10, seed=7)
    constraints = build_constraints(random_labels(10, network.output_dim, seed=8), network.output_dim)
    assert len(constraints) == 40
    subset = constraints.subset(torch.tensor(order))
    gram = gram_matrix(network, x, subset, network.params, chunk_size=8)
    assert_gram_matches(gram, jacobian_gram(network, x, subset))


def test_factors_recomputed_per_tile_when_only_two_chunks_fit(monkeypatch):
    """Between the two plans' estimates, the factors are recomputed for each tile: same K."""
    network = random_network("cnn", cnn_config(3, "max:2:1", "avg:2"), seed=10)
    x = random_inputs(network, 9, seed=11)
    constraints = build_constraints(random_labels(9, 3, seed=12), 3)
    plan = gram_plan(network)
    least, most = (plan.bytes_needed(len(constraints), 5, keep_factors=keep) for keep in (False, True))
    assert least < most
    monkeypatch.setenv("KKTEMBED_MEMORY_LIMIT", str((least + most) // 2))
    gram = gram_matrix(network, x, constraints, network.params, chunk_size=5)
    assert_gram_matches(gram, jacobian_gram(network, x, constraints))


def test_refuses_over_the_memory_limit_with_the_estimate(monkeypatch):
    network = random_network("mlp", MLP_TEN_CLASS)
    x = random_inputs(network, 50)
    constraints = build_constraints(random_labels(50, network.output_dim), network.output_dim)
    estimate = estimate_gram_bytes(network, len(constraints), chunk_size=64)
    assert estimate >= len(constraints) ** 2 * 8  # at least K itself
    monkeypatch.setenv("KKTEMBED_MEMORY_LIMIT", str(estimate - 1))
    with pytest.raises(UsageError, match="--active-tol") as refused:
        gram_matrix(network, x, constraints, network.params, chunk_size=64)
    assert format_size(estimate) in refused.value.message and "KKTEMBED_MEMORY_LIMIT" in refused.value.hint
    monkeypatch.setenv("KKTEMBED_MEMORY_LIMIT", str(estimate))
    assert gram_matrix(network, x, constraints, network.params, chunk_size=64).shape == (len(constraints),) * 2


# -- parameters outside Linear/Conv2d: the torch.func fallback -------------------------------------


class ChannelScale(nn.Module):
    """A plugin-style module: z ↦ z ⊙ a (a parameter that is neither Linear nor Conv2d)."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width, dtype=torch.float64))

    def forward(self, z):
        return z * self.scale


class TiedBlock(nn.Module):
    """One Linear applied twice (a module called twice is not one outer product per constraint)."""

    def __init__(self, width: int):
        super().__init__()
        self.shared = nn.Linear(width, width, bias=False, dtype=torch.float64)

    def forward(self, z):
        return self.shared(torch.relu(self.shared(z)))


class PluginStyleAdapter(Adapter):
    name = "plugin-style-test"

    def build(self, config):
        width = config["widths"][1]
        return nn.Sequential(
            nn.Linear(config["widths"][0], width, bias=True, dtype=torch.float64),
            ChannelScale(width),
            nn.ReLU(),
            TiedBlock(width),
            nn.Linear(width, config["widths"][2], bias=False, dtype=torch.float64),
        )


@pytest.mark.parametrize("outputs", [1, 3])
def test_plugin_modules_fall_back_to_per_constraint_gradients(outputs):
    config = {"widths": [4, 6, outputs]}
    generator = torch.Generator().manual_seed(13)
    module = PluginStyleAdapter().build(config)
    params = {key: torch.randn(value.shape, generator=generator, dtype=torch.float64) for key, value in module.state_dict().items()}
    network = Network(PluginStyleAdapter(), config, params)
    plan = gram_plan(network)
    assert set(plan.fallback) == {"1.scale", "3.shared.weight"}
    assert {layer.name for layer in plan.layers} == {"0", "4"}
    x = random_inputs(network, 11, seed=14)
    constraints = build_constraints(random_labels(11, outputs, seed=15), outputs)
    gram = gram_matrix(network, x, constraints, network.params, chunk_size=4)
    assert_gram_matches(gram, jacobian_gram(network, x, constraints))


# -- devices ------------------------------------------------------------------------------------


def test_auto_device_without_a_gpu_computes_on_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: auto would use it")
    network = random_network("mlp", MULTICLASS_CONFIG)
    x = random_inputs(network, 7)
    constraints = build_constraints(random_labels(7, network.output_dim), network.output_dim)
    assert torch.equal(gram_matrix(network, x, constraints, network.params, device="auto"), gram_matrix(network, x, constraints, network.params))
    weights = torch.rand(len(constraints), dtype=torch.float64)
    automatic = weighted_margin_gradient(network, x, constraints, weights, network.params, device="auto")
    default = weighted_margin_gradient(network, x, constraints, weights, network.params)
    assert all(torch.equal(automatic[key], default[key]) for key in default)
    with pytest.raises(UsageError, match="CUDA"):
        gram_matrix(network, x, constraints, network.params, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_gram_and_weighted_gradient_on_cuda_match_the_cpu(name):
    adapter, config = NETWORKS[name]
    network = random_network(adapter, config, seed=16)
    x = random_inputs(network, 10, seed=17)
    constraints = build_constraints(random_labels(10, network.output_dim, seed=18), network.output_dim)
    gram = gram_matrix(network, x, constraints, network.params, chunk_size=7, device="cuda")
    assert_gram_matches(gram, jacobian_gram(network, x, constraints))
    weights = torch.rand(len(constraints), dtype=torch.float64)
    on_gpu = weighted_margin_gradient(network, x, constraints, weights, network.params, device="cuda")
    on_cpu = weighted_margin_gradient(network, x, constraints, weights, network.params)
    for key, value in on_cpu.items():
        assert on_gpu[key].device.type == "cpu" and torch.allclose(on_gpu[key], value, rtol=1e-12, atol=1e-12)
