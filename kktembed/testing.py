"""Conformance kit for adapter authors (usable from pytest).

    from kktembed.testing import assert_adapter_conforms

    def test_my_adapter():
        assert_adapter_conforms(MyAdapter(), EXAMPLE_CONFIG, detect=my_plugin.kktembed_detect_adapter)

It checks, on random parameters and inputs (float64):
  - build: a float64 module whose state_dict matches ``parameter_shapes``;
  - homogeneity: Φ(cθ) = c^L Φ(θ) and Euler's identity ⟨∇Φ, θ⟩ = LΦ for the declared L (MATH.md §1);
  - units: every slice names an existing tensor whose axis holds width × block entries;
  - split: for every hidden layer, splitting a unit with the strategy gives tensors of the widened
    config's shapes and preserves the output; for an isometric strategy also TᵀT = I,
    ⟨Tθ, Tφ⟩ = ⟨θ, φ⟩ and the gradient map ∇Φ̃(Tθ; x) = T∇Φ(θ; x) (MATH.md §4);
  - round trip: save_checkpoint / load_network give the same config and outputs;
  - detection: the plain state_dict (no metadata) is claimed by ``detect`` for this adapter with an
    equivalent network (skipped, and listed as skipped, when no ``detect`` is given).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kktembed.adapters.base import Adapter
from kktembed.embedding import Embedding, UnitSplit
from kktembed.homogeneity import HOMOGENEITY_TOL, homogeneity_report
from kktembed.network import Network, flatten_params
from kktembed.strategies.base import SplitStrategy

TOL = 1e-10


@dataclass
class ConformanceReport:
    adapter: str
    results: list[tuple[str, str, str]] = field(default_factory=list)  # (check, "ok"|"failed"|"skipped", message)

    def add(self, check: str, status: str, message: str = "") -> None:
        self.results.append((check, status, message))

    @property
    def failures(self) -> list[str]:
        return [f"{check}: {message}" for check, status, message in self.results if status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failures


def _random_params(adapter: Adapter, config: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = adapter.parameter_shapes(config)
    return {key: torch.randn(shape, generator=generator, dtype=torch.float64) for key, shape in shapes.items()}


def _gradients(network: Network, params: dict, x: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    leaves = {key: value.clone().requires_grad_(True) for key, value in params.items()}
    grads = torch.autograd.grad((network.forward(x, leaves) * weights).sum(), list(leaves.values()))
    return dict(zip(leaves, grads))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def _check_split(adapter, config, unit_layer, unit, strategy, params, other, x, report) -> None:
    shares = [0.3, 0.7]
    incoming, outgoing = strategy.scales(shares, adapter.activation_degree(config, unit_layer.name))
    split = UnitSplit(unit_layer.name, unit, unit_layer.width, tuple(shares), tuple(incoming), tuple(outgoing), strategy.name)
    embedding = Embedding(adapter, config, [split])
    label = f"split {unit_layer.name}[{unit}] ({strategy.name})"
    wide_params = embedding.apply(params)
    expected = adapter.parameter_shapes(embedding.wide_config)
    wrong = [key for key in expected if tuple(wide_params[key].shape) != expected[key]]
    if wrong:
        report.add(label, "failed", f"Tθ has shapes that the widened config does not expect: {', '.join(wrong)}")
        return
    narrow, wide = Network(adapter, config, params), Network(adapter, embedding.wide_config, wide_params)
    output_error = _relative(wide.forward(x), narrow.forward(x))
    if output_error > TOL:
        report.add(label, "failed", f"the output changes by {output_error:.2e} (relative); the unit description misses a slice, or the strategy does not fit the activation")
        return
    if not strategy.isometric:
        report.add(label, "ok", "shapes and output; isometry and the gradient map are not checked: the strategy is not isometric")
        return
    back = embedding.adjoint(wide_params)
    round_trip = max(_relative(back[key], params[key]) for key in params)
    mapped_other = embedding.apply(other)
    inner_error = abs(float(flatten_params(wide_params) @ flatten_params(mapped_other)) - float(flatten_params(params) @ flatten_params(other)))
    inner_error /= float(flatten_params(params).norm() * flatten_params(other).norm())
    if round_trip > TOL or inner_error > TOL:
        report.add(label, "failed", f"T is not an isometry: ‖TᵀTθ − θ‖ {round_trip:.2e}, inner-product error {inner_error:.2e}")
        return
    weights = torch.randn(narrow.output_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    mapped = embedding.apply(_gradients(narrow, params, x, weights))
    wide_gradient = _gradients(wide, wide_params, x, weights)
    gradient_error = max(_relative(wide_gradient[key], mapped[key]) for key in mapped if mapped[key].abs().max() > 0)
    if gradient_error > 1e-8:
        report.add(label, "failed", f"∇Φ̃(Tθ) ≠ T∇Φ(θ) (relative error {gradient_error:.2e})")
        return
    report.add(label, "ok")


def adapter_report(
    adapter: Adapter,
    config: dict[str, Any],
    strategy: "str | SplitStrategy" = "isometric",
    detect: Callable[[dict, dict], Any] | None = None,
    detect_hints: dict | None = None,
    seed: int = 0,
) -> ConformanceReport:
    """Run every check of the kit; never raises for a failing check (see ``assert_adapter_conforms``)."""
    from kktembed.checkpoint import ADAPTER_KEY, CONFIG_KEY, read_checkpoint, save_checkpoint
    from kktembed.loading import load_network
    from kktembed.plugins import adapters, split_strategies

    report = ConformanceReport(adapter.name)
    generator = torch.Generator().manual_seed(seed)
    try:
        module = adapter.build(config)
        shapes = adapter.parameter_shapes(config)
        dtypes = {value.dtype for value in module.state_dict().values()}
        if dtypes - {torch.float64}:
            report.add("build", "failed", f"parameters must be float64, got {sorted(map(str, dtypes))}")
        else:
            report.add("build", "ok")
    except Exception as exc:
        report.add("build", "failed", f"{type(exc).__name__}: {exc}")
        return report
    params, other = _random_params(adapter, config, generator), _random_params(adapter, config, generator)
    x = torch.randn((16, *adapter.input_shape(config)), generator=generator, dtype=torch.float64)
    network = Network(adapter, config, params)
    homogeneity = homogeneity_report(network, x)
    if homogeneity.error > HOMOGENEITY_TOL:
        estimate = f"; Φ(2θ)/Φ(θ) suggests degree {homogeneity.estimated_degree:.3g}" if homogeneity.estimated_degree else ""
        report.add(
            "homogeneity",
            "failed",
            f"not homogeneous of the declared degree L={homogeneity.degree}: scaling error {homogeneity.scaling_error:.2e}, "
            f"Euler error {homogeneity.euler_error:.2e}{estimate}",
        )
    else:
        report.add("homogeneity", "ok")
    unit_layers = adapter.units(config)
    problems = []
    for unit_layer in unit_layers:
        if unit_layer.width < 1 or not unit_layer.incoming or not unit_layer.outgoing:
            problems.append(f"layer {unit_layer.name}: needs width ≥ 1 and incoming and outgoing slices")
        for unit_slice in unit_layer.slices:
            if unit_slice.param not in shapes:
                problems.append(f"layer {unit_layer.name}: slice names unknown tensor {unit_slice.param}")
            elif shapes[unit_slice.param][unit_slice.axis] != unit_layer.width * unit_slice.block:
                problems.append(
                    f"layer {unit_layer.name}: {unit_slice.param} has {shapes[unit_slice.param][unit_slice.axis]} entries on axis "
                    f"{unit_slice.axis}, expected width {unit_layer.width} × block {unit_slice.block}"
                )
    report.add("units", "failed" if problems else "ok", "; ".join(problems))
    if not problems:
        split_strategy = split_strategies()[strategy] if isinstance(strategy, str) else strategy
        for unit_layer in unit_layers:
            for unit in sorted({0, unit_layer.width - 1}):
                try:
                    _check_split(adapter, config, unit_layer, unit, split_strategy, params, other, x, report)
                except Exception as exc:
                    report.add(f"split {unit_layer.name}[{unit}]", "failed", f"{type(exc).__name__}: {exc}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.safetensors"
        try:
            save_checkpoint(path, network)
            tensors, metadata = read_checkpoint(path)  # the registry is bypassed: the adapter may not be installed yet
            loaded = load_network(path) if metadata[ADAPTER_KEY] in adapters() else Network(
                adapter, json.loads(metadata[CONFIG_KEY]), {key: value.to(torch.float64) for key, value in tensors.items()}
            )
            same = metadata[ADAPTER_KEY] == adapter.name and loaded.config == config and torch.equal(loaded.forward(x), network.forward(x))
            report.add("round trip", "ok" if same else "failed", "" if same else "config or outputs differ after save/load")
        except Exception as exc:
            report.add("round trip", "failed", f"{type(exc).__name__}: {exc}")
        if detect is None:
            report.add("detection", "skipped", "no detect function given")
        else:
            detected = detect({key: tuple(value.shape) for key, value in params.items()}, dict(detect_hints or {}))
            if detected is None or detected[0] != adapter.name:
                report.add("detection", "failed", f"the plain state_dict was not claimed for {adapter.name!r} (got {detected!r})")
            else:
                rebuilt = Network(adapter, detected[1], params)
                equal = torch.allclose(rebuilt.forward(x), network.forward(x), rtol=1e-13, atol=0)
                report.add("detection", "ok" if equal else "failed", "" if equal else "the detected config computes a different function")
    return report


def assert_adapter_conforms(adapter: Adapter, config: dict[str, Any], **options) -> ConformanceReport:
    """Run the kit and raise AssertionError listing every failed check."""
    report = adapter_report(adapter, config, **options)
    if not report.ok:
        raise AssertionError(f"adapter {adapter.name!r} does not conform:\n  " + "\n  ".join(report.failures))
    return report
