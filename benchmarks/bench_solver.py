"""The ℓ2 multiplier QP (MATH.md §3): Clarabel (``solve_l2``) against the active-set solver
(``solve_nonnegative_qp``), run by hand, not in CI. Every heavy step is one process; run the whole
script under the shared lock:

    flock /tmp/kktembed-heavy.lock python benchmarks/bench_solver.py            # the table
    flock /tmp/kktembed-heavy.lock python benchmarks/bench_solver.py --case prepare_multiclass

Settings (the digits of benchmarks/bench_check.py, pixels / 16, float64):
- binary: bias-free ReLU MLP 64-256-256-1 (p = 82,176), labels +1 for digits 0–4 and −1 for 5–9;
  the 284 constraints of smallest margin, and all 1,797.
- multi-class: 64-256-256-10 (p = 84,480), all 1,797 × 9 = 16,173 constraints (k, j ≠ y_k).
Both networks are trained a little: 500 full-batch Adam steps on log Σ_k e^{−q_k} (the exponential
loss) from PyTorch's default initialisation scaled by 0.5 (separated after ~100 steps); the QP is
that of ``check`` at θ̂ (b = L·q(θ̂), μ = 0). The trained parameters and the 16,173 × 16,173 Gram
matrix are cached under /tmp/kktembed-bench-solver. That K (2.1 GB) is assembled here in row blocks
from the per-layer factors, K = Σ_l (Δ_lΔ_lᵀ)⊙(H_lH_lᵀ) (MATH.md §3), upper block triangle mirrored,
so that peak memory stays near one n_c × n_c matrix (``gram_matrix`` holds about four of them, over
the 6 GiB a process may use here); it equals ``gram_matrix`` on a 1,500-constraint corner, which is
checked. ε is measured directly (one backward pass, ``stationarity_residual``).
Times are medians of 3 runs. Memory: ``solve MiB`` is the growth of the process's peak RSS during
the (first) solve alone, ``peak MiB`` the whole process's. The active-set solver runs with one BLAS
thread (it sets this itself); Clarabel with its defaults.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CACHE = Path("/tmp/kktembed-bench-solver")
SETTINGS = {"binary": {"widths": [64, 256, 256, 1], "seed": 0}, "multiclass": {"widths": [64, 256, 256, 10], "seed": 1}}
TRAINING_STEPS = 500
GRAM_BLOCK = 1024
REPEATS = 3  # timings are medians: the machine is shared


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def digits_data(kind: str):
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float64) / 16
    target = torch.tensor(bunch.target)
    y = torch.where(target < 5, 1, -1) if kind == "binary" else target
    return x, y


def network_for(kind: str, params=None):
    import torch

    from kktembed.network import Network
    from kktembed.plugins import adapters

    setting = SETTINGS[kind]
    config = {"widths": setting["widths"], "activation": "relu", "first_layer_bias": False}
    adapter = adapters()["mlp"]
    if params is None:
        torch.manual_seed(setting["seed"])
        params = {key: 0.5 * value.detach().clone() for key, value in adapter.build(config).state_dict().items()}
    return Network(adapter, config, params)


def train(kind: str) -> dict:
    """Adam (lr 1e-3) on the log of the exponential loss, log Σ_k e^{−q_k}, full batch, a fixed number of
    steps (plain loss-scaled GD oscillates at this width without separating the data for thousands of steps)."""
    import torch

    from kktembed.kkt.margins import build_constraints, margins_from_outputs

    x, y = digits_data(kind)
    network = network_for(kind)
    constraints = build_constraints(y, network.output_dim)
    params = {key: value.clone().requires_grad_(True) for key, value in network.params.items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-3)
    for _ in range(TRAINING_STEPS):
        q = margins_from_outputs(network.forward(x, params), constraints)
        optimizer.zero_grad()
        torch.logsumexp(-q, dim=0).backward()
        optimizer.step()
    params = {key: value.detach() for key, value in params.items()}
    q = margins_from_outputs(network.forward(x, params), constraints)
    if float(q.min()) <= 0:
        raise RuntimeError(f"{kind}: not separated after {TRAINING_STEPS} steps")
    return {"params": params, "steps": TRAINING_STEPS}


def trained(kind: str):
    """(network at θ̂, x, constraints, q(θ̂), training record), trained once and cached."""
    import torch

    from kktembed.kkt.margins import build_constraints, margins, margins_from_outputs, rescale_to_unit_margin

    from safetensors.torch import load_file, save_file

    path = CACHE / f"{kind}_params.safetensors"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        record = train(kind)
        save_file(record["params"], path, metadata={"steps": str(record["steps"])})
    record = {"params": load_file(path), "steps": TRAINING_STEPS}
    network = network_for(kind, record["params"])
    x, y = digits_data(kind)
    constraints = build_constraints(y, network.output_dim)
    q = margins_from_outputs(network.forward(x), constraints)
    theta_hat = rescale_to_unit_margin(network.params, float(q.min()), network.degree)
    network = network.with_params(theta_hat)
    return network, x, constraints, margins(network, x, constraints), record


def layer_factors(network, x, constraints):
    """Per Linear layer l: (H_l, Δ_l) with ∇_{W_l} q_c = δ_{l,c} h_{l−1,c}ᵀ (MATH.md §3), all constraints."""
    import torch

    layers = [module for module in network.module.modules() if isinstance(module, torch.nn.Linear)]
    inputs, outputs = [], []

    def capture(module, layer_inputs, layer_output):
        inputs.append(layer_inputs[0].detach())
        outputs.append(layer_output)

    handles = [layer.register_forward_hook(capture) for layer in layers]
    leaves = {key: value.detach().requires_grad_(True) for key, value in network.params.items()}
    try:
        result = network.forward(x[constraints.sample], leaves)
        deltas = torch.autograd.grad((result * constraints.signal).sum(), outputs)
    finally:
        for handle in handles:
            handle.remove()
    return list(zip(inputs, deltas))


def blocked_gram(network, x, constraints):
    """K = Σ_l (Δ_l Δ_lᵀ) ⊙ (H_l H_lᵀ) (float64), computed block row by block row on the upper block
    triangle and mirrored: exactly symmetric, one n_c × n_c array plus block temporaries."""
    import numpy as np

    factors = [(h.numpy(), d.numpy()) for h, d in layer_factors(network, x, constraints)]
    n = len(constraints)
    gram = np.empty((n, n))
    for start in range(0, n, GRAM_BLOCK):
        rows = slice(start, min(start + GRAM_BLOCK, n))
        block = np.zeros((rows.stop - rows.start, n - start))
        for h, d in factors:
            block += (d[rows] @ d[start:].T) * (h[rows] @ h[start:].T)
        gram[rows, start:] = block
        gram[start:, rows] = block.T
    for start in range(0, n, GRAM_BLOCK):  # diagonal blocks: mirror their upper triangle
        rows = slice(start, min(start + GRAM_BLOCK, n))
        diagonal = gram[rows, rows]
        upper = np.triu(diagonal)
        gram[rows, rows] = upper + np.triu(upper, 1).T
    return gram


def prepare_multiclass() -> dict:
    """Train the 10-class network, assemble K for all 16,173 constraints in increasing order of q(θ̂)
    (so that every candidate set A_τ is a leading block K[:m, :m]), check a corner of it against
    ``gram_matrix``, and cache K, the order and q(θ̂)."""
    import numpy as np

    from kktembed.kkt.gram import gram_matrix

    network, x, constraints, q, record = trained("multiclass")
    order = np.argsort(q.numpy(), kind="stable")
    ordered = constraints.subset(order)
    started = time.perf_counter()
    gram = blocked_gram(network, x, ordered)
    seconds = time.perf_counter() - started
    corner = np.arange(1500)
    reference = gram_matrix(network, x, ordered.subset(corner), network.params).numpy()
    agreement = float(np.abs(gram[:1500, :1500] - reference).max() / np.abs(reference).max())
    np.save(CACHE / "multiclass_gram.npy", gram)
    np.save(CACHE / "multiclass_order.npy", order)
    return {"gram_seconds": seconds, "corner_relative_difference": agreement, "training_steps": record["steps"], "peak_rss_mib": peak_rss_mib()}


def binary_problem(n_candidates: int):
    """(network at θ̂, x, the n_candidates constraints of smallest q(θ̂), their q, K) for the binary MLP."""
    import numpy as np

    from kktembed.kkt.gram import gram_matrix

    network, x, constraints, q, _ = trained("binary")
    order = np.argsort(q.numpy(), kind="stable")[:n_candidates]
    candidates = constraints.subset(order)
    gram = gram_matrix(network, x, candidates, network.params).numpy()
    return network, x, candidates, q[order].numpy(), gram


def relative_epsilon(network, x, constraints, multipliers) -> float:
    """ε/‖θ̂‖, measured directly (one backward pass of Σ λ_k q_k)."""
    import torch

    from kktembed.kkt.analysis import stationarity_residual

    lam = torch.from_numpy(multipliers)
    return stationarity_residual(network, x, constraints, lam, network.params) / network.norm()


def measured(solve, repeats: int = REPEATS) -> tuple[object, float, float]:
    """(result, median seconds over ``repeats`` calls, MiB by which the process's peak RSS grew during
    the first call)."""
    baseline = max(current_rss_mib(), peak_rss_mib())
    seconds = []
    for repeat in range(repeats):
        started = time.perf_counter()
        result = solve()
        seconds.append(time.perf_counter() - started)
        if repeat == 0:
            memory = max(0.0, peak_rss_mib() - baseline)
    return result, statistics.median(seconds), memory


def run_binary(n_candidates: int, solver: str) -> dict:
    """One solver on the binary problem: the QP, then its refinement stage (as ``check`` runs them)."""
    import numpy as np

    network, x, candidates, q, gram = binary_problem(n_candidates)
    degree = network.degree
    b, excess = degree * q, q - 1.0
    if solver == "clarabel":
        import cvxpy  # noqa: F401  (imported outside the timing, as the solver's own cost is compared)

        from kktembed.kkt.analysis import refined_multipliers
        from kktembed.kkt.solve import solve_l2

        solution, seconds, memory = measured(lambda: solve_l2(gram, b, excess))
        multipliers = solution.multipliers
        refined, refine_seconds, _ = measured(lambda: refined_multipliers(gram, q, degree, solution))
        polished = refined[0] if refined else multipliers
        extra = {"epsilon_polished": relative_epsilon(network, x, candidates, polished)}
    else:
        from kktembed.kkt.active_set import most_complementary_optimum, solve_nonnegative_qp

        solution, seconds, memory = measured(lambda: solve_nonnegative_qp(gram, b))
        multipliers = solution.multipliers
        _, refine_seconds, _ = measured(lambda: most_complementary_optimum(gram, b, excess, multipliers))
        extra = {"steps": solution.iterations, "kkt_violation": solution.kkt_violation}
    support = int((multipliers > 1e-8 * multipliers.max()).sum())
    objective = float(0.5 * multipliers @ gram @ multipliers - b @ multipliers)
    return {
        "qp_seconds": seconds,
        "refine_seconds": refine_seconds,
        "solve_mib": memory,
        "support": support,
        "objective": objective,
        "epsilon": relative_epsilon(network, x, candidates, multipliers),
        **extra,
    }


def multiclass_problem():
    """(network at θ̂, x, constraints in increasing q(θ̂), q in that order, K) from the cache."""
    import numpy as np

    network, x, constraints, q, _ = trained("multiclass")
    order = np.load(CACHE / "multiclass_order.npy")
    gram = np.load(CACHE / "multiclass_gram.npy")
    return network, x, constraints.subset(order), q.numpy()[order], gram


def run_multiclass() -> dict:
    """The active-set solver on all 16,173 constraints (cold start), ε measured directly."""
    from kktembed.kkt.active_set import most_complementary_optimum, solve_nonnegative_qp

    network, x, constraints, q, gram = multiclass_problem()
    b = network.degree * q
    solution, seconds, memory = measured(lambda: solve_nonnegative_qp(gram, b))
    complementary, refine_seconds, _ = measured(lambda: most_complementary_optimum(gram, b, q - 1.0, solution.multipliers))
    return {
        "qp_seconds": seconds,
        "refine_seconds": refine_seconds,
        "solve_mib": memory,
        "support": len(solution.support),
        "steps": solution.iterations,
        "kkt_violation": solution.kkt_violation,
        "objective": solution.objective,
        "epsilon": relative_epsilon(network, x, constraints, solution.multipliers),
        "unique": complementary is None,
    }


def run_profile() -> dict:
    """The τ profile of ``check`` on the 16,173 constraints: the nested candidate sets A_τ (leading
    blocks of K, views) solved cold and warm-started from the previous τ's optimum."""
    import numpy as np

    from kktembed.kkt.analysis import PROFILE_TOLS
    from kktembed.kkt.active_set import solve_nonnegative_qp

    _, _, _, q, gram = multiclass_problem()
    b = 3.0 * q
    sizes = sorted({int((q <= 1 + tol).sum()) for tol in PROFILE_TOLS} | {len(q)})
    rows, previous = [], np.zeros(0)
    for size in sizes:
        block = gram[:size, :size]
        cold = solve_nonnegative_qp(block, b[:size])
        warm = solve_nonnegative_qp(block, b[:size], start=np.concatenate([previous, np.zeros(size - len(previous))]))
        previous = warm.multipliers
        rows.append(
            {
                "candidates": size,
                "cold_seconds": cold.seconds,
                "cold_steps": cold.iterations,
                "warm_seconds": warm.seconds,
                "warm_steps": warm.iterations,
                "max_difference": float(np.abs(cold.multipliers - warm.multipliers).max() / cold.multipliers.max()),
                "objective_difference": abs(cold.objective - warm.objective) / abs(cold.objective),
            }
        )
    return {"rows": rows}


def run_case(name: str) -> dict:
    started = time.perf_counter()
    if name == "prepare_multiclass":
        result = prepare_multiclass()
    elif name == "prepare_binary":
        trained("binary")
        result = {}
    elif name.startswith("binary_"):
        _, size, solver = name.split("_", 2)
        result = run_binary(int(size), solver)
    elif name == "multiclass_16173_active_set":
        result = run_multiclass()
    elif name == "multiclass_profile":
        result = run_profile()
    else:
        raise SystemExit(f"unknown case {name}")
    return {"case": name, "wall_seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(), **result}


CASES = [
    "prepare_binary",
    "prepare_multiclass",
    "binary_284_clarabel",
    "binary_284_active_set",
    "binary_1797_clarabel",
    "binary_1797_active_set",
    "multiclass_16173_active_set",
    "multiclass_profile",
]


def run_in_process(name: str) -> dict:
    output = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def print_table(results: dict) -> None:
    print(f"{'case':<30} {'QP s':>7} {'refine s':>9} {'solve MiB':>10} {'peak MiB':>9} {'support':>8} {'steps':>6} {'ε/‖θ̂‖':>12}")
    for name, row in results.items():
        if "qp_seconds" not in row:
            continue
        steps = row.get("steps", "")
        print(
            f"{name:<30} {row['qp_seconds']:>7.3f} {row['refine_seconds']:>9.3f} {row['solve_mib']:>10.0f} {row['peak_rss_mib']:>9.0f} "
            f"{row['support']:>8} {steps!s:>6} {row['epsilon']:>12.6e}"
        )
    for size in (284, 1797):
        clarabel, active = results.get(f"binary_{size}_clarabel"), results.get(f"binary_{size}_active_set")
        if clarabel and active:
            print(
                f"binary {size}: QP time ratio Clarabel / active set {clarabel['qp_seconds'] / active['qp_seconds']:.1f}; "
                f"|Δε|/‖θ̂‖ vs Clarabel {abs(clarabel['epsilon'] - active['epsilon']):.1e}, "
                f"vs Clarabel + polish {abs(clarabel['epsilon_polished'] - active['epsilon']):.1e}; "
                f"objective (active set − Clarabel) / |objective| {(active['objective'] - clarabel['objective']) / abs(clarabel['objective']):.1e}"
            )
    if "multiclass_profile" in results:
        print(f"\nτ profile, 16,173 constraints (A_τ nested, leading blocks of K)\n{'candidates':>10} {'cold s':>8} {'steps':>6} {'warm s':>8} {'steps':>6} {'max |Δλ|/max λ':>16}")
        for row in results["multiclass_profile"]["rows"]:
            print(
                f"{row['candidates']:>10} {row['cold_seconds']:>8.3f} {row['cold_steps']:>6} {row['warm_seconds']:>8.3f} "
                f"{row['warm_steps']:>6} {row['max_difference']:>16.1e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    results = {}
    for name in CASES:
        if name == "prepare_multiclass" and (CACHE / "multiclass_gram.npy").exists():
            continue
        results[name] = run_in_process(name)
        print(json.dumps(results[name]), file=sys.stderr)
    print_table(results)


if __name__ == "__main__":
    main()
