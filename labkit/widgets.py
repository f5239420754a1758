"""Live views for notebooks.

    monitor(container)             memory / CPU / pids bars against the container's limits
    with progress(50, "runs") as bar:  bar.update()   (ipywidgets in a notebook, text elsewhere)

Updates come from a background thread that sets widget values. (Printing into an
`Output` widget with `with out:` from a thread breaks under nbclient and nbval: the
output lands in whichever cell runs at that moment.)
"""

import os
import sys
import threading
import time

from labkit.units import format_bytes


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Monitor:
    """Three bars that follow a running container until it exits (or `stop()`)."""

    def __init__(self, container, interval: float = 0.5):
        import ipywidgets as widgets

        self.container = container
        self.interval = interval
        spec = container.spec
        cores = spec.cpus or os.cpu_count()
        self.memory = widgets.FloatProgress(min=0, max=spec.memory or host_memory(), description="memory")
        self.cpu = widgets.FloatProgress(min=0, max=cores * 100, description="CPU %")
        self.pids = widgets.IntProgress(min=0, max=spec.pids or 64, description="pids")
        self.labels = {name: widgets.Label() for name in ("memory", "cpu", "pids")}
        self.title = widgets.HTML(f"<b>{container.name}</b>: running")
        self.widget = widgets.VBox([self.title] + [
            widgets.HBox([bar, self.labels[name]])
            for name, bar in (("memory", self.memory), ("cpu", self.cpu), ("pids", self.pids))
        ])
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, name=f"monitor {container.name}", daemon=True)
        self.thread.start()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def stop(self):
        self._stop.set()
        self.thread.join()

    def _follow(self):
        spec = self.container.spec
        last_cpu, last_time = None, None
        while not self._stop.is_set():
            try:
                if not self.container.top():
                    break
                stats = self.container.stats()
            except (OSError, AttributeError):
                break  # its cgroup is gone: it exited and was removed
            now = time.monotonic()
            self.memory.value = min(stats.memory_current or 0, self.memory.max)
            limit = f" of {format_bytes(spec.memory)}" if spec.memory else " (no limit)"
            self.labels["memory"].value = f"{format_bytes(stats.memory_current)}{limit}"
            if stats.cpu_seconds is not None and last_cpu is not None:
                percent = 100 * (stats.cpu_seconds - last_cpu) / max(now - last_time, 1e-6)
                self.cpu.value = min(percent, self.cpu.max)
                self.labels["cpu"].value = f"{percent:.0f}% of {self.cpu.max:.0f}%"
            last_cpu, last_time = stats.cpu_seconds, now
            self.pids.value = min(stats.pids_current or 0, self.pids.max)
            self.labels["pids"].value = f"{stats.pids_current}" + (f" of {spec.pids}" if spec.pids else "")
            self._stop.wait(self.interval)
        self.title.value = f"<b>{self.container.name}</b>: {'stopped watching' if self._stop.is_set() else 'exited'}"


def monitor(container, interval: float = 0.5) -> Monitor:
    """Live memory, CPU and pids bars for a running container (display the return value)."""
    return Monitor(container, interval)


class Progress:
    """A progress bar: an ipywidgets bar in a notebook, a text bar on stderr elsewhere."""

    WIDTH = 30

    def __init__(self, total: int, description: str = ""):
        self.total = max(int(total), 1)
        self.description = description
        self.done = 0
        self.bar = None
        if in_notebook():
            import ipywidgets as widgets
            from IPython.display import display

            self.bar = widgets.IntProgress(min=0, max=self.total, description=description)
            self.label = widgets.Label(f"0/{self.total}")
            display(widgets.HBox([self.bar, self.label]))

    def update(self, steps: int = 1):
        self.done = min(self.done + steps, self.total)
        if self.bar is not None:
            self.bar.value = self.done
            self.label.value = f"{self.done}/{self.total}"
        else:
            filled = self.WIDTH * self.done // self.total
            sys.stderr.write(f"\r{self.description} [{'#' * filled}{'-' * (self.WIDTH - filled)}] "
                             f"{self.done}/{self.total}")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.bar_style = "success" if self.done >= self.total else "warning"
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int, description: str = "") -> Progress:
    return Progress(total, description)
