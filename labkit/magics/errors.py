"""The one usage error every labkit magic raises, and the argparse parser that raises it."""

import argparse

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


class HelpShown(Exception):
    """`-h`: argparse printed the help and wants to exit(0); the magic just returns."""


class MagicParser(argparse.ArgumentParser):
    """argparse exits the process on bad usage; in a kernel that must be an exception.
    Sub-verbs' parsers are of this class too (argparse makes them of the parent's class).
    No abbreviations, as on the command line: `--pid host` is not `--pids-limit host`."""

    def __init__(self, *args, **keywords):
        keywords.setdefault("allow_abbrev", False)
        super().__init__(*args, **keywords)

    def error(self, message):
        raise UsageError(f"{message}\n{self.format_usage().strip()}")

    def exit(self, status=0, message=None):
        if status:
            raise UsageError((message or "bad usage").strip())
        raise HelpShown


def fail_shortly(error):
    """Show a LabkitError as one line (what failed and why), not a trace through the magic."""
    error._render_traceback_ = lambda: [f"{RED}{type(error).__name__}{RESET}: {error}"]
    return error


def interrupted_shortly(interrupt):
    """The stop button, shown as one line: the cell's container (or exec'd process) was killed."""
    interrupt._render_traceback_ = lambda: [
        f"{RED}KeyboardInterrupt{RESET}: interrupted; labkit killed what the cell started"]
    return interrupt
