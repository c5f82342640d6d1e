"""Registers the built-in split strategies through the same hook a third-party plugin uses."""

from kktembed import hookimpl
from kktembed.strategies.isometric import IsometricSplit
from kktembed.strategies.net2net import Net2NetSplit


@hookimpl
def kktembed_register_split_strategies(register):
    register(IsometricSplit())
    register(Net2NetSplit())
