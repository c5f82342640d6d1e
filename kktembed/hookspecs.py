"""Every hook kktembed calls. These docstrings are the reference for plugin authors.

A plugin is a module (or object) with functions decorated by ``kktembed.hookimpl`` and named like
the specs below. Built-in adapters, strategies and data sets register through these same hooks.
Third-party packages expose their plugin module in the ``kktembed`` entry-point group::

    [project.entry-points.kktembed]
    myplugin = "myplugin.plugin"

Hook specs only ever gain arguments; pluggy lets an implementation accept any subset of them.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("kktembed")


@hookspec
def kktembed_register_adapters(register):
    """Contribute architecture adapters.

    Called once when the adapter registry is built (on the first command that needs adapters).
    ``register(adapter)`` takes an *instance* of a subclass of ``kktembed.adapters.base.Adapter``;
    its ``name`` must be unique across plugins (a duplicate is skipped with a warning). Return nothing.
    """


@hookspec(firstresult=True)
def kktembed_detect_adapter(tensor_shapes, hints):
    """Claim a plain checkpoint (one without ``kktembed.adapter`` metadata).

    Called for every plain checkpoint that is loaded, in plugin order, until one implementation
    returns a non-None value. ``tensor_shapes`` maps each tensor name of the state_dict to its shape
    (a tuple of ints); ``hints`` is a dict with the user's options: ``activation`` (e.g. ``"relu"``,
    ``"leaky_relu:0.01"``), ``arch_config`` (dict from ``--arch-config``, may be empty) and
    ``input_shape`` (tuple from the data, or None).

    Return ``(adapter_name, config)`` with a JSON-serialisable config dict that the adapter's
    ``build`` accepts, or None when the checkpoint is not yours. Raise
    ``kktembed.errors.ArchitectureError`` when the keys are yours but the network cannot be homogeneous
    (e.g. a bias after the first layer), naming the offending tensor.
    """


@hookspec
def kktembed_register_split_strategies(register):
    """Contribute neuron/channel split strategies (MATH.md §4).

    ``register(strategy)`` takes an instance of a subclass of
    ``kktembed.strategies.base.SplitStrategy`` with a unique ``name``. Strategies act on the
    adapter's unit description only, so they work for every architecture. Return nothing.
    """


@hookspec
def kktembed_register_datasets(register):
    """Contribute named data sets, used as ``--dataset NAME`` or ``--dataset NAME:ARGS``.

    ``register(name, loader, description)``: ``loader(args: str | None)`` returns ``(x, y)`` as
    float64 / int64 torch tensors (binary labels ±1, multi-class labels 0..C-1) and raises
    ``kktembed.errors.DataError`` for bad ``args``. Loaders must not download anything.
    Return nothing.
    """
