"""The one usage error every labkit magic raises."""

from IPython.core.error import UsageError as IPythonUsageError

from labkit.errors import ConfigError

RED, RESET = "\x1b[0;31m", "\x1b[0m"


class UsageError(ConfigError, IPythonUsageError):
    """Bad magic usage (unknown option, missing value).

    IPython prints its own UsageError as one stderr line and sends no `error` message,
    so nbval would pass the cell. This subclass is not IPython's exact type, so IPython
    reports it as an error and the cell fails under nbclient and nbval."""

    def _render_traceback_(self):
        return [f"{RED}UsageError{RESET}: {self}"]
