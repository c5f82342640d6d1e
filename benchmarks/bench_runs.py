"""Start-up amortisation of `kktembed check` over a run (run by hand; not part of the tests).

Ten demo-sized checkpoints (the bundled 64-32-1 MLP on digits 3 vs 8, each perturbed so that the
files differ) are checked (a) one process per checkpoint, as a shell loop would, and (b) in one
call. The target: (b) < 1.5 × (one call's start-up + 10 × one check's compute), where the start-up
is a single-checkpoint call's wall time minus that check's in-process compute time.

    python benchmarks/bench_runs.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "mlp_gd_digits38.safetensors"
DATA = ROOT / "fixtures" / "digits38.safetensors"
KKTEMBED = [sys.executable, "-m", "kktembed"]


def make_run(folder: Path, n: int) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    from kktembed.checkpoint import read_safetensors

    tensors, metadata = read_safetensors(FIXTURE)
    paths = []
    for step in range(n):
        generator = torch.Generator().manual_seed(step)
        perturbed = {key: value * (1 + 1e-3 * torch.randn(value.shape, generator=generator, dtype=value.dtype)) for key, value in tensors.items()}
        path = folder / f"ckpt_{step:03d}.safetensors"
        save_file(perturbed, path, metadata={**metadata, "kktembed.data": str(DATA)})
        paths.append(path)
    return paths


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def compute_seconds(path: Path) -> float:
    """One check in a warm process (imports done, data read): the part that depends on θ."""
    import kktembed

    kktembed.check(path, data=DATA, profile=False)  # warm-up
    started = time.perf_counter()
    kktembed.check(path, data=DATA, profile=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=10)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = make_run(Path(folder), arguments.checkpoints)
        options = ["--data", str(DATA), "--no-profile", "--json"]
        single = statistics.median(wall([*KKTEMBED, "check", str(paths[0]), *options]) for _ in range(arguments.repeat))
        compute = statistics.median(compute_seconds(paths[0]) for _ in range(arguments.repeat))
        loop = statistics.median(sum(wall([*KKTEMBED, "check", str(path), *options]) for path in paths) for _ in range(arguments.repeat))
        one_call = statistics.median(wall([*KKTEMBED, "check", folder, *options]) for _ in range(arguments.repeat))
    startup = single - compute
    bound = 1.5 * (startup + arguments.checkpoints * compute)
    n = arguments.checkpoints
    print(f"| quantity | seconds (median of {arguments.repeat}) |")
    print("|---|---|")
    print(f"| one call, one checkpoint (wall) | {single:.2f} |")
    print(f"| one check's compute in a warm process | {compute:.3f} |")
    print(f"| start-up of one call (difference) | {startup:.2f} |")
    print(f"| {n} checkpoints, one process each (shell loop) | {loop:.2f} |")
    print(f"| {n} checkpoints, one call | {one_call:.2f} |")
    print(f"| target 1.5 × (start-up + {n} × compute) | {bound:.2f} |")
    print(f"\none call / target = {one_call / bound:.2f} (must be < 1); shell loop / one call = {loop / one_call:.1f}×")


if __name__ == "__main__":
    main()
