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
    return detect_cnn(tensor_shapes, hints) or detect_mlp(tensor_shapes, hints)
