"""Options shared by several commands, as Annotated aliases (one spelling everywhere)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

Checkpoint = Annotated[Path, typer.Argument(help="Checkpoint (.safetensors): a state_dict, with or without kktembed metadata.", show_default=False)]
Data = Annotated[
    Optional[Path],
    typer.Option("--data", help="Data file (.safetensors with x and y); default: the checkpoint's kktembed.data.", show_default=False),
]
DatasetName = Annotated[
    Optional[str],
    typer.Option("--dataset", help="Named data set NAME[:ARGS], e.g. digits:3,8 (see `kktembed plugins`).", show_default=False),
]
Activation = Annotated[
    Optional[str],
    typer.Option(
        "--activation",
        help="Activation of a plain checkpoint: relu, leaky_relu:SLOPE or identity. Default: relu, or the stored one.",
        show_default=False,
    ),
]
Arch = Annotated[
    Optional[Path],
    typer.Option(
        "--arch",
        help="Architecture spec (JSON or TOML) for a plain checkpoint: layers (in order), activation, stride, padding, "
        'pool, input_shape, e.g. {"layers": ["conv1", "fc"], "padding": 1, "pool": "avg:2"}. See docs/checkpoints.md.',
        show_default=False,
    ),
]
ArchConfig = Annotated[
    Optional[Path],
    typer.Option("--arch-config", help="The older name of --arch (same file format).", show_default=False),
]
Layers = Annotated[
    Optional[str],
    typer.Option("--layers", help="Weight layers of a plain checkpoint in network order, e.g. fc1,fc2,fc3 (when names and shapes leave it open).", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]


class Norm(str, enum.Enum):
    l2 = "l2"
    l1 = "l1"
    linf = "linf"


class Loss(str, enum.Enum):
    exp = "exp"
    logistic = "logistic"


NormOption = Annotated[
    Norm,
    typer.Option(
        "--norm",
        help="Norm of the stationarity problem. l2: QP on the Gram matrix (fast). l1/linf: LPs that need the p × n_c gradient matrix (much slower, more memory).",
    ),
]
ActiveTol = Annotated[float, typer.Option("--active-tol", help="τ: candidate constraints are those with q_k(θ̂) ≤ 1 + τ.")]


class Optimizer(str, enum.Enum):
    gd = "gd"
    normalized = "normalized"


class Device(str, enum.Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class Solver(str, enum.Enum):
    auto = "auto"
    active_set = "active-set"
    clarabel = "clarabel"
    highs = "highs"


SolverOption = Annotated[
    Solver,
    typer.Option(
        "--solver",
        help="Solver of the multiplier problem. auto: the exact active-set method for l2 (no cvxpy; faster than Clarabel at every "
        "size measured) and HiGHS for l1/linf; clarabel: the l2 QP through cvxpy and Clarabel, with an active-set polish.",
    ),
]
DeviceOption = Annotated[Device, typer.Option("--device", help="Where the Gram matrix and gradients are computed, in float64: cpu, cuda, or auto.")]
