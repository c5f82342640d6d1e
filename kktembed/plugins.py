"""The plugin manager and the registries built from its hooks.

Built-in plugins (kktembed.adapters.builtin, kktembed.strategies.builtin, kktembed.datasets) are
registered exactly like third-party ones. Entry points in the ``kktembed`` group are loaded unless
KKTEMBED_LOAD_PLUGINS restricts them: unset loads all, an empty string loads none, and a
comma-separated list loads only those entry-point names. A plugin that fails to load is reported
as a warning naming it and skipped.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata

import pluggy

from kktembed import hookspecs

BUILTIN_PLUGINS = (
    "kktembed.adapters.builtin",
    "kktembed.strategies.builtin",
    "kktembed.datasets",
)
ENTRY_POINT_GROUP = "kktembed"


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded or registered something twice."""


@dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    adapters: list[str] = field(default_factory=list)
    strategies: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)  # "kind:name" -> one line


def _allowed_entry_points() -> set[str] | None:
    value = os.environ.get("KKTEMBED_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _kktembed_version() -> str:
    from kktembed import __version__

    return __version__


_entry_point_versions: dict[str, str] = {}


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """Build the manager: hook specs, built-ins, then the allowed entry-point plugins."""
    manager = pluggy.PluginManager("kktembed")
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    allowed = _allowed_entry_points()
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and entry_point.name not in allowed:
            continue
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
            _entry_point_versions[entry_point.name] = entry_point.dist.version if entry_point.dist else "unknown"
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not break every command
            warnings.warn(
                f"plugin {entry_point.name!r} ({entry_point.value}) failed to load and was skipped: "
                f"{type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=2,
            )
    _drop_unknown_hooks(manager)
    return manager


def _drop_unknown_hooks(manager: pluggy.PluginManager) -> None:
    """pluggy's ``check_pending``: an implementation of a hook that has no spec (a misspelled name)
    is reported as a warning and its plugin skipped."""
    while True:
        try:
            manager.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = manager.get_name(exc.plugin)
            warnings.warn(f"plugin {name!r} was skipped: {exc}", PluginWarning, stacklevel=3)
            manager.unregister(exc.plugin)
            _entry_point_versions.pop(name, None)


def _plugin_version(manager: pluggy.PluginManager, plugin) -> tuple[str, bool]:
    name = manager.get_name(plugin)
    if name in BUILTIN_PLUGINS:
        return _kktembed_version(), True
    return _entry_point_versions.get(name, "unknown"), False


def _collect(hook_name: str, kind: str) -> dict[str, list]:
    """Call a register-style hook for each plugin in turn, through pluggy and by keyword (so that
    hook specs can gain arguments); map plugin name -> registered items. One argument to
    ``register`` is stored as is, several as a tuple. A plugin that raises is skipped with a warning."""
    manager = get_plugin_manager()
    per_plugin: dict[str, list] = {}
    plugins = manager.get_plugins()
    for plugin in plugins:
        caller = manager.subset_hook_caller(hook_name, remove_plugins=[other for other in plugins if other is not plugin])
        if not caller.get_hookimpls():
            continue
        items: list = []

        def register(*args, _items=items):
            _items.append(args[0] if len(args) == 1 else args)

        try:
            caller(register=register)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            warnings.warn(
                f"plugin {manager.get_name(plugin)!r} raised while registering {kind}s and was skipped: {type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=2,
            )
            continue
        per_plugin[manager.get_name(plugin)] = items
    return per_plugin


def _unique(per_plugin: dict[str, list], kind: str, key) -> dict:
    registry: dict = {}
    # pluggy calls implementations last-registered first; register built-ins first so they win.
    for plugin_name in sorted(per_plugin, key=lambda n: (n not in BUILTIN_PLUGINS, n)):
        for item in per_plugin[plugin_name]:
            name = key(item)
            if name in registry:
                warnings.warn(
                    f"plugin {plugin_name!r} registers {kind} {name!r}, which is already registered; "
                    "the second registration is ignored",
                    PluginWarning,
                    stacklevel=2,
                )
                continue
            registry[name] = item
    return registry


@lru_cache(maxsize=1)
def _adapters_by_plugin() -> dict[str, list]:
    return _collect("kktembed_register_adapters", "adapter")


@lru_cache(maxsize=1)
def _strategies_by_plugin() -> dict[str, list]:
    return _collect("kktembed_register_split_strategies", "strategy")


@lru_cache(maxsize=1)
def _datasets_by_plugin() -> dict[str, list]:
    return _collect("kktembed_register_datasets", "dataset")


def adapters() -> dict:
    """Registered adapters by name."""
    return _unique(_adapters_by_plugin(), "adapter", lambda a: a.name)


def split_strategies() -> dict:
    """Registered split strategies by name."""
    return _unique(_strategies_by_plugin(), "split strategy", lambda s: s.name)


def datasets() -> dict[str, tuple]:
    """Registered data sets: name -> (name, loader, description)."""
    return _unique(_datasets_by_plugin(), "data set", lambda d: d[0])


def plugin_infos() -> list[PluginInfo]:
    """Every loaded plugin, its version and what it registers (for ``kktembed plugins``)."""
    manager = get_plugin_manager()
    adapter_map, strategy_map, dataset_map = (
        _adapters_by_plugin(),
        _strategies_by_plugin(),
        _datasets_by_plugin(),
    )
    adapters(), split_strategies(), datasets()  # warns about duplicate names, as every command would
    infos = []
    for plugin in manager.get_plugins():
        name = manager.get_name(plugin)
        version, builtin = _plugin_version(manager, plugin)
        infos.append(
            PluginInfo(
                name=name,
                version=version,
                builtin=builtin,
                adapters=[a.name for a in adapter_map.get(name, [])],
                strategies=[s.name for s in strategy_map.get(name, [])],
                datasets=[d[0] for d in dataset_map.get(name, [])],
                descriptions={
                    **{f"adapter:{a.name}": a.description for a in adapter_map.get(name, [])},
                    **{f"strategy:{s.name}": s.description for s in strategy_map.get(name, [])},
                    **{f"dataset:{d[0]}": d[2] for d in dataset_map.get(name, [])},
                },
            )
        )
    infos.sort(key=lambda info: (not info.builtin, info.name))
    return infos


def reset_plugin_manager() -> None:
    """Forget the cached manager and registries (tests, or after changing KKTEMBED_LOAD_PLUGINS)."""
    _entry_point_versions.clear()
    for cached in (get_plugin_manager, _adapters_by_plugin, _strategies_by_plugin, _datasets_by_plugin):
        cached.cache_clear()
