"""Registers the built-in adapters through the same hooks a third-party plugin uses."""

from kktembed import hookimpl
from kktembed.adapters.cnn import CNNAdapter, detect_cnn
from kktembed.adapters.mlp import MLPAdapter, detect_mlp


@hookimpl
def kktembed_register_adapters(register):
    register(MLPAdapter())
    register(CNNAdapter())


@hookimpl
def kktembed_detect_adapter(tensor_shapes, hints):
    """Claim plain Linear stacks (mlp) and Conv2d-then-Linear stacks (cnn), unless the user's spec
    names another adapter."""
    if hints.get("adapter") not in (None, "mlp", "cnn"):
        return None
    return detect_cnn(tensor_shapes, hints) or detect_mlp(tensor_shapes, hints)
