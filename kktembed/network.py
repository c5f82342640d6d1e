"""A loaded network: adapter + config + float64 parameters θ, with the functional forward Φ(θ; x)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from kktembed.adapters.base import Adapter

FLOAT64_UNIT_ROUNDOFF = 2.0**-53


@dataclass
class Network:
    """θ with what interprets it. ``load_report`` (a ``kktembed.loading.LoadReport``) says where θ came
    from and in which precision it was stored; networks made in memory have none (float64)."""

    adapter: Adapter
    config: dict[str, Any]
    params: dict[str, torch.Tensor]
    path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    load_report: Any = None

    @cached_property
    def module(self) -> torch.nn.Module:
        """The float64 module (its own parameters are never used: see ``forward``)."""
        return self.adapter.build(self.config).to(torch.float64).eval()

    @property
    def degree(self) -> int:
        """Declared homogeneity degree L (MATH.md §1)."""
        return self.adapter.degree(self.config)

    @property
    def n_parameters(self) -> int:
        return sum(t.numel() for t in self.params.values())

    @cached_property
    def output_dim(self) -> int:
        return int(self.forward(self.example_input()).shape[-1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.adapter.input_shape(self.config))

    def example_input(self) -> torch.Tensor:
        """One zero-filled input, for shape inference."""
        return torch.zeros((1, *self.input_shape), dtype=torch.float64)

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Φ(θ; x) as an (n, C) tensor, with θ = ``params`` (default: the checkpoint's)."""
        output = torch.func.functional_call(self.module, params if params is not None else self.params, (x,))
        return output.reshape(output.shape[0], -1)

    def norm(self, params: dict[str, torch.Tensor] | None = None) -> float:
        """‖θ‖₂ over all parameters."""
        params = params if params is not None else self.params
        return float(torch.sqrt(sum((t * t).sum() for t in params.values())))

    @property
    def unit_roundoff(self) -> float:
        """u of the dtype θ was stored in (float64: 2⁻⁵³): θ itself is only known to a relative u."""
        return self.load_report.unit_roundoff if self.load_report is not None else FLOAT64_UNIT_ROUNDOFF

    def with_params(self, params: dict[str, torch.Tensor]) -> "Network":
        """The same architecture with other parameters (computed in float64: no storage report)."""
        return Network(self.adapter, self.config, params, self.path, self.metadata)


def flatten_params(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """θ as one vector, in the dict's key order."""
    return torch.cat([value.reshape(-1) for value in params.values()])


def unflatten_params(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``flatten_params`` with the keys and shapes of ``like``."""
    result, offset = {}, 0
    for key, value in like.items():
        result[key] = vector[offset : offset + value.numel()].reshape(value.shape)
        offset += value.numel()
    return result
