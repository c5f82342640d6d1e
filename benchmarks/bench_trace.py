"""Per-step time of `trace` (kktembed.dynamics.paired_training) against hand-written float64 loops
for the same problem, side by side in one run (run by hand, not part of the tests).

Each case trains the narrow network and its split (copies=2, isometric) together, as `trace` does:
  trace        paired_training, recording only at the first and last step (the step itself), timed
               from the record of step 0 to the last one (set-up excluded: tens of ms once)
  trace+rec    paired_training recording every 10 steps (the CLI's default --every)
  torch loop   plain float64 tensors, the forward written out, torch.autograd.grad, in-place update,
               one thread (its best case here)
  numpy loop   the forward and the backward written out in numpy, one BLAS thread (MLPs only)
Cases (MATH.md §5): paper_mlp (2→1→1 leaky ReLU(0.01) → width 2, 100 Gaussian points, full batch,
lr 0.1), paper_cnn (conv 2×3×3, avg pool 2, linear → 4 channels, 100 images 1×5×5, full batch,
lr 1e-3), digits_mlp (64→128→1 → 256, digits 3 vs 5, 365 samples, identical batches of 64, lr 1e-3).
Loss: mean of e^{−q}. Each timing is the median of --repeats runs, interleaved across methods.

`--contention` repeats every timing while this script keeps one CPU-burning process (a Python busy
loop it starts and stops itself) running, as on a busy 2-core machine; `trace (all threads)` is then
the old behaviour, every intra-op thread torch has.

`--threads` instead sweeps MLPs 64→h→1 (split to 2h) over h and the batch size, timing trace's step
with one thread and with all, next to its flop estimate: the data behind SINGLE_THREAD_FLOPS.

    flock /tmp/kktembed-heavy.lock .venv/bin/python benchmarks/bench_trace.py
    flock /tmp/kktembed-heavy.lock .venv/bin/python benchmarks/bench_trace.py --contention
    flock /tmp/kktembed-heavy.lock .venv/bin/python benchmarks/bench_trace.py --threads
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {
    # name: (fixture, dataset, lr, batch, steps per timing)
    "paper_mlp": ("paper_mlp_leaky", "gaussians", 0.1, None, 2000),
    "paper_cnn": ("paper_cnn", "gaussian-images", 1e-3, None, 1000),
    "digits_mlp": ("digits35_mlp_init", None, 1e-3, 64, 1000),
}


def load_case(name: str):
    from kktembed.data import load_network_and_data
    from kktembed.network import Network
    from kktembed.splitting import plan_from_spec

    fixture, dataset, lr, batch, steps = CASES[name]
    narrow, data = load_network_and_data(ROOT / "fixtures" / f"{fixture}.safetensors", None, dataset)
    embedding = plan_from_spec(narrow, "copies=2")
    wide = Network(narrow.adapter, embedding.wide_config, embedding.apply(narrow.params))
    return narrow, wide, embedding, data, lr, batch, steps


def time_trace(narrow, embedding, data, lr, batch, steps, every, threads=None) -> float:
    """Seconds per step from the first record (step 0, after the set-up) to the last (step
    ``steps``, including that record)."""
    from kktembed.dynamics import TraceOptions, paired_training

    options = TraceOptions(steps=steps, lr=lr, batch=batch, every=every, threads=threads)
    stamps = []
    paired_training(narrow, embedding, data, options, on_record=lambda row: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[0]) / steps


def mlp_forward_torch(weights, x, slope):
    import torch

    h = x
    for weight in weights[:-1]:
        h = torch.relu(h @ weight.T) if slope == 0 else torch.nn.functional.leaky_relu(h @ weight.T, slope)
    return (h @ weights[-1].T).reshape(-1)


def cnn_forward_torch(weights, x, config):
    import torch

    conv = config["conv"][0]
    kernel = int(conv["pool"].split(":")[1])
    h = torch.nn.functional.conv2d(x, weights[0], stride=tuple(conv["stride"]), padding=tuple(conv["padding"]))
    h = torch.nn.functional.avg_pool2d(torch.relu(h), kernel)
    return (h.flatten(1) @ weights[1].T).reshape(-1)


def slope_of(config) -> float:
    from kktembed.adapters.activations import parse_activation

    return parse_activation(config["activation"])[1]


def time_torch_loop(narrow, wide, data, lr, batch, steps) -> float:
    """Both networks, plain tensors, forward written out, one autograd.grad, in-place update."""
    import torch

    from kktembed.dynamics import torch_threads

    x, y = data.x, data.y.to(torch.float64)
    nets = [[t.clone().requires_grad_(True) for t in net.params.values()] for net in (narrow, wide)]
    if "widths" in narrow.config:
        slope = slope_of(narrow.config)
        forward = lambda weights, inputs: mlp_forward_torch(weights, inputs, slope)  # noqa: E731
    else:
        forward = lambda weights, inputs: cnn_forward_torch(weights, inputs, narrow.config)  # noqa: E731
    parameters = nets[0] + nets[1]
    stream = torch.Generator().manual_seed(0)
    with torch_threads(1):
        started = time.perf_counter()
        for _ in range(steps):
            if batch is None:
                xb, yb = x, y
            else:
                samples = torch.randperm(len(y), generator=stream)[:batch]
                xb, yb = x[samples], y[samples]
            objective = torch.exp(-yb * forward(nets[0], xb)).mean() + torch.exp(-yb * forward(nets[1], xb)).mean()
            gradients = torch.autograd.grad(objective, parameters)
            with torch.no_grad():
                for parameter, gradient in zip(parameters, gradients):
                    parameter.sub_(lr * gradient)
        return (time.perf_counter() - started) / steps


def time_numpy_loop(narrow, wide, data, lr, batch, steps) -> float | None:
    """Both MLPs in numpy, backward written out, one BLAS thread (None for CNNs)."""
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    if "widths" not in narrow.config:
        return None
    with threadpool_limits(1):
        return numpy_loop(narrow, wide, data, lr, batch, steps, slope_of(narrow.config))


def numpy_loop(narrow, wide, data, lr, batch, steps, slope) -> float:
    import numpy as np

    x, y = data.x.numpy(), data.y.numpy().astype(np.float64)
    nets = [[t.numpy().copy() for t in net.params.values()] for net in (narrow, wide)]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(steps):
        if batch is None:
            xb, yb = x, y
        else:
            samples = rng.permutation(len(y))[:batch]
            xb, yb = x[samples], y[samples]
        for weights in nets:
            inputs, pre = [xb], []
            for weight in weights[:-1]:
                z = inputs[-1] @ weight.T
                pre.append(z)
                inputs.append(np.where(z > 0, z, slope * z))
            out = (inputs[-1] @ weights[-1].T)[:, 0]
            upstream = (-(yb * np.exp(-yb * out)) / len(yb))[:, None]  # ∂𝓛/∂Φ
            gradients = [None] * len(weights)
            for layer in range(len(weights) - 1, -1, -1):
                gradients[layer] = upstream.T @ inputs[layer]
                if layer:
                    upstream = (upstream @ weights[layer]) * np.where(pre[layer - 1] > 0, 1.0, slope)
            for weight, gradient in zip(weights, gradients):
                weight -= lr * gradient
    return (time.perf_counter() - started) / steps


def burner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure_case(name: str, repeats: int) -> dict[str, float | None]:
    import torch

    narrow, wide, embedding, data, lr, batch, steps = load_case(name)
    everything = torch.get_num_threads()
    methods = {
        "trace": lambda: time_trace(narrow, embedding, data, lr, batch, steps, every=steps),
        "trace+rec": lambda: time_trace(narrow, embedding, data, lr, batch, steps, every=10),
        "trace (all threads)": lambda: time_trace(narrow, embedding, data, lr, batch, steps, every=steps, threads=everything),
        "torch loop": lambda: time_torch_loop(narrow, wide, data, lr, batch, steps),
        "numpy loop": lambda: time_numpy_loop(narrow, wide, data, lr, batch, steps),
    }
    for method in methods.values():  # warm-up
        method()
    samples: dict[str, list] = {key: [] for key in methods}
    for _ in range(repeats):
        for key, method in methods.items():
            samples[key].append(method())
    return {key: None if values[0] is None else statistics.median(values) for key, values in samples.items()}


def print_table(title: str, rows: dict[str, dict]) -> None:
    columns = ["trace", "trace+rec", "trace (all threads)", "torch loop", "numpy loop"]
    print(f"\n{title} (ms per step, both networks; ratio = trace / loop)")
    print(f"{'case':<11}" + "".join(f"{c:>21}" for c in columns) + f"{'trace/torch':>13}{'trace/numpy':>13}")
    for name, row in rows.items():
        cells = "".join(f"{'—':>21}" if row[c] is None else f"{1e3 * row[c]:>21.4f}" for c in columns)
        over_torch = row["trace"] / row["torch loop"]
        over_numpy = "—" if row["numpy loop"] is None else f"{row['trace'] / row['numpy loop']:.2f}"
        print(f"{name:<11}{cells}{over_torch:>13.2f}{over_numpy:>13}")


def sweep_threads(repeats: int) -> None:
    import torch

    from kktembed.adapters.mlp import MLPAdapter
    from kktembed.data import Dataset
    from kktembed.dynamics import MarginData, TrainedNetwork, step_flops
    from kktembed.network import Network
    from kktembed.splitting import plan_from_spec

    everything = torch.get_num_threads()
    print(f"MLP 64→h→1 split to 2h, full batch of n random points; ms per step with 1 and {everything} threads")
    print(f"{'h':>6}{'n':>7}{'flops/step':>14}{'1 thread':>11}{'all':>11}{'all/1':>8}")
    adapter = MLPAdapter()
    generator = torch.Generator().manual_seed(0)
    for hidden in (16, 64, 256):
        for n in (64, 256, 1024, 4096):
            config = {"widths": [64, hidden, 1], "activation": "relu", "first_layer_bias": False}
            params = {key: value.detach().to(torch.float64) for key, value in adapter.build(config).state_dict().items()}
            narrow = Network(adapter, config, params)
            x = torch.randn(n, 64, generator=generator, dtype=torch.float64)
            data = Dataset(x, torch.where(x[:, 0] > 0, 1, -1), "random")
            embedding = plan_from_spec(narrow, "copies=2")
            wide = Network(adapter, embedding.wide_config, embedding.apply(params))
            flops = step_flops(TrainedNetwork(narrow, torch.device("cpu")), TrainedNetwork(wide, torch.device("cpu")), MarginData(data, 1, torch.device("cpu")), None)
            steps = max(20, int(2e8 / max(flops, 1e5)) // 10)
            steps = min(steps, 500)
            timings = {}
            for threads in (1, everything):
                time_trace(narrow, embedding, data, 0.01, None, 5, every=5, threads=threads)
                timings[threads] = statistics.median(time_trace(narrow, embedding, data, 0.01, None, steps, every=steps, threads=threads) for _ in range(repeats))
            print(f"{hidden:>6}{n:>7}{flops:>14.3g}{1e3 * timings[1]:>11.3f}{1e3 * timings[everything]:>11.3f}{timings[everything] / timings[1]:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="only these cases (repeatable)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--contention", action="store_true", help="also time with a CPU-burning process running")
    parser.add_argument("--threads", action="store_true", help="the thread-count sweep instead")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads by default; load average {os.getloadavg()[0]:.2f} at the start")
    if args.threads:
        sweep_threads(args.repeats)
        if args.contention:
            process = burner()
            try:
                print("\ncontention (one busy-loop process running)")
                sweep_threads(args.repeats)
            finally:
                process.terminate()
                process.wait()
        return
    names = args.case or list(CASES)
    print_table("no added load", {name: measure_case(name, args.repeats) for name in names})
    if args.contention:
        process = burner()
        try:
            print_table("contention (one busy-loop process running)", {name: measure_case(name, args.repeats) for name in names})
        finally:
            process.terminate()
            process.wait()
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (other jobs on the machine count too)")


if __name__ == "__main__":
    main()
