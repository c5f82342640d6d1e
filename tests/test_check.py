"""The KKT analysis on fixtures whose answer is known independently (MATH.md §2–3)."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from kktembed.loading import load_network_and_data
from kktembed.kkt.analysis import CheckOptions, check_network


def load(fixtures_dir, name):
    return load_network_and_data(fixtures_dir / f"{name}.safetensors")


def svm_dual(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Hard-margin SVM dual without intercept, solved by L-BFGS-B (independent of cvxpy):
    max Σα − ½‖Σ α_k y_k x_k‖², α ≥ 0."""
    signed = x * y[:, None]
    gram = signed @ signed.T

    def negative_dual(alpha):
        return 0.5 * alpha @ gram @ alpha - alpha.sum(), gram @ alpha - 1.0

    result = minimize(negative_dual, np.zeros(len(y)), jac=True, method="L-BFGS-B", bounds=[(0, None)] * len(y), options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 50000})
    return result.x


def test_linear_svm_multipliers_and_margin_match_independent_dual(fixtures_dir):
    network, dataset = load(fixtures_dir, "linear_svm_digits38")
    result = check_network(network, dataset, CheckOptions())
    alpha = svm_dual(dataset.x.numpy(), dataset.y.numpy().astype(float))
    # the SVM optimum has ‖w‖² = Σα, so the max normalized margin is 1/sqrt(Σα)
    assert result.normalized_margin == pytest.approx(1 / np.sqrt(alpha.sum()), rel=1e-6)
    assert result.verdict == "kkt"
    assert result.relative_stationarity_residual < 1e-12
    assert abs(result.complementarity_residual) < 1e-10
    lam = result.multipliers.numpy()
    assert np.abs(lam - alpha).max() < 1e-5 * alpha.max()
    assert result.n_support == int((alpha > 1e-6 * alpha.max()).sum())


@pytest.mark.parametrize("name", ["linear_svm_digits38", "mlp_kkt_gaussians"])
def test_norms_agree_on_exact_kkt_points(fixtures_dir, name):
    network, dataset = load(fixtures_dir, name)
    results = {norm: check_network(network, dataset, CheckOptions(norm=norm, profile=False)) for norm in ("l2", "l1", "linf")}
    for norm, result in results.items():
        assert result.verdict == "kkt", norm
        assert result.relative_stationarity_residual < 1e-8, norm
    base = results["l2"].multipliers
    for norm in ("l1", "linf"):
        assert torch.allclose(results[norm].multipliers, base, atol=1e-6 * float(base.max())), norm


def test_near_exact_relu_kkt_fixture(fixtures_dir):
    network, dataset = load(fixtures_dir, "mlp_kkt_gaussians")
    result = check_network(network, dataset, CheckOptions())
    assert result.verdict == "kkt"
    assert result.relative_stationarity_residual < 1e-8
    assert result.q_min == pytest.approx(1.0, abs=1e-12)
    # one fixed ε across the τ ladder once τ covers the support
    epsilons = [row.relative_stationarity_residual for row in result.profile]
    assert max(epsilons) < 1e-8


@pytest.mark.parametrize("name", ["mlp_gd_digits38", "mlp_multiclass_digits012", "mlp_kkt_gaussians"])
def test_rescaling_invariance(fixtures_dir, name):
    """ε/‖θ̂‖, δ and γ̄ are functions of the direction of θ only (θ̂ is the same point)."""
    network, dataset = load(fixtures_dir, name)
    options = CheckOptions(profile=False)
    base = check_network(network, dataset, options)
    scaled = check_network(network.with_params({k: 3.7 * v for k, v in network.params.items()}), dataset, options)
    assert scaled.normalized_margin == pytest.approx(base.normalized_margin, rel=1e-10)
    assert scaled.theta_hat_norm == pytest.approx(base.theta_hat_norm, rel=1e-10)
    assert scaled.relative_stationarity_residual == pytest.approx(base.relative_stationarity_residual, rel=1e-6, abs=1e-12)
    assert scaled.complementarity_residual == pytest.approx(base.complementarity_residual, rel=1e-5, abs=1e-12)
    assert scaled.n_candidates == base.n_candidates


def test_residuals_match_their_definitions(fixtures_dir):
    """ε and δ recomputed from λ with explicit per-constraint gradients (MATH.md §2)."""
    from kktembed.kkt.gram import gradient_matrix
    from kktembed.kkt.margins import build_constraints, margins, rescale_to_unit_margin
    from kktembed.network import flatten_params

    network, dataset = load(fixtures_dir, "mlp_gd_digits38")
    result = check_network(network, dataset, CheckOptions(profile=False))
    constraints = build_constraints(dataset.y, 1)
    theta_hat = rescale_to_unit_margin(network.params, result.q_min, network.degree)
    gradients = gradient_matrix(network, dataset.x, constraints, theta_hat)
    q_hat = margins(network, dataset.x, constraints, theta_hat)
    lam = result.multipliers
    epsilon = float((flatten_params(theta_hat) - gradients @ lam).norm())
    assert result.stationarity_residual == pytest.approx(epsilon, rel=1e-10)
    assert result.complementarity_residual == pytest.approx(float((lam * (q_hat - 1)).sum()), rel=1e-10)
    assert float(q_hat.min()) == pytest.approx(1.0, abs=1e-12)
    assert (lam[q_hat > 1 + result.active_tol] == 0).all()
    assert (lam >= 0).all()


def test_multiclass_constraint_count_and_pairs(fixtures_dir):
    network, dataset = load(fixtures_dir, "mlp_multiclass_digits012")
    result = check_network(network, dataset, CheckOptions(profile=False))
    assert result.n_constraints == dataset.n_samples * 2
    pairs = result.constraint_index
    assert pairs.shape == (result.n_constraints, 2)
    assert (pairs[:, 1] != dataset.y[pairs[:, 0]]).all()


def test_cnn_fixture_runs_and_is_separated(fixtures_dir):
    network, dataset = load(fixtures_dir, "cnn_digits38")
    result = check_network(network, dataset, CheckOptions(profile=False))
    assert result.degree == 2 and result.euler_error < 1e-12
    assert result.q_min > 0 and result.accuracy == 1.0
    assert result.verdict in ("approximate", "not_kkt")


def test_not_separable_data_gets_no_kkt_numbers(fixtures_dir):
    network, dataset = load(fixtures_dir, "mlp_gd_digits38")
    dataset.y = -dataset.y  # flip every label: q_min < 0
    result = check_network(network, dataset, CheckOptions())
    assert result.verdict == "not_separable"
    assert result.q_min < 0 and result.accuracy == 0.0
    assert result.stationarity_residual is None


def test_complementarity_weight_does_not_increase_delta(fixtures_dir):
    network, dataset = load(fixtures_dir, "mlp_gd_digits38")
    plain = check_network(network, dataset, CheckOptions(profile=False, active_tol=1.0))
    weighted = check_network(network, dataset, CheckOptions(profile=False, active_tol=1.0, complementarity_weight=10.0))
    assert weighted.complementarity_residual <= plain.complementarity_residual + 1e-9
    assert weighted.stationarity_residual >= plain.stationarity_residual - 1e-9


def test_lp_refuses_a_gradient_matrix_over_the_memory_limit(fixtures_dir, monkeypatch):
    import kktembed.kkt.norms as norms
    from kktembed.errors import UsageError

    monkeypatch.setattr(norms, "LP_MEMORY_LIMIT", 1000)
    network, dataset = load(fixtures_dir, "mlp_gd_digits38")
    with pytest.raises(UsageError, match="--norm l2"):
        check_network(network, dataset, CheckOptions(norm="linf", profile=False))


FIXTURE_CHECKPOINTS = ["linear_svm_digits38", "mlp_gd_digits38", "mlp_kkt_gaussians", "cnn_digits38", "mlp_multiclass_digits012"]


@pytest.mark.parametrize("name", FIXTURE_CHECKPOINTS)
def test_active_set_and_clarabel_agree_on_every_fixture(fixtures_dir, name):
    """The exact active-set solver (default) and Clarabel through cvxpy give the same ε/‖θ̂‖ to 1e-8
    and the same verdict and support, with the τ profile (warm starts) included."""
    network, dataset = load(fixtures_dir, name)
    active = check_network(network, dataset, CheckOptions(active_tol=1.0))
    clarabel = check_network(network, dataset, CheckOptions(active_tol=1.0, solver="clarabel"))
    assert active.solver == "ACTIVE-SET" and clarabel.solver == "CLARABEL"
    assert abs(active.relative_stationarity_residual - clarabel.relative_stationarity_residual) <= 1e-8
    assert active.verdict == clarabel.verdict
    for ours, theirs in zip(active.profile, clarabel.profile):
        assert abs(ours.relative_stationarity_residual - theirs.relative_stationarity_residual) <= 1e-8, ours.active_tol


def test_solver_names_are_checked(fixtures_dir):
    from kktembed.errors import UsageError

    network, dataset = load(fixtures_dir, "mlp_kkt_gaussians")
    with pytest.raises(UsageError, match="does not solve the l1 problem"):
        check_network(network, dataset, CheckOptions(norm="l1", solver="clarabel"))
    with pytest.raises(UsageError, match="unknown solver"):
        check_network(network, dataset, CheckOptions(solver="mosek"))
