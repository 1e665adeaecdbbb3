"""The plugin author's starting point (`testbed new`): a complete plugin distribution, generated from
templates shipped in this package (``templates/common`` and ``templates/<kind>``): pyproject.toml
with the ``testbed`` entry point, the plugin under ``src/``, tests that use only the public API and
``testbed.testing``, an example config and a README."""

from testbed.scaffold.generate import KINDS, PluginNames, create_plugin, plugin_names

__all__ = ["KINDS", "PluginNames", "create_plugin", "plugin_names"]
