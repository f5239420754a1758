"""How containers look in a notebook: a rich repr for Container, and the text `%container
ps` and `%container stats` print.

The HTML repr is registered with IPython's display formatter when the magics are loaded
(`%load_ext labkit`, or the labkit kernel's start-up): the runtime stays free of display
code, and no class is changed behind its back at import time."""

import html

from labkit.runtime import Container, running_containers
from labkit.units import format_bytes


def status(container) -> str:
    """running / exited / removed: the container's lifecycle, brought up to date (a
    detached container's process can end while nobody waits for it)."""
    return container.poll()


def limits_text(spec) -> str:
    parts = []
    if spec.memory:
        parts.append(f"memory {format_bytes(spec.memory)}")
    if spec.cpus:
        parts.append(f"cpus {spec.cpus:g}")
    if spec.pids:
        parts.append(f"pids {spec.pids}")
    return ", ".join(parts) or "none"


def container_html(container) -> str:
    rows = [
        ("name", container.name), ("id", container.id), ("image", container.image.name),
        ("status", status(container)), ("host PID", container.pid or "-"),
        ("command", " ".join(container.command)), ("limits", limits_text(container.spec)),
        ("namespaces", " ".join(container.spec.namespaces)),
    ]
    body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                   f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table><caption>container {html.escape(container.name)}</caption>{body}</table>"


def container_table(containers=None) -> str:
    containers = list((containers or running_containers()).values())
    lines = [f"{'NAME':20} {'ID':16} {'IMAGE':12} {'STATUS':8} COMMAND"]
    for container in containers:
        lines.append(f"{container.name:20} {container.id:16} {container.image.name:12} "
                     f"{status(container):8} {' '.join(container.command)}")
    if not containers:
        lines.append("(no long-lived containers in this kernel; start one with %container run -d)")
    return "\n".join(lines)


def stats_line(container) -> str:
    stats = container.stats()
    spec = container.spec
    memory = format_bytes(stats.memory_current) + (f" of {format_bytes(spec.memory)}" if spec.memory else "")
    cpu = "-" if stats.cpu_seconds is None else f"{stats.cpu_seconds:.3f} s"
    pids = f"{stats.pids_current}" + (f" of {spec.pids}" if spec.pids else "")
    return f"{container.name}: memory {memory} (peak {format_bytes(stats.memory_peak)}), CPU {cpu}, pids {pids}"


def register_reprs(ipython) -> None:
    """Containers shown as `container_html` in this shell (its `text/html` formatter)."""
    ipython.display_formatter.formatters["text/html"].for_type(Container, container_html)


def unregister_reprs(ipython) -> None:
    ipython.display_formatter.formatters["text/html"].pop(Container, None)
