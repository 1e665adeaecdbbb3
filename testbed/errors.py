"""The project's own exception types. The CLI turns each into one message and exit code 1."""

import errno


class TestbedError(Exception):
    """Base class: an error a user can fix, reported as one line without a traceback."""

    __test__ = False  # not a pytest test class despite the name


class ConfigError(TestbedError):
    """The configuration is malformed, has an unknown key, a wrong type or a bad value."""


class PluginError(TestbedError):
    """A plugin failed to load, registered something invalid, or clashes with another plugin."""


class ScaffoldError(TestbedError):
    """A plugin distribution cannot be generated (``testbed new``): a bad name, or a target directory
    that exists already (it is never overwritten)."""


class ResultsError(TestbedError):
    """A results file cannot be read, or is not what testbed writes (a field missing or of the
    wrong type, a name pointing outside its directory)."""


class BatchError(TestbedError):
    """A task returned prompts the model cannot take: not a Batch, or x or y of the wrong shape, dtype
    or device."""


class DirectoryInUseError(TestbedError):
    """Another process is writing into the same log directory (it holds the directory's lock)."""


class StorageError(TestbedError, OSError):
    """Writing to the log directory failed: disk full, over quota, read-only, a file too large or an
    I/O error. The experiment stops; what was finished stays. It is an OSError too, so code that
    handles a failed write keeps handling it."""

    @classmethod
    def writing(cls, path: object, exc: OSError) -> "StorageError":
        """The error for ``exc``, raised while writing ``path``."""
        if isinstance(exc, StorageError):  # already says what could not be written
            return exc
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return cls(f"disk full while writing {path}: {reason}")
        return cls(f"cannot write {path}: {reason}")
