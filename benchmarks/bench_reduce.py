"""Timing of ``reduce`` (run by hand, not part of the tests).

Setting: a random narrow ReLU MLP 64-1024-1024-1 whose every hidden unit is split into 4 copies with
random shares (one share 0 in every 8th unit), then the units of both hidden layers are permuted:
a plain MLP 64-4096-4096-1 (p = 16.9 M) with 1,024 groups per layer. Timed, each best of
``--repeat``: gathering and grouping the units of the first hidden layer alone, the wide network's
reduction at the default tolerance (all of it: sweeps, merges, ‖θ̃ − Tθ‖; no profile), the tolerance
profile over the ladder 1e-12 … 1e-1, matching (``embed``'s T without a record), and, as a simple
reference for the machine's speed, one product W₂ W₂ᵀ of the 4096×4096 layer (n² d flops, what a
pairwise comparison of the units would cost at least).

    flock /tmp/kktembed-heavy.lock python benchmarks/bench_reduce.py
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def wide_network(narrow_width: int, copies: int, seed: int = 0):
    import torch

    from kktembed.embedding import Embedding, UnitMap
    from kktembed.network import Network
    from kktembed.plugins import adapters

    adapter = adapters()["mlp"]
    config = {"widths": [64, narrow_width, narrow_width, 1], "activation": "relu", "first_layer_bias": False}
    generator = torch.Generator().manual_seed(seed)
    params = {key: torch.randn(shape, generator=generator, dtype=torch.float64) for key, shape in adapter.parameter_shapes(config).items()}
    narrow = Network(adapter, config, params)
    maps = []
    for unit_layer in adapter.units(config):
        shares = torch.rand((narrow_width, copies), generator=generator, dtype=torch.float64)
        shares[::8, 0] = 0.0
        shares /= shares.sum(dim=1, keepdim=True)
        order = torch.randperm(narrow_width * copies, generator=generator)
        source = torch.arange(narrow_width).repeat_interleave(copies)[order]
        factors = shares.reshape(-1).sqrt()[order]
        maps.append(UnitMap(unit_layer.name, narrow_width, tuple(source.tolist()), tuple(factors.tolist()), tuple(factors.tolist())))
    embedding = Embedding(adapter, config, layer_maps=tuple(maps))
    return narrow, Network(adapter, embedding.wide_config, embedding.apply(params))


def best_of(repeat: int, function):
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--narrow-width", type=int, default=1024)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch

    from kktembed.reduction import isometric_merge, match_embedding, reduce_network, tolerance_profile, unit_rows

    torch.set_num_threads(2)
    narrow, wide = wide_network(args.narrow_width, args.copies)
    widths = wide.config["widths"]
    print(f"MLP {'-'.join(map(str, widths))}: {wide.n_parameters:,} parameters, {args.narrow_width:,} groups of {args.copies} per hidden layer, units permuted")
    reduce_network(wide, profile=None)  # imports (scipy) and first-touch allocations
    weight = wide.params["2.weight"]
    reference, _ = best_of(args.repeat, lambda: weight @ weight.T)
    first_layer = wide.adapter.units(wide.config)[0]
    rows_seconds, (rows, incoming_columns) = best_of(args.repeat, lambda: unit_rows(wide.params, first_layer, first_layer.width))
    grouping_seconds, _ = best_of(args.repeat, lambda: isometric_merge(rows, incoming_columns, 1e-10))
    seconds, result = best_of(args.repeat, lambda: reduce_network(wide, profile=None))
    profile_seconds, profile = best_of(1, lambda: tolerance_profile(wide))
    match_seconds, embedding = best_of(1, lambda: match_embedding(narrow, wide))
    mapped = embedding.apply(narrow.params)
    match_error = math.sqrt(sum(float(((wide.params[key] - mapped[key]) ** 2).sum()) for key in mapped)) / wide.norm()
    table = [
        ("layer 0: gather the 4096 × 4160 unit rows", rows_seconds),
        ("layer 0: group its 4096 units (tol 1e-10)", grouping_seconds),
        ("reduce, default tol (1e-10), no profile", seconds),
        ("tolerance profile, 12 tolerances", profile_seconds),
        ("match NARROW to WIDE (embed without a record)", match_seconds),
        ("reference: W₂W₂ᵀ, 4096×4096 @ 4096×4096", reference),
    ]
    for label, value in table:
        print(f"  {label:<48} {value:8.3f} s   {value / reference:6.2f} × reference")
    print(f"  widths {result.to_dict()['widths_before']} → {result.to_dict()['widths_after']}, rounds {result.rounds}")
    print(f"  merge error ‖θ̃ − Tθ‖/‖θ̃‖ {result.merge_error:.2e}, max|Σc²−1| {result.coefficient_isometry_error:.2e}, isometric {result.isometric}")
    print(f"  matched T: ‖θ̃ − Tθ‖/‖θ̃‖ {match_error:.2e}, max|Σc²−1| {embedding.isometry_error:.2e}")
    print(f"  profile widths: {[(row['tol'], row['widths']['0'], row['widths']['2']) for row in profile]}")
    print(f"  peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
