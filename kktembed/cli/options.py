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
ArchConfig = Annotated[
    Optional[Path],
    typer.Option(
        "--arch-config",
        help='JSON file with what weights cannot tell, e.g. {"stride": 1, "padding": 1, "pool": "avg:2", "input_shape": [1, 8, 8]}.',
        show_default=False,
    ),
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
