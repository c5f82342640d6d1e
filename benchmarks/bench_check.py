"""Timing and memory of the check pipeline (run by hand: `make benchmark`; not part of the tests).

Setting of MATH.md §3: bias-free ReLU MLP 64-256-256-1 (p = 82,176) on the 1,797 digits
(label +1 for digits 0–4, −1 for 5–9), random float64 weights. Each case runs in its own process
so that its peak resident memory (ru_maxrss) is its own.

    python benchmarks/bench_check.py            # all cases, a table on stdout
    python benchmarks/bench_check.py --case gram_layerwise_1797
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = {
    "gram_layerwise_284": "layerwise Gram K (no G), 284 constraints",
    "gram_layerwise_1797": "layerwise Gram K (no G), 1,797 constraints",
    "gram_from_G_284": "G by torch.func vmap(grad) in chunks, then GᵀG, 284 constraints",
    "gram_from_G_1797": "G by torch.func vmap(grad) in chunks, then GᵀG, 1,797 constraints",
    "qp_quad_form_1797": "ℓ2 QP, quad_form(λ, psd_wrap(K)), Clarabel, 1,797 constraints",
    "qp_sum_squares_284": "ℓ2 QP written as sum_squares(Rλ), K = RᵀR, Clarabel, 284 constraints",
    "qp_quad_form_284": "ℓ2 QP, quad_form(λ, psd_wrap(K)), Clarabel, 284 constraints",
    "check_fixture": "full `check` (with τ profile) on fixtures/mlp_gd_digits38",
    "trace_mlp_10000": "`trace` 10,000 GD steps, paper 2-1-1 leaky MLP split to 2, record every 100",
    "trace_cnn_1000": "`trace` 1,000 GD steps, paper CNN (2 channels, 1x5x5) split to 4, record every 100",
}


def setting(n_constraints: int):
    import torch
    from sklearn.datasets import load_digits

    from kktembed.kkt.margins import build_constraints
    from kktembed.network import Network
    from kktembed.plugins import adapters

    torch.manual_seed(0)
    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float64) / 16
    y = torch.where(torch.tensor(bunch.target) < 5, 1, -1)
    config = {"widths": [64, 256, 256, 1], "activation": "relu", "first_layer_bias": False}
    adapter = adapters()["mlp"]
    params = {key: value.detach().clone() for key, value in adapter.build(config).state_dict().items()}
    network = Network(adapter, config, params)
    constraints = build_constraints(y, 1).subset(torch.arange(n_constraints))
    return network, x, constraints


def run_case(name: str) -> dict:
    import numpy as np
    import torch

    from kktembed.kkt.gram import gradient_matrix, gram_matrix

    n = 1797 if name.endswith("1797") else 284
    started = time.perf_counter()
    extra = {}
    if name.startswith("gram_layerwise"):
        network, x, constraints = setting(n)
        started = time.perf_counter()
        gram_matrix(network, x, constraints, network.params)
    elif name.startswith("gram_from_G"):
        network, x, constraints = setting(n)
        started = time.perf_counter()
        matrix = gradient_matrix(network, x, constraints, network.params)
        _ = matrix.T @ matrix
    elif name.startswith("qp_"):
        import cvxpy as cp

        network, x, constraints = setting(n)
        gram = gram_matrix(network, x, constraints, network.params).numpy()
        q = torch.rand(n, dtype=torch.float64).numpy() + 1
        b = 2 * q
        lam = cp.Variable(n, nonneg=True)
        if "quad_form" in name:
            objective = cp.quad_form(lam, cp.psd_wrap(gram)) - 2 * b @ lam
        else:
            values, vectors = np.linalg.eigh(gram)
            factor = (vectors * np.sqrt(np.clip(values, 0, None))).T  # K = RᵀR
            objective = cp.sum_squares(factor @ lam) - 2 * b @ lam
        started = time.perf_counter()
        cp.Problem(cp.Minimize(objective)).solve(solver=cp.CLARABEL)
    elif name == "check_fixture":
        from kktembed.loading import load_network_and_data
        from kktembed.kkt.analysis import CheckOptions, check_network

        network, dataset = load_network_and_data(Path(__file__).resolve().parent.parent / "fixtures/mlp_gd_digits38.safetensors")
        started = time.perf_counter()
        result = check_network(network, dataset, CheckOptions())
        extra = {"gram_seconds": result.gram_seconds, "solver_seconds": result.solver_seconds}
    elif name.startswith("trace_"):
        from kktembed.loading import load_network_and_data
        from kktembed.dynamics import TraceOptions, paired_training
        from kktembed.splitting import plan_from_spec

        fixture = "paper_mlp_leaky" if "mlp" in name else "paper_cnn"
        network, dataset = load_network_and_data(Path(__file__).resolve().parent.parent / f"fixtures/{fixture}.safetensors")
        steps = int(name.rsplit("_", 1)[1])
        started = time.perf_counter()
        paired_training(network, plan_from_spec(network, "copies=2"), dataset, TraceOptions(steps=steps, lr=0.01, every=100))
        extra = {"ms_per_step": 1000 * (time.perf_counter() - started) / steps}
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": name, "seconds": seconds, "peak_rss_mib": peak_mib, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    print(f"{'case':<22} {'seconds':>9} {'peak RSS MiB':>13}  description")
    for name, description in CASES.items():
        output = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, check=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        print(f"{name:<22} {row['seconds']:>9.3f} {row['peak_rss_mib']:>13.0f}  {description}")


if __name__ == "__main__":
    main()
