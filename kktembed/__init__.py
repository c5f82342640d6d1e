"""kktembed: KKT analysis and isometric embeddings of homogeneous neural network checkpoints.

Public API (heavy dependencies are imported lazily by the modules that need them)::

    from kktembed import hookimpl                    # marker for plugin hook implementations
    from kktembed.adapters.base import Adapter, UnitLayer, UnitSlice
    from kktembed.checkpoint import load_network, save_checkpoint
    from kktembed.kkt.analysis import check_network
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("kktembed")

__all__ = ["__version__", "hookimpl"]
