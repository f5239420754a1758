"""The container runtime: ContainerSpec → Container → Result, and always back to nothing.

    from labkit.runtime import run
    result = run("echo hello from $(hostname)", memory="64m")

The code is laid out by the process each line runs in:

    client/       the caller (a Jupyter kernel, the `labkit` command): Container, Result,
                  the helper's client end, output streams, state read back, the sweep
    helper/       the helper process: one per caller, forks every container
    supervisor/   a container's supervisor: namespaces, fork of PID 1, its exit reported (or,
                  where the helper forks PID 1 itself, the first steps PID 1 takes alone)
    inside/       the container's first process, from fork to exec: the recipe

and what crosses between them is declared once, here at the top: spec.py (what the user
asks), plan.py (what the helper is sent), protocol.py (the messages), lifecycle.py,
container_dir.py (the directory on disk), step_failure.py (the error pipe).
tests/test_structure.py holds the rule: a process's code imports only its own package,
the shared modules and the package of the process it forks (client → helper →
supervisor → inside), never one above it.

Names are loaded lazily: the helper process imports `labkit.runtime.helper` and must
not pay for the client side (images, IPython-facing reprs) in memory or start-up time.
"""

import importlib

_EXPORTS = {
    "Container": "labkit.runtime.client.container", "get": "labkit.runtime.client.registry",
    "running_containers": "labkit.runtime.client.registry", "Result": "labkit.runtime.client.result",
    "ContainerSpec": "labkit.runtime.spec", "Volume": "labkit.runtime.spec",
    "DEFAULT_NAMESPACES": "labkit.runtime.spec", "NetworkMode": "labkit.runtime.spec",
    "UserNamespaceMap": "labkit.runtime.spec", "userns_fields": "labkit.runtime.spec",
}

__all__ = sorted(_EXPORTS) + ["run", "gc"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'labkit.runtime' has no attribute {name!r}")


def run(command, on_output=None, **fields):
    """Run `command` (a list, or a shell string) in a fresh container and remove it."""
    from labkit.runtime.client.container import Container
    from labkit.runtime.spec import ContainerSpec

    return Container(ContainerSpec(command=command, **fields)).run(on_output=on_output)


def gc() -> list:
    """Remove what containers of dead owners left behind (also done at every start)."""
    from labkit.runtime.client.leftovers import sweep

    return sweep()
