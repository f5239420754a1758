"""A setup step's failure, named, and how it crosses the error pipe to the helper.

Runs in the two processes a container's setup passes through before its command: the
supervisor (namespaces) and the container's first process (the recipe, runtime/inside/).
Both end a failure in `report_failure`: a JSON line on the close-on-exec error pipe,
which the helper reads (runtime/helper/zygote.py, `on_error_pipe`) and hands the client
in `exited`. EOF on that pipe with nothing written means the command was exec'd.
Shared because it is the format of that crossing, read on the other side.
"""

import errno
import json
import os


class SetupError(Exception):
    """A step of the recipe failed; carries which step, for the person reading the error."""

    def __init__(self, step, error):
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.errno = getattr(error, "errno", None)


def step(name):
    """Name a recipe step so that a failure says which one failed."""
    def wrap(function):
        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except SetupError:
                raise
            except OSError as error:
                raise SetupError(name, error) from None
        run.__name__ = function.__name__
        run.__doc__ = function.__doc__
        return run
    return wrap


def report_failure(error_fd, error, exit_code=None):
    """Tell the helper what went wrong (through the close-on-exec error pipe), then die.
    Exit codes as a shell and Docker give them: 127 no such command, 126 not executable,
    125 the runtime itself failed."""
    if exit_code is None:
        exit_code = 125
        if isinstance(error, SetupError) and error.step == "exec the command":
            exit_code = {errno.ENOENT: 127, errno.EACCES: 126, errno.ENOEXEC: 126}.get(error.errno, 126)
    if isinstance(error, SetupError):
        payload = {"step": error.step, "message": str(error), "errno": error.errno}
    else:
        payload = {"step": "setup", "message": f"{type(error).__name__}: {error}", "errno": getattr(error, "errno", None)}
    payload["exit_code"] = exit_code
    try:
        os.write(error_fd, json.dumps(payload).encode()[:4000])
    except OSError:
        pass
    os._exit(exit_code)
