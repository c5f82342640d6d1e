"""Positively 1-homogeneous activations: σ(cz) = cσ(z) for c ≥ 0 (MATH.md §1, §4)."""

from __future__ import annotations

import math

from kktembed.errors import ArchitectureError

ACTIVATION_HELP = "relu, leaky_relu:SLOPE (e.g. leaky_relu:0.01) or identity"


def parse_activation(spec: str) -> tuple[str, float]:
    """Return (kind, slope) for ``relu`` / ``leaky_relu:SLOPE`` (a finite slope) / ``identity``."""
    if not isinstance(spec, str):
        raise ArchitectureError(f"activation must be a string like 'relu', got {spec!r}", hint=ACTIVATION_HELP)
    text = spec.strip().lower()
    if text == "relu":
        return "relu", 0.0
    if text == "identity":
        return "identity", 1.0
    if text.startswith("leaky_relu"):
        _, _, slope_text = text.partition(":")
        try:
            slope = float(slope_text) if slope_text else 0.01
        except ValueError:
            raise ArchitectureError(f"invalid leaky_relu slope {slope_text!r}", hint=ACTIVATION_HELP)
        if not math.isfinite(slope):
            raise ArchitectureError(f"leaky_relu slope must be a finite number, got {slope_text!r}", hint=ACTIVATION_HELP)
        return "leaky_relu", slope
    raise ArchitectureError(
        f"activation {spec!r} is not positively homogeneous or not supported",
        hint=f"use {ACTIVATION_HELP} (or install a plugin that provides it); tanh, sigmoid, GELU and softmax break homogeneity",
    )


def activation_module(spec: str):
    """The torch module for an activation spec."""
    from torch import nn

    kind, slope = parse_activation(spec)
    if kind == "relu":
        return nn.ReLU()
    if kind == "leaky_relu":
        return nn.LeakyReLU(slope)
    return nn.Identity()
