"""End-to-end `kktembed check` at research scale, side by side with the code before the performance
work (commit df4d124), in the same run (run by hand; not part of the tests).

Every case is a whole `kktembed check … --json` process (start-up, loading, Gram matrix, multipliers,
residuals), timed by its wall clock, with its peak resident memory (ru_maxrss of that process
alone). Networks are bias-free ReLU MLPs on scikit-learn's 1,797 8×8 digits, trained by 500 full-batch
Adam steps on log Σ_k e^{−q_k} until the data are separated, and saved as safetensors in a cache
folder. All candidates are solved (--active-tol 1e9).

    python benchmarks/bench_scale.py                 # every case, a Markdown table
    python benchmarks/bench_scale.py --case multiclass_all --no-old

Cases: the issue's targets (perf MLP 64-256-256-1, 1,797 candidates, with the τ profile; 10-class
64-256-256-10, all 16,173 candidates), and the scaling in n_c (500 … 16k constraints of the 10-class
model, by using the first samples) and in p (64-h-h-1, h = 32 … 1024, 1,797 constraints). The old
code is not run where its dense Gram assembly would need more memory than the limit (--old-limit).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "kktembed-bench-scale"
OLD_COMMIT = "df4d124"
TRAINING_STEPS = 500
N_CONSTRAINT_STEPS = (500, 1000, 2000, 4000, 8000, 16173)
WIDTHS = (32, 64, 128, 256, 512, 1024)


def digits(kind: str, n_samples: int | None = None):
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float64) / 16
    target = torch.tensor(bunch.target)
    y = torch.where(target < 5, 1, -1) if kind == "binary" else target
    return (x, y) if n_samples is None else (x[:n_samples], y[:n_samples])


def trained_checkpoint(name: str, widths: list[int], kind: str) -> Path:
    """A separated network, trained once and cached as safetensors."""
    import torch
    from safetensors.torch import save_file

    from kktembed.kkt.margins import build_constraints, margins_from_outputs
    from kktembed.network import Network
    from kktembed.plugins import adapters

    path = CACHE / f"{name}.safetensors"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    config = {"widths": widths, "activation": "relu", "first_layer_bias": False}
    adapter = adapters()["mlp"]
    torch.manual_seed(0)
    params = {key: (0.5 * value.detach().clone()).requires_grad_(True) for key, value in adapter.build(config).state_dict().items()}
    network = Network(adapter, config, params)
    x, y = digits(kind)
    constraints = build_constraints(y, widths[-1])
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-3)
    for _ in range(TRAINING_STEPS):
        optimizer.zero_grad()
        torch.logsumexp(-margins_from_outputs(network.forward(x, params), constraints), dim=0).backward()
        optimizer.step()
    final = {key: value.detach() for key, value in params.items()}
    if float(margins_from_outputs(network.forward(x, final), constraints).min()) <= 0:
        raise RuntimeError(f"{name}: not separated after {TRAINING_STEPS} steps")
    save_file(final, path, metadata={"format": "pt", "kktembed.adapter": "mlp", "kktembed.config": json.dumps(config)})
    return path


def data_file(kind: str, n_samples: int | None = None) -> Path:
    from safetensors.torch import save_file

    path = CACHE / f"{kind}_{n_samples or 'all'}.safetensors"
    if not path.exists():
        x, y = digits(kind, n_samples)
        save_file({"x": x, "y": y}, path)
    return path


def cases() -> dict[str, tuple[Path, Path, list[str], float]]:
    """name → (checkpoint, data, extra options, old-code dense memory estimate in GiB)."""
    multiclass = trained_checkpoint("mlp_256_10class", [64, 256, 256, 10], "multiclass")
    perf = trained_checkpoint("mlp_256_binary", [64, 256, 256, 1], "binary")
    result = {
        "perf_all_with_profile": (perf, data_file("binary"), [], 0.0),
        "multiclass_all": (multiclass, data_file("multiclass"), ["--no-profile"], 0.0),
    }
    for n_constraints in N_CONSTRAINT_STEPS:
        samples = math.ceil(n_constraints / 9)
        result[f"nc_{samples * 9}"] = (multiclass, data_file("multiclass", samples), ["--no-profile"], 0.0)
    for width in WIDTHS:
        result[f"p_h{width}"] = (trained_checkpoint(f"mlp_{width}_binary", [64, width, width, 1], "binary"), data_file("binary"), ["--no-profile"], 0.0)
    return result


def old_code_folder() -> Path:
    """The package as it was before the performance work, unpacked beside the cache."""
    folder = CACHE / f"old-{OLD_COMMIT}"
    if not (folder / "kktembed").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_COMMIT, "kktembed"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
print(json.dumps({"seconds": seconds, "peak_gib": peak, "code": done.returncode, "stdout": done.stdout[-20000:], "stderr": done.stderr[-2000:]}))
"""


def measure(checkpoint: Path, data: Path, extra: list[str], old: bool) -> dict:
    """One `check` process, wall time and its own peak RSS."""
    import os

    env = {**os.environ, "KKTEMBED_LOAD_PLUGINS": ""}
    if old:
        env["PYTHONPATH"] = str(old_code_folder())
    command = [sys.executable, "-m", "kktembed", "check", str(checkpoint), "--data", str(data), "--active-tol", "1e9", "--max-candidates", "20000", "--json", *extra]
    output = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env, cwd=CACHE)
    record = json.loads(output.stdout.strip().splitlines()[-1])
    if record["code"] == 0:
        result = json.loads(record["stdout"])
        record.update(n_candidates=result["n_candidates"], epsilon=result["relative_stationarity_residual"], solver=result["solver"], gram=result["gram_seconds"], qp=result["solver_seconds"])
    return record


def old_fits(checkpoint: Path, data: Path, limit_gib: float) -> bool:
    """The old code formed (ΔΔᵀ)⊙(HHᵀ) for all constraints at once: about 4 n_c² doubles."""
    from kktembed.checkpoint import read_safetensors

    x = read_safetensors(data)[0]["x"]
    outputs = json.loads(read_safetensors(checkpoint)[1]["kktembed.config"])["widths"][-1]
    n_constraints = x.shape[0] * (outputs - 1 if outputs > 1 else 1)
    return 4 * n_constraints**2 * 8 / 2**30 < limit_gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="run only these cases")
    parser.add_argument("--no-old", action="store_true", help="do not run the old code beside the new")
    parser.add_argument("--old-limit", type=float, default=6.0, help="GiB: skip the old code above this estimate")
    arguments = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    selected = {name: case for name, case in cases().items() if not arguments.case or name in arguments.case}
    print("| case | n_c | new: s, peak GiB, solver (Gram s, QP s) | old: s, peak GiB | old/new time | ε/‖θ̂‖ new / old |")
    print("|---|---|---|---|---|---|")
    for name, (checkpoint, data, extra, _) in selected.items():
        new = measure(checkpoint, data, extra, old=False)
        old = None
        if not arguments.no_old and old_fits(checkpoint, data, arguments.old_limit):
            old = measure(checkpoint, data, extra, old=True)
        new_text = f"{new['seconds']:.1f}, {new['peak_gib']:.2f}, {new.get('solver')} ({new.get('gram', float('nan')):.2f}, {new.get('qp', float('nan')):.2f})" if new["code"] == 0 else f"failed: {new['stderr'].strip()[:80]}"
        old_text = "not run (memory)" if old is None else (f"{old['seconds']:.1f}, {old['peak_gib']:.2f}" if old["code"] == 0 else f"failed: {old['stderr'].strip()[:60]}")
        ratio = f"{old['seconds'] / new['seconds']:.1f}×" if old and old["code"] == 0 and new["code"] == 0 else "–"
        epsilons = f"{new.get('epsilon', float('nan')):.6g} / {old.get('epsilon', float('nan')):.6g}" if old and old["code"] == 0 else f"{new.get('epsilon', float('nan')):.6g}"
        print(f"| {name} | {new.get('n_candidates', '?')} | {new_text} | {old_text} | {ratio} | {epsilons} |", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
