"""Per-constraint gradients and the Gram matrix (MATH.md §3) against independent computations."""

import pytest
import torch

from helpers import CNN_CONFIG, MLP_CONFIG, MULTICLASS_CONFIG, random_inputs, random_labels, random_network
from kktembed.kkt.gram import gradient_matrix, gram_matrix, weighted_margin_gradient
from kktembed.kkt.margins import build_constraints, margins
from kktembed.network import flatten_params

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
