"""kktembed: KKT analysis and isometric embeddings of homogeneous neural network checkpoints.

The library API (documented in docs/api.md); every ``kktembed`` command is one of these::

    import kktembed
    network = kktembed.load("model.safetensors")            # path, folder, nn.Module or state_dict
    result = kktembed.check(network, dataset="digits:3,8")  # or data="train.safetensors", or x=..., y=...
    result.verdict, result.relative_stationarity_residual, result.to_dict()
    kktembed.split(...), kktembed.embed(...), kktembed.trace(...), kktembed.reduce(...), kktembed.inspect(...),
    kktembed.convert(...)

Heavy dependencies (torch, cvxpy) load on first use, not on ``import kktembed``. For plugin
authors: ``kktembed.hookimpl``, ``kktembed.adapters.base`` (Adapter, UnitLayer, UnitSlice),
``kktembed.strategies.base.SplitStrategy`` and the conformance kit ``kktembed.testing``.
"""

import importlib

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("kktembed")

_LAZY = {
    "load": "kktembed.api",
    "inspect": "kktembed.api",
    "check": "kktembed.api",
    "split": "kktembed.api",
    "embed": "kktembed.api",
    "trace": "kktembed.api",
    "convert": "kktembed.api",
    "reduce": "kktembed.api",
    "ArchSpec": "kktembed.archspec",
    "Network": "kktembed.network",
    "Dataset": "kktembed.data",
    "CheckOptions": "kktembed.kkt.analysis",
    "CheckResult": "kktembed.kkt.result",
    "EmbedResult": "kktembed.comparison",
    "InspectResult": "kktembed.results",
    "SplitResult": "kktembed.results",
    "TraceReport": "kktembed.results",
    "ConvertResult": "kktembed.results",
    "ReduceReport": "kktembed.results",
    "SplitPlan": "kktembed.splitting",
    "KktembedError": "kktembed.errors",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kktembed' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
