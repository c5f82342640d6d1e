"""The active-set solver of the ℓ2 multiplier QP against independent answers (MATH.md §3):
scipy's NNLS on the factor, Clarabel (``solve_l2``) on the fixtures' Gram matrices, and the
cvxpy complementarity stage."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kktembed.errors import SolverError
from kktembed.kkt.active_set import PackedCholesky, most_complementary_optimum, solve_nonnegative_qp

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def gram_problem(factor: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K = AᵀA (exactly symmetric) and c = Aᵀt: min_{λ≥0} ½λᵀKλ − cᵀλ = min ½‖Aλ − t‖² − ½‖t‖²."""
    gram = factor.T @ factor
    return (gram + gram.T) / 2, factor.T @ target


def objective(gram: np.ndarray, linear: np.ndarray, multipliers: np.ndarray) -> float:
    return float(0.5 * multipliers @ gram @ multipliers - linear @ multipliers)


def assert_kkt(gram: np.ndarray, linear: np.ndarray, multipliers: np.ndarray, tolerance: float = 1e-9) -> None:
    """The QP's KKT conditions recomputed here with a dense product, each constraint relative to
    s_k = |c_k| + √K_kk Σ_j √K_jj λ_j."""
    gradient = gram @ multipliers - linear
    norms = np.sqrt(np.diagonal(gram))
    scales = np.abs(linear) + norms * (norms @ multipliers)
    support = multipliers > 0
    assert (multipliers >= 0).all()
    assert (np.abs(gradient[support]) <= tolerance * scales[support]).all()
    assert (gradient[~support] >= -tolerance * scales[~support]).all()


@pytest.mark.parametrize("seed", range(6))
def test_full_rank_problems_match_scipy_nnls(seed):
    from scipy.optimize import nnls

    rng = np.random.default_rng(seed)
    rows, columns = 60 + 10 * seed, 8 + 7 * seed
    factor, target = rng.normal(size=(rows, columns)), rng.normal(size=rows)
    gram, linear = gram_problem(factor, target)
    solution = solve_nonnegative_qp(gram, linear)
    reference, _ = nnls(factor, target)
    assert np.abs(solution.multipliers - reference).max() <= 1e-10 * reference.max()
    assert solution.objective == pytest.approx(objective(gram, linear, reference), rel=1e-12)
    assert_kkt(gram, linear, solution.multipliers)
    assert solution.kkt_violation <= 1e-9
    assert list(solution.support) == list(np.flatnonzero(solution.multipliers > 0))


@pytest.mark.parametrize("batch", [4, 32])
def test_working_sets_give_the_nnls_solution(monkeypatch, batch):
    """Small batches force many rounds of the working-set iteration on blocks K_WW before it moves to
    K itself; the answer is still the NNLS one."""
    from scipy.optimize import nnls

    from kktembed.kkt import active_set

    monkeypatch.setattr(active_set, "SMALLEST_BATCH", batch)
    rng = np.random.default_rng(20 + batch)
    factor = rng.normal(size=(400, 300))
    target = factor[:, :40] @ rng.random(40) + 0.5 * rng.normal(size=400)
    gram, linear = gram_problem(factor, target)
    rounds, original = [], active_set.lawson_hanson

    def recorded(state, *args):
        rounds.append(len(state.linear))  # |W| of each round
        return original(state, *args)

    monkeypatch.setattr(active_set, "lawson_hanson", recorded)
    solution = solve_nonnegative_qp(gram, linear)
    reference, _ = nnls(factor, target)
    assert len(rounds) >= 3 and rounds[0] < 75
    assert np.abs(solution.multipliers - reference).max() <= 1e-10 * reference.max()


@pytest.mark.parametrize("seed", range(4))
def test_rank_deficient_problems_reach_the_nnls_objective(seed):
    """Duplicate columns, a column that is a sum of others, and more columns than rows: K is
    singular and the optimal λ not unique, but the optimal value is."""
    from scipy.optimize import nnls

    rng = np.random.default_rng(100 + seed)
    rows = 25
    base = rng.normal(size=(rows, 30))
    factor = np.hstack([base, base[:, :5], base[:, 5:10] + base[:, 10:15], 2.0 * base[:, 15:20]])
    target = rng.normal(size=rows) + base[:, :3].sum(axis=1)
    gram, linear = gram_problem(factor, target)
    assert np.linalg.matrix_rank(gram) < gram.shape[0]
    solution = solve_nonnegative_qp(gram, linear)
    reference, _ = nnls(factor, target, maxiter=50 * factor.shape[1])
    assert solution.objective == pytest.approx(objective(gram, linear, reference), rel=1e-10, abs=1e-12)
    assert_kkt(gram, linear, solution.multipliers)


@pytest.mark.parametrize("seed", range(3))
def test_rescaling_a_constraint_gradient_rescales_its_multiplier(seed):
    """g_k → d_k g_k (K → DKD, c → Dc) maps the optimum to λ_k / d_k: the method and its tolerances do
    not depend on the gradients' scales, here spread over six orders of magnitude."""
    rng = np.random.default_rng(30 + seed)
    factor = rng.normal(size=(60, 40))
    gram, linear = gram_problem(factor, factor[:, :15] @ rng.random(15) + rng.normal(size=60))
    scales = 10.0 ** rng.uniform(-3, 3, size=40)
    plain = solve_nonnegative_qp(gram, linear)
    scaled = solve_nonnegative_qp(scales[:, None] * gram * scales[None, :], scales * linear)
    assert list(scaled.support) == list(plain.support)
    assert np.abs(scaled.multipliers * scales - plain.multipliers).max() <= 1e-9 * plain.multipliers.max()
    assert scaled.objective == pytest.approx(plain.objective, rel=1e-10)


def test_warm_start_from_a_nested_set_gives_the_cold_answer_in_fewer_steps():
    """The τ profile: candidates A_τ ⊂ A_τ' are leading blocks; the optimum on the smaller set,
    padded with zeros, starts the larger one."""
    rng = np.random.default_rng(7)
    factor, target = rng.normal(size=(150, 120)), rng.normal(size=150)
    gram, linear = gram_problem(factor, target)
    smaller = solve_nonnegative_qp(gram[:90, :90], linear[:90])
    start = np.concatenate([smaller.multipliers, np.zeros(30)])
    cold = solve_nonnegative_qp(gram, linear)
    warm = solve_nonnegative_qp(gram, linear, start=start)
    assert np.abs(warm.multipliers - cold.multipliers).max() <= 1e-12 * cold.multipliers.max()
    assert warm.iterations < cold.iterations
    optimal = solve_nonnegative_qp(gram, linear, start=cold.multipliers)
    assert optimal.iterations == 0
    assert np.abs(optimal.multipliers - cold.multipliers).max() <= 1e-12 * cold.multipliers.max()


def test_a_start_on_every_index_reaches_the_optimum():
    """From λ = 1 everywhere the support minimiser has negative entries: the first moves stop where
    a multiplier reaches zero (λ stays ≥ 0) and end at the cold optimum."""
    rng = np.random.default_rng(6)
    factor, target = rng.normal(size=(80, 40)), rng.normal(size=80)
    gram, linear = gram_problem(factor, target)
    cold = solve_nonnegative_qp(gram, linear)
    assert 0 < len(cold.support) < 40
    started = solve_nonnegative_qp(gram, linear, start=np.ones(40))
    assert np.abs(started.multipliers - cold.multipliers).max() <= 1e-12 * cold.multipliers.max()


def test_entering_step_stops_where_a_support_multiplier_reaches_zero():
    """S = {0}, λ_0 = c_0/K_00; index 1 violates, and a = K_01/K_00 > 0 is so large that the full step
    w_1/ρ² would make λ_0 negative: the step is α = λ_0/a, index 0 leaves, index 1 enters with
    λ_1 = α, and f decreases."""
    from kktembed.kkt.active_set import IterationState, enter_support, factor_support

    gram = np.array([[1.0, 0.9], [0.9, 1.0]])
    linear = np.array([1.0, 2.0])
    multipliers = np.array([1.0, 0.0])
    state = IterationState(gram, linear, multipliers, factor_support(gram, multipliers, np.array([0])))
    violation = float(linear[1] - gram[1] @ multipliers)  # 1.1
    assert violation / (1.0 - 0.81) * 0.9 > 1.0  # the full step would overshoot λ_0
    before = objective(gram, linear, multipliers)
    assert enter_support(state, 1, violation) == 1
    assert state.factor.slots == [1]
    assert state.multipliers == pytest.approx([0.0, 1.0 / 0.9], rel=1e-15)
    assert objective(gram, linear, state.multipliers) < before


def test_a_start_on_dependent_columns_is_repaired():
    """A start spread over duplicate columns (what an interior-point λ looks like) still ends optimal."""
    rng = np.random.default_rng(8)
    base = rng.normal(size=(40, 10))
    factor = np.hstack([base, base])
    gram, linear = gram_problem(factor, rng.normal(size=40))
    solution = solve_nonnegative_qp(gram, linear, start=np.full(20, 0.3))
    assert_kkt(gram, linear, solution.multipliers)
    assert solution.objective == pytest.approx(solve_nonnegative_qp(gram, linear).objective, rel=1e-12)


def test_complementarity_weight_moves_weight_to_the_tighter_duplicate():
    """μ > 0 (c = b − (μ/2)(q − 1)): of two identical gradients the one with the smaller excess takes
    all the weight, also when the start puts it on the other one (an exchange along a direction of
    constant Kλ, where the entering pivot is zero)."""
    rng = np.random.default_rng(9)
    gradient = rng.normal(size=12)
    factor = np.stack([gradient, gradient], axis=1)
    gram, b = gram_problem(factor, gradient)
    excess, mu = np.array([0.3, 0.1]), 0.5
    linear = b - 0.5 * mu * excess
    cold = solve_nonnegative_qp(gram, linear)
    warm = solve_nonnegative_qp(gram, linear, start=np.array([1.0, 0.0]))
    for solution in (cold, warm):
        assert solution.multipliers[0] == 0.0
        assert solution.multipliers[1] == pytest.approx(linear[1] / gram[1, 1], rel=1e-12)


def test_agrees_with_clarabel_with_a_complementarity_weight():
    from kktembed.kkt.solve import solve_l2

    rng = np.random.default_rng(10)
    base = rng.normal(size=(30, 12))
    factor = np.hstack([base, base[:, :4] + base[:, 4:8]])
    theta = base @ rng.random(12)
    gram, b = gram_problem(factor, theta)
    excess, mu = rng.random(16), 0.3
    linear = b - 0.5 * mu * excess
    solution = solve_nonnegative_qp(gram, linear)
    reference = solve_l2(gram, b, excess, mu).multipliers
    assert solution.objective <= objective(gram, linear, reference) + 1e-9 * abs(solution.objective)
    assert solution.objective == pytest.approx(objective(gram, linear, reference), rel=1e-7)


def test_packed_factor_stays_a_cholesky_factor_through_appends_and_removals():
    rng = np.random.default_rng(11)
    factor = rng.normal(size=(30, 12))
    gram = factor.T @ factor
    cholesky = PackedCholesky(capacity=2)  # grows while appending
    for slot in [3, 0, 7, 5, 11, 1, 9]:
        r, _ = cholesky.projection(gram[slot, cholesky.slots].copy())
        cholesky.append(slot, r, np.sqrt(gram[slot, slot] - r @ r))
    for position in (2, 0, 4):
        cholesky.remove(position)
        slots = cholesky.slots
        upper = cholesky.dense_columns(0)
        assert np.abs(upper.T @ upper - gram[np.ix_(slots, slots)]).max() <= 1e-12 * np.abs(gram).max()
        assert (np.diagonal(upper) > 0).all()
    rhs = rng.normal(size=len(cholesky.slots))
    assert cholesky.solve(rhs) == pytest.approx(np.linalg.solve(gram[np.ix_(cholesky.slots, cholesky.slots)], rhs), rel=1e-10)


def test_a_non_symmetric_matrix_fails_the_certificate():
    """The iteration reads rows K_S· of the support, the certificate the columns K_·S: entries
    K_ij (i off the support, j on it) that disagree with K_ji are never used by the iteration, which
    returns the λ of the symmetric problem, and are caught by the certificate."""
    rng = np.random.default_rng(12)
    factor = rng.normal(size=(50, 20))
    gram, linear = gram_problem(factor, rng.normal(size=50))
    support = solve_nonnegative_qp(gram, linear).support
    outside = np.setdiff1d(np.arange(20), support)
    broken = gram.copy()
    broken[np.ix_(outside, support)] -= np.abs(gram).max()
    with pytest.raises(SolverError, match="fails its KKT check"):
        solve_nonnegative_qp(broken, linear)


def test_an_indefinite_matrix_is_reported_unbounded():
    gram = np.diag([1.0, -1.0])
    with pytest.raises(SolverError, match="unbounded"):
        solve_nonnegative_qp(gram, np.array([1.0, 1.0]))


def test_step_budget_and_non_finite_input_raise():
    rng = np.random.default_rng(13)
    gram, linear = gram_problem(rng.normal(size=(30, 10)), rng.normal(size=30))
    with pytest.raises(SolverError, match="did not settle"):
        solve_nonnegative_qp(gram, linear, max_steps=1)
    linear[3] = np.nan
    with pytest.raises(SolverError, match="non-finite"):
        solve_nonnegative_qp(gram, linear)


def degenerate_complementarity_problem(seed: int):
    """θ̂ = Gλ with dependent gradients (g_{8+i} = g_i + g_{4+i}), so many λ are optimal."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(30, 8))
    gradients = np.hstack([base, base[:, :4] + base[:, 4:8]])
    theta = gradients @ (rng.random(12) * (rng.random(12) < 0.8))
    gram, b = gram_problem(gradients, theta)
    return gram, b, rng.random(12)


@pytest.mark.parametrize("seed", range(4))
def test_complementarity_stage_agrees_with_the_cvxpy_stage(seed):
    from kktembed.kkt.solve import most_complementary_l2

    gram, b, excess = degenerate_complementarity_problem(seed)
    optimum = solve_nonnegative_qp(gram, b).multipliers
    refined = most_complementary_optimum(gram, b, excess, optimum)
    reference = most_complementary_l2(gram, b, excess, optimum)
    assert refined is not None and reference is not None
    assert excess @ refined == pytest.approx(excess @ reference, rel=1e-9, abs=1e-12)
    assert excess @ refined <= excess @ optimum + 1e-12
    assert objective(gram, b, refined) == pytest.approx(objective(gram, b, optimum), rel=1e-8)


def test_complementarity_stage_skips_a_unique_optimum():
    from kktembed.kkt.solve import most_complementary_l2

    rng = np.random.default_rng(14)
    gradients = rng.normal(size=(20, 6))
    gram, b = gram_problem(gradients, gradients @ np.array([0.3, 0.0, 1.2, 0.5, 0.0, 0.7]) + 0.1 * rng.normal(size=20))
    optimum = solve_nonnegative_qp(gram, b).multipliers
    excess = rng.random(6)
    assert most_complementary_optimum(gram, b, excess, optimum) is None
    assert most_complementary_l2(gram, b, excess, optimum) is None


def fixture_problems():
    """Every separable fixture checkpoint: (name, network, x, constraints, candidates, θ̂, q(θ̂))
    with the candidates of the widest τ of check's profile (q ≤ 2)."""
    from kktembed.checkpoint import read_checkpoint
    from kktembed.data import load_network_and_data
    from kktembed.kkt.margins import build_constraints, margins, margins_from_outputs, rescale_to_unit_margin

    problems = []
    for path in sorted(FIXTURES.glob("*.safetensors")):
        if set(read_checkpoint(path)[0]) == {"x", "y"}:  # a data file
            continue
        network, dataset = load_network_and_data(path)
        outputs = network.forward(dataset.x)
        constraints = build_constraints(dataset.y, outputs.shape[1])
        q = margins_from_outputs(outputs, constraints)
        if float(q.min()) <= 0:
            continue
        theta_hat = rescale_to_unit_margin(network.params, float(q.min()), network.degree)
        q_hat = margins(network, dataset.x, constraints, theta_hat)
        candidates = torch.nonzero(q_hat <= 2.0).reshape(-1)
        problems.append((path.stem, network, dataset.x, constraints, candidates, theta_hat, q_hat))
    return problems


def test_fixture_residuals_agree_with_clarabel():
    """ε = ‖θ̂ − Σλ_k∇q_k(θ̂)‖ measured directly, active set against Clarabel (and its active-set
    polish, as ``check`` refines it): |Δε| ≤ 1e-8·‖θ̂‖, and never worse than Clarabel's."""
    from kktembed.kkt.residuals import stationarity_residual
    from kktembed.kkt.gram import gram_matrix
    from kktembed.kkt.solve import polish_l2, solve_l2

    problems = fixture_problems()
    assert {"linear_svm_digits38", "mlp_gd_digits38", "mlp_kkt_gaussians", "cnn_digits38", "mlp_multiclass_digits012"} <= {p[0] for p in problems}
    for name, network, x, constraints, candidates, theta_hat, q_hat in problems:
        gram = gram_matrix(network, x, constraints.subset(candidates), theta_hat).numpy()
        b = network.degree * q_hat[candidates].numpy()

        def epsilon(multipliers):
            full = torch.zeros(len(constraints), dtype=torch.float64)
            full[candidates] = torch.from_numpy(multipliers)
            return stationarity_residual(network, x, constraints, full, theta_hat)

        norm = network.norm(theta_hat)
        clarabel = solve_l2(gram, b, np.zeros_like(b)).multipliers
        polished = polish_l2(gram, b, clarabel)
        ours = epsilon(solve_nonnegative_qp(gram, b).multipliers)
        assert abs(ours - epsilon(polished)) <= 1e-8 * norm, name
        assert ours <= epsilon(clarabel) + 1e-12 * norm, name


def test_the_l2_path_does_not_import_cvxpy():
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from kktembed.kkt.active_set import most_complementary_optimum, solve_nonnegative_qp\n"
        "a = np.random.default_rng(0).normal(size=(6, 4)); a = np.hstack([a, a[:, :1]])\n"
        "k, c = a.T @ a, a.T @ a.sum(axis=1)\n"
        "optimum = solve_nonnegative_qp(k, c).multipliers\n"
        "most_complementary_optimum(k, c, np.arange(5.0), optimum)\n"
        "print('cvxpy' in sys.modules)\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"
