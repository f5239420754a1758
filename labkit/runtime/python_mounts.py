"""`python=True` (`--python`): run the Python that runs labkit inside any image.

An image like busybox has no Python. Rather than install one, the container gets this
interpreter's own files, read-only and at their host paths: the binary, its standard
library, and the directories of the shared libraries the binary and its extension modules
link (as the dynamic loader finds them: ldd). At the same paths the interpreter finds its
prefix and the loader its libraries without any configuration inside.

Runs in the caller, while a spec is validated (`ContainerSpec.validated`): it is part of
turning the spec's `python=True` into volumes, and so shared with spec.py.
"""

import functools
import os
import subprocess
import sys
import sysconfig

from labkit.errors import ConfigError

# A command starting with one of these runs the mounted interpreter.
PYTHON_NAMES = ("python", "python3")


def interpreter() -> str:
    return os.path.realpath(sys.executable)  # a venv's python is a symlink to this


@functools.lru_cache(maxsize=1)
def python_volumes() -> tuple:
    """("SRC:DST:ro", …): the interpreter, its standard library and its libraries' directories."""
    binary = interpreter()
    stdlib = sysconfig.get_path("stdlib")
    dynload = os.path.join(stdlib, "lib-dynload")
    linked = [binary] + ([os.path.join(dynload, n) for n in os.listdir(dynload) if n.endswith(".so")]
                         if os.path.isdir(dynload) else [])
    directories = {stdlib} | {os.path.dirname(path) for path in _ldd_paths(linked)}
    kept = []
    for directory in sorted(directories):
        if not any(directory.startswith(parent + "/") for parent in kept):
            kept.append(directory)
    return (f"{binary}:{binary}:ro",) + tuple(f"{d}:{d}:ro" for d in kept if os.path.isdir(d))


def with_python(volumes: list, command: list) -> tuple:
    """(volumes, command) of a spec with python=True: the interpreter's mounts added (once)
    and a leading `python`/`python3` replaced by the interpreter's path."""
    present = {_target(volume) for volume in volumes}
    added = [volume for volume in python_volumes() if _target(volume) not in present]
    if command and command[0] in PYTHON_NAMES:
        command = [interpreter(), *command[1:]]
    return list(volumes) + added, command


def _target(volume) -> str | None:
    """Where a Volume, or a "SRC:DST[:ro]" string, is mounted inside."""
    if hasattr(volume, "target"):
        return volume.target
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else None


def _ldd_paths(files) -> set:
    try:
        output = subprocess.run(["ldd", *files], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        raise ConfigError("--python needs ldd (package libc-bin) to find the interpreter's shared libraries") from None
    paths = set()
    for line in output.splitlines():
        for word in line.replace("=>", " ").split():
            if word.startswith("/") and not word.endswith(":"):
                paths.add(word)
    return paths
