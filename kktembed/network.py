"""A loaded network: adapter + config + float64 parameters θ, with the functional forward Φ(θ; x)."""

from __future__ import annotations

import math
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
        """‖θ‖₂ over all parameters (``safe_norm`` when the squares overflow or underflow float64)."""
        params = params if params is not None else self.params
        norm = float(torch.sqrt(sum((t * t).sum() for t in params.values())))
        if math.isfinite(norm) and norm > 0:
            return norm
        return safe_norm(params)

    @property
    def unit_roundoff(self) -> float:
        """u of the dtype θ was stored in (float64: 2⁻⁵³): θ itself is only known to a relative u."""
        return self.load_report.unit_roundoff if self.load_report is not None else FLOAT64_UNIT_ROUNDOFF

    def with_params(self, params: dict[str, torch.Tensor]) -> "Network":
        """The same architecture with other parameters (computed in float64: no storage report)."""
        return Network(self.adapter, self.config, params, self.path, self.metadata)


def safe_norm(params: dict[str, torch.Tensor]) -> float:
    """‖θ‖₂ without overflow or underflow of the squares: s·‖θ/s‖ with s = max|θ_i|."""
    largest = max((float(value.abs().max()) for value in params.values() if value.numel()), default=0.0)
    if largest == 0.0:
        return 0.0
    return largest * float(torch.sqrt(sum(((value / largest) ** 2).sum() for value in params.values())))


FORWARD_FACTOR = 3  # activations kept for the backward pass, their gradients (or a jvp's tangents)
FLOAT64_BYTES = 8


def forward_memory_bytes(adapter: Adapter, config: dict[str, Any], n_samples: int) -> int | None:
    """Estimated memory of a forward and backward pass over ``n_samples`` inputs (None: unknown)."""
    elements = adapter.activation_elements(config)
    return None if elements is None else FORWARD_FACTOR * FLOAT64_BYTES * n_samples * elements


def ensure_forward_fits(adapter: Adapter, config: dict[str, Any], n_samples: int, what: str) -> None:
    """Refuse (UsageError with the estimate and the memory limit) a pass over ``n_samples`` inputs
    that would not fit, before any of it is allocated."""
    from kktembed.resources import ensure_fits

    needed = forward_memory_bytes(adapter, config, n_samples)
    if needed is not None:
        ensure_fits(needed, what, hint="use fewer samples, or check the input shape and the layer sizes in the config")


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
