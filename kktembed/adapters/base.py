"""The adapter interface: how kktembed sees one family of homogeneous networks.

An adapter turns a JSON config into a float64 ``torch.nn.Module`` whose ``state_dict`` keys are the
checkpoint's tensor names, declares the homogeneity degree L (MATH.md §1), and describes the
network's **units**: for each hidden layer, which parameter slices belong to unit j. Splitting
(MATH.md §4: rows/filters and first-layer bias entries scaled by c_i on the way in, columns /
input-channel slices / flatten blocks scaled by c_i on the way out), the embedding map T and the
conformance checks work through that description alone.

Required: ``name``, ``build``, ``degree``, ``units``, ``widen``. The rest has defaults built on them;
``validate_config`` (a schema check of configs read from metadata) is recommended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kktembed.errors import ArchitectureError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class UnitSlice:
    """Unit j of a layer owns ``param[..., j*block:(j+1)*block, ...]`` along ``axis``.

    ``block`` is 1 for neurons and channels, H·W for the columns a channel owns after a flatten.
    """

    param: str
    axis: int
    block: int = 1


@dataclass(frozen=True)
class UnitLayer:
    """One splittable hidden layer with ``width`` units.

    ``incoming``: slices that produce the unit (weight rows or conv filters, first-layer bias
    entries); ``outgoing``: slices that consume it (next layer's columns or input channels).
    A split of unit j scales all of them by c_i (MATH.md §4, Def. 4.6 / Def. 4.10).
    """

    name: str
    width: int
    incoming: tuple[UnitSlice, ...]
    outgoing: tuple[UnitSlice, ...]

    @property
    def slices(self) -> tuple[UnitSlice, ...]:
        return self.incoming + self.outgoing


class Adapter:
    """Base class for architecture adapters. Subclass it and register an instance."""

    #: unique name, stored in checkpoints as ``kktembed.adapter``
    name: str = ""
    #: one line for ``kktembed plugins`` and ``inspect``
    description: str = ""

    def build(self, config: dict[str, Any]) -> "torch.nn.Module":
        """Return the float64 module for ``config``; its state_dict keys are the checkpoint's."""
        raise NotImplementedError

    def degree(self, config: dict[str, Any]) -> int:
        """The homogeneity degree L: Φ(cθ; x) = c^L Φ(θ; x) for c > 0 (MATH.md §1)."""
        raise NotImplementedError

    def units(self, config: dict[str, Any]) -> list[UnitLayer]:
        """The splittable hidden layers and the parameter slices of their units."""
        raise NotImplementedError

    def widen(self, config: dict[str, Any], layer: str, width: int) -> dict[str, Any]:
        """Return a new config in which hidden layer ``layer`` has ``width`` units."""
        raise NotImplementedError

    # -- capabilities with a default -------------------------------------------------------

    def validate_config(self, config: dict[str, Any]) -> None:
        """Raise ArchitectureError naming the field when ``config`` (read from untrusted checkpoint
        metadata) is malformed: wrong types, missing keys, sizes out of range. Called before
        anything is built; the default accepts everything."""

    def activation_degree(self, config: dict[str, Any], layer: str) -> int:
        """k with σ(cz) = c^k σ(z) for c ≥ 0, for the units of hidden layer ``layer``. ReLU, leaky
        ReLU and identity have k = 1 (MATH.md §4); a squared ReLU has k = 2. Split strategies use it:
        the isometric split preserves the output only when k = 1."""
        return 1

    # -- helpers built on the required methods -------------------------------------------

    def layers(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """Human-readable layer table for ``inspect``: dicts with at least ``name`` and ``kind``,
        in network order (modules built by ``kktembed.adapters.layers.keyed_sequential`` know it)."""
        module = self.build_on_meta(config)
        children = module.ordered_children() if hasattr(module, "ordered_children") else module.named_children()
        rows = []
        for name, child in children:
            n_params = sum(p.numel() for p in child.parameters())
            rows.append({"name": name, "kind": type(child).__name__, "parameters": n_params})
        return rows

    def input_shape(self, config: dict[str, Any]) -> tuple[int, ...]:
        """Shape of one input sample: ``config["input_shape"]``, else the first Linear's in_features."""
        if "input_shape" in config:
            return tuple(config["input_shape"])
        from torch import nn

        first = next(m for m in self.build_on_meta(config).modules() if isinstance(m, nn.Linear))
        return (first.in_features,)

    def activation_elements(self, config: dict[str, Any]) -> int | None:
        """Entries that one input sample creates in a forward pass: the input and the output of every
        leaf module, found by a forward pass on torch's meta device (shapes only, no memory), so that
        the memory of a pass over n samples is known before it is made. None when the module cannot
        run on the meta device (a plugin may override this method with its own count)."""
        import torch

        try:
            module = self.build_on_meta(config)
            sample = torch.empty((1, *self.input_shape(config)), device="meta", dtype=torch.float64)
        except Exception:  # the estimate is a safeguard; a module that cannot be built is reported elsewhere
            return None
        counts: list[int] = []

        def count(_module, _inputs, output) -> None:
            counts.append(output.numel() if isinstance(output, torch.Tensor) else 0)

        hooks = [child.register_forward_hook(count) for child in module.modules() if next(child.children(), None) is None]
        try:
            with torch.no_grad():
                module(sample)
        except Exception:  # data-dependent operations (.item(), nonzero, …) have no meta kernel
            return None
        finally:
            for hook in hooks:
                hook.remove()
        return sample.numel() + sum(counts)

    def build_on_meta(self, config: dict[str, Any]) -> "torch.nn.Module":
        """``build(config)`` on torch's meta device: shapes without allocating any memory, so that a
        config is checked against a checkpoint before anything of its size exists."""
        import torch

        with torch.device("meta"):
            return self.build(config)

    def parameter_shapes(self, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {key: tuple(t.shape) for key, t in self.build_on_meta(config).state_dict().items()}

    def check_shapes(self, config: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]]) -> None:
        """Raise ArchitectureError unless the checkpoint's tensors are exactly the module's. The config
        may be untrusted: one that cannot even be built on the meta device (sizes whose product
        overflows, combinations the schema does not rule out, a plugin's config of the wrong types)
        is an ArchitectureError too."""
        try:
            expected = self.parameter_shapes(config)
        except ArchitectureError:
            raise
        except Exception as exc:  # torch's and the plugin's own errors: the config describes no network
            raise ArchitectureError(f"the {self.name} config describes no network that can be built ({type(exc).__name__}: {exc})") from None
        missing = sorted(set(expected) - set(tensor_shapes))
        extra = sorted(set(tensor_shapes) - set(expected))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise ArchitectureError(
                f"checkpoint tensors do not match the {self.name} config: {'; '.join(parts)}",
                hint="a bias after the first layer or a normalization layer breaks homogeneity"
                if extra
                else None,
            )
        for key, shape in expected.items():
            if tuple(tensor_shapes[key]) != shape:
                raise ArchitectureError(
                    f"tensor {key} has shape {tuple(tensor_shapes[key])}, the {self.name} config "
                    f"expects {shape}"
                )
