"""Built-in named data sets, registered through ``kktembed_register_datasets``.

- ``digits:A,B``: scikit-learn's 8×8 digits (ships offline), classes A (label +1) and B (label −1),
  pixels scaled to [0, 1] by /16, x of shape n × 64. ``digits`` or ``digits:A,B,C,…`` (three or more
  classes): multi-class, labels re-indexed 0..C−1 in the order given.
- ``digits-images:…``: the same with x of shape n × 1 × 8 × 8, for CNNs.
- ``gaussians[:SEED]``: the paper's 2-D set (MATH.md §5): 100 points, 50 around (2, −2) with label
  +1 and 50 around (−2, 2) with label −1, std 0.8, default seed 0. ``gaussians-overlap[:SEED]``:
  centres (1, −1) / (−1, 1), not linearly separable.
- ``gaussian-images[:SEED]``: 100 images 1 × 5 × 5 for the CNN experiment: 50 with every pixel
  around +1 (label +1) and 50 around −1 (label −1), std 0.8. MATH.md does not give the paper's
  exact image data; this is kktembed's stand-in with the same shape and noise level.
"""

from __future__ import annotations

from kktembed import hookimpl
from kktembed.errors import DataError


def _digit_classes(args: str | None) -> list[int]:
    if not args:
        return list(range(10))
    try:
        classes = [int(part) for part in args.split(",")]
    except ValueError:
        raise DataError(f"invalid digits classes {args!r}", hint="use e.g. digits:3,8 or digits:0,1,2")
    if len(set(classes)) != len(classes) or not all(0 <= c <= 9 for c in classes) or len(classes) < 2:
        raise DataError(f"invalid digits classes {args!r}", hint="give two or more distinct digits 0..9")
    return classes


def load_digits(args: str | None, images: bool = False):
    """The 8×8 digits restricted to ``args`` classes; binary ±1 for two classes."""
    import torch
    from sklearn.datasets import load_digits as sklearn_digits

    classes = _digit_classes(args)
    bunch = sklearn_digits()
    x = torch.tensor(bunch.data, dtype=torch.float64) / 16.0
    target = torch.tensor(bunch.target, dtype=torch.int64)
    keep = torch.isin(target, torch.tensor(classes))
    x, target = x[keep], target[keep]
    if len(classes) == 2:
        y = torch.where(target == classes[0], 1, -1).to(torch.int64)
    else:
        lookup = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([lookup[int(t)] for t in target], dtype=torch.int64)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return x, y


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def parse_seed(args: str | None, name: str) -> int:
    """The seed in ``NAME:SEED`` (default 0): an integer torch can seed with."""
    try:
        seed = int(args) if args else 0
    except ValueError:
        seed = None
    if seed is None or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise DataError(f"invalid seed {args!r}", hint=f"use an integer from 0 to 2**64 - 1, e.g. {name}:0")
    return seed


def gaussian_clusters(args: str | None, centre: float):
    """Two 2-D Gaussian clusters of 50 points, centres ±(centre, −centre), std 0.8 (MATH.md §5)."""
    import torch

    generator = torch.Generator().manual_seed(parse_seed(args, "gaussians"))
    centres = torch.tensor([[centre, -centre], [-centre, centre]], dtype=torch.float64)
    noise = 0.8 * torch.randn(100, 2, generator=generator, dtype=torch.float64)
    x = torch.cat([centres[0] + noise[:50], centres[1] + noise[50:]])
    y = torch.cat([torch.ones(50, dtype=torch.int64), -torch.ones(50, dtype=torch.int64)])
    return x, y


def gaussian_images(args: str | None):
    """100 images 1×5×5: pixels around ±1 by class, std 0.8 (the CNN experiment's stand-in)."""
    import torch

    generator = torch.Generator().manual_seed(parse_seed(args, "gaussian-images"))
    y = torch.cat([torch.ones(50, dtype=torch.int64), -torch.ones(50, dtype=torch.int64)])
    x = y.to(torch.float64).reshape(-1, 1, 1, 1) + 0.8 * torch.randn(100, 1, 5, 5, generator=generator, dtype=torch.float64)
    return x, y


@hookimpl
def kktembed_register_datasets(register):
    register("digits", load_digits, "scikit-learn 8x8 digits; digits:A,B binary (+1/-1), 3+ classes multi-class")
    register(
        "digits-images",
        lambda args: load_digits(args, images=True),
        "digits as 1x8x8 images for CNNs (same class syntax)",
    )
    register(
        "gaussians",
        lambda args: gaussian_clusters(args, 2.0),
        "paper's separable 2-D set: 100 points, centres (2,-2)/(-2,2), std 0.8; gaussians:SEED",
    )
    register(
        "gaussians-overlap",
        lambda args: gaussian_clusters(args, 1.0),
        "non-separable variant, centres (1,-1)/(-1,1); gaussians-overlap:SEED",
    )
    register("gaussian-images", gaussian_images, "100 images 1x5x5, pixels around +1/-1 by class, std 0.8; gaussian-images:SEED")
