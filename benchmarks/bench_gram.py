"""Time and peak memory of the Gram matrix K = GᵀG (run by hand; not part of the tests).

Each case runs in its own process, so that its peak resident memory (ru_maxrss, the whole process:
Python, torch and K) is its own. "new" is kktembed.kkt.gram.gram_matrix; "old" is the version of
commit df4d124 (one forward/backward per chunk, then whole n_c × n_c products per layer), loaded
from `git show` into a temporary module and run in the same session for the ratio. Old cases whose
own allocation pattern (K and three n_c × n_c temporaries) would pass 6 GiB are not run.

    python benchmarks/bench_gram.py                         # every case, a table on stdout
    python benchmarks/bench_gram.py --group ten_class       # one group (see GROUPS)
    python benchmarks/bench_gram.py --case new:mlp10:16173  # one case, JSON on stdout
    python benchmarks/bench_gram.py --pin-threads 1         # both versions on one intra-op thread
    python benchmarks/bench_gram.py --threads [--busy]      # 1 against 2 intra-op threads

Settings (digits, 1,797 samples of 8×8, float64, PyTorch's default initialisation, seed 0):
  mlp1     64-256-256-1 ReLU MLP, labels +1 for digits 0–4 and −1 for 5–9 (p = 82,176)
  mlp10    64-256-256-10 ReLU MLP, 10 classes, 9 constraints per sample (p = 84,224, 16,173 in all)
  cnn10    conv 1→16 3×3 pad 1, avg pool 2, conv 16→32 3×3 pad 1, avg pool 2, linear 128→10 (p = 6,032)
  mlpH     64-H-H-1 ReLU MLP, binary labels as mlp1 (H = 64 … 1024: p = 8k … 1.1M)
The first n constraints are used (in sample order).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OLD_COMMIT = "df4d124"
OLD_LIMIT_BYTES = 6 * 2**30  # per-process memory rule of this machine
CNN10 = {
    "input_shape": [1, 8, 8],
    "activation": "relu",
    "first_layer_bias": False,
    "conv": [
        {"key": "0", "out_channels": 16, "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "pool": "avg:2"},
        {"key": "3", "out_channels": 32, "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "pool": "avg:2"},
    ],
    "linear": [{"key": "7", "out_features": 10}],
}
GROUPS = {
    "perf_mlp": [("mlp1", 284), ("mlp1", 1797)],
    "ten_class": [("mlp10", 2010), ("mlp10", 16173)],
    "cnn": [("cnn10", 2000)],
    "scaling_p": [(f"mlp{width}", 1797) for width in (64, 128, 256, 512, 1024)],
    "scaling_nc": [("mlp10", n) for n in (500, 1000, 2000, 4000, 8000, 16173)],
}


def setting(name: str, n_constraints: int):
    """(network, x, constraints) for a setting of the module docstring."""
    import torch
    from sklearn.datasets import load_digits

    from kktembed.kkt.margins import build_constraints
    from kktembed.network import Network
    from kktembed.plugins import adapters

    torch.manual_seed(0)
    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float64) / 16
    digits = torch.tensor(bunch.target)
    if name == "cnn10":
        adapter, config, x = adapters()["cnn"], CNN10, x.reshape(-1, 1, 8, 8)
    else:
        width = 256 if name in ("mlp1", "mlp10") else int(name[3:])
        adapter = adapters()["mlp"]
        config = {"widths": [64, width, width, 10 if name == "mlp10" else 1], "activation": "relu", "first_layer_bias": False}
    outputs = 10 if name in ("mlp10", "cnn10") else 1
    labels = digits if outputs == 10 else torch.where(digits < 5, 1, -1)
    params = {key: value.detach().clone() for key, value in adapter.build(config).state_dict().items()}
    network = Network(adapter, config, params)
    constraints = build_constraints(labels, outputs)
    return network, x, constraints.subset(torch.arange(n_constraints))


def old_gram_module():
    """kktembed/kkt/gram.py as of OLD_COMMIT, imported under another name."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:kktembed/kkt/gram.py"], capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_gram.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_gram", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_peak_bytes(n_constraints: int) -> int:
    """The old code holds K and, per layer, two n_c × n_c products and their elementwise product."""
    return 4 * n_constraints**2 * 8


def run_case(case: str, save: str | None, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)  # the new code never raises it
    version, name, n_text = case.split(":")
    network, x, constraints = setting(name, int(n_text))
    gram_matrix = old_gram_module().gram_matrix if version == "old" else __import__("kktembed.kkt.gram", fromlist=["gram_matrix"]).gram_matrix
    started = time.perf_counter()
    gram = gram_matrix(network, x, constraints, network.params)
    seconds = time.perf_counter() - started
    if save:
        from safetensors.torch import save_file

        save_file({"gram": gram.contiguous()}, save)
    estimate = None
    if version == "new":
        from kktembed.kkt.gram import DEFAULT_CHUNK, estimate_gram_bytes

        estimate = estimate_gram_bytes(network, len(constraints), DEFAULT_CHUNK) / 2**20
    return {
        "estimate_mib": estimate,
        "case": case,
        "n_constraints": len(constraints),
        "n_parameters": network.n_parameters,
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_1min": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
    }


def run_in_process(case: str, save: str | None, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--case", case] + (["--save", save] if save else []) + (["--pin-threads", str(threads)] if threads else [])
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def max_relative_difference(first: str, second: str) -> float:
    import torch

    from safetensors.torch import load_file

    new, old = load_file(first)["gram"], load_file(second)["gram"]
    return float((new - old).abs().max() / old.abs().max())


def table(groups: list[str], threads: int | None) -> None:
    print(f"{'setting':<8} {'n_c':>6} {'p':>9} {'new s':>8} {'new MiB':>8} {'est. MiB':>8} {'old s':>8} {'old MiB':>8} {'old/new':>8} {'max rel diff':>13} {'load':>5}")
    with tempfile.TemporaryDirectory() as folder:
        for group in groups:
            for name, n in GROUPS[group]:
                compare = n <= 4000
                new_file, old_file = (os.path.join(folder, f"{version}.safetensors") if compare else None for version in ("new", "old"))
                new = run_in_process(f"new:{name}:{n}", new_file, threads)
                old = run_in_process(f"old:{name}:{n}", old_file, threads) if old_peak_bytes(n) <= OLD_LIMIT_BYTES else None
                difference = f"{max_relative_difference(new_file, old_file):13.1e}" if compare and old else f"{'':>13}"
                old_text = f"{old['seconds']:8.2f} {old['peak_rss_mib']:8.0f} {old['seconds'] / new['seconds']:8.1f}" if old else f"{'not run':>8} {'':>8} {'':>8}"
                print(
                    f"{name:<8} {n:>6} {new['n_parameters']:>9,} {new['seconds']:8.2f} {new['peak_rss_mib']:8.0f} {new['estimate_mib']:8.0f} {old_text} {difference} {new['load_1min']:5.1f}",
                    flush=True,
                )


THREAD_CASES = [("mlp16", 200), ("mlp64", 500), ("mlp1", 1797), ("mlp10", 2010), ("mlp10", 16173)]


def thread_comparison(busy: bool, rounds: int) -> None:
    """Gram and weighted-gradient times with 1 and 2 intra-op threads, interleaved; with ``busy``
    a spinning process occupies one core meanwhile (contention)."""
    import torch

    from kktembed import resources
    from kktembed.kkt import gram

    resources.threads_for_work = lambda work, current: current  # keep the count pinned below
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        for name, n in THREAD_CASES:
            network, x, constraints = setting(name, n)
            weights = torch.rand(len(constraints), dtype=torch.float64)
            work = {
                "gram": lambda: gram.gram_matrix(network, x, constraints, network.params),
                "weighted gradient": lambda: gram.weighted_margin_gradient(network, x, constraints, weights, network.params),
            }
            for label, function in work.items():
                times = {1: [], 2: []}
                for round_index in range(rounds if n < 10000 else 2):
                    for threads in (1, 2) if round_index % 2 == 0 else (2, 1):
                        torch.set_num_threads(threads)
                        started = time.perf_counter()
                        function()
                        times[threads].append(time.perf_counter() - started)
                one, two = statistics.median(times[1]), statistics.median(times[2])
                print(
                    f"{'busy' if busy else 'as is'} {name:<6} n_c={len(constraints):>6} {label:<18} 1 thread {one:9.4f} s  2 threads {two:9.4f} s  2/1 {two / one:5.2f}  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    finally:
        if spinner:
            spinner.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help="VERSION:SETTING:N_CONSTRAINTS, e.g. new:mlp10:16173")
    parser.add_argument("--save", help="with --case: save K there (safetensors)")
    parser.add_argument("--group", choices=sorted(GROUPS), action="append")
    parser.add_argument("--pin-threads", type=int, help="torch intra-op threads for every case (default: torch's)")
    parser.add_argument("--threads", action="store_true", help="compare 1 and 2 intra-op threads")
    parser.add_argument("--busy", action="store_true", help="with --threads: keep one core busy meanwhile")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.save, args.pin_threads)))
    elif args.threads:
        thread_comparison(args.busy, args.rounds)
    else:
        table(args.group or list(GROUPS), args.pin_threads)


if __name__ == "__main__":
    main()
