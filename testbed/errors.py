"""The project's own exception types. The CLI turns each into one message and exit code 1."""


class TestbedError(Exception):
    """Base class: an error a user can fix, reported as one line without a traceback."""

    __test__ = False  # not a pytest test class despite the name


class ConfigError(TestbedError):
    """The configuration is malformed, has an unknown key, a wrong type or a bad value."""


class PluginError(TestbedError):
    """A plugin failed to load, registered something invalid, or clashes with another plugin."""
