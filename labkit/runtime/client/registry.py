"""The long-lived containers this process started, by name: what `get(NAME)`, the
display of running containers and `--net container:NAME` look up.

Runs in the caller. A container is here from a detached start until it is removed; a
container run to its end is never here."""

from labkit.errors import ContainerError

_running = {}  # name -> Container


def remember(container) -> None:
    _running[container.name] = container


def forget(name: str) -> None:
    _running.pop(name, None)


def running_containers() -> dict:
    """The long-lived containers this process started, by name."""
    return dict(_running)


def get(name: str):
    try:
        return _running[name]
    except KeyError:
        names = ", ".join(sorted(_running)) or "none"
        raise ContainerError(f"no running container named {name!r} in this session (running: {names})") from None
