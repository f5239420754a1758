"""The container runtime: ContainerSpec → Container → Result, and always back to nothing.

    from labkit.runtime import run
    result = run("echo hello from $(hostname)", memory="64m")

Names are loaded lazily: the helper process imports `labkit.runtime.setup` and must not
pay for the client side (images, IPython-facing reprs) in memory or start-up time.
"""

import importlib

_EXPORTS = {
    "Container": "labkit.runtime.container", "get": "labkit.runtime.container",
    "running_containers": "labkit.runtime.container", "Result": "labkit.runtime.result",
    "ContainerSpec": "labkit.runtime.spec", "Volume": "labkit.runtime.spec",
    "DEFAULT_NAMESPACES": "labkit.runtime.spec",
}

__all__ = sorted(_EXPORTS) + ["run", "gc"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'labkit.runtime' has no attribute {name!r}")


def run(command, on_output=None, **fields):
    """Run `command` (a list, or a shell string) in a fresh container and remove it."""
    from labkit.runtime.container import Container
    from labkit.runtime.spec import ContainerSpec

    return Container(ContainerSpec(command=command, **fields)).run(on_output=on_output)


def gc() -> list:
    """Remove what containers of dead owners left behind (also done at every start)."""
    from labkit.runtime.leftovers import sweep

    return sweep()
