"""``kktembed plugins``: loaded plugins, their versions and what they register (no torch import)."""

from __future__ import annotations

from kktembed.cli.options import Json


def plugins(json_output: Json = False) -> None:
    """List plugins (built-in and installed), their versions, and the adapters, split strategies and
    data sets each registers. KKTEMBED_LOAD_PLUGINS=name1,name2 limits which installed plugins load
    (empty: none).

    Examples:

      kktembed plugins

      kktembed plugins --json
    """
    from kktembed.plugins import plugin_infos
    from kktembed.report import Output

    Output(json_output).plugins(plugin_infos())
