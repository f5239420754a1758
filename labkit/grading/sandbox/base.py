"""What every kind of sandbox offers the grader (see GRADING contract in docs/labs.md)."""

import os
import shutil
import tempfile
import threading
from pathlib import Path

from labkit.grading.sandbox.kmsg import KernelLog
from labkit.grading.sandbox.limits import SandboxLimits


class BaseSandbox:
    kind = "?"

    def __init__(self, limits: SandboxLimits | None = None, workdir=None):
        self.limits = (limits or SandboxLimits()).validated()
        self.directory = None   # host directory holding scratch, home and the kernel's sockets
        self.scratch = None
        self.home = None
        self.pid = None
        self.netns_path = "/proc/self/ns/net"
        self.cgroup_paths = {}
        self.timed_out = False
        self._workdir = workdir
        self._log = None
        self._managers = []
        self._timer = None

    # --- lifetime ----------------------------------------------------------------

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def open(self):
        self._log = KernelLog()
        self.directory = Path(tempfile.mkdtemp(prefix="labkit-sandbox-", dir=self._workdir))
        # Others may pass through (not list): a --userns container's root, an unprivileged
        # host uid, walks down to its layers in the home below (labkit/home.py).
        os.chmod(self.directory, 0o711)
        try:
            self.scratch = self.directory / "scratch"
            self.home = self.directory / "home"
            self.scratch.mkdir()
            self.home.mkdir(mode=0o700)
            self._open()
        except BaseException:
            self.close()
            raise
        self._timer = threading.Timer(self.limits.wall_seconds, self._out_of_time)
        self._timer.daemon = True
        self._timer.start()

    def close(self):
        if self._timer is not None:
            self._timer.cancel()
        for manager in self._managers:
            _stop_kernel(manager)
        try:
            self._close()
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=False, onerror=_raise_unless_gone)
                self.directory = None
            if self._log is not None:
                self._log.close()

    def _out_of_time(self):
        self.timed_out = True
        self._kill_everything()

    # --- the kernel ----------------------------------------------------------------

    def kernel_manager(self, kernel_name="labkit", **settings):
        """A KernelManager whose kernel runs inside; start_kernel/interrupt/shutdown work."""
        from labkit.grading.sandbox.kernel import kernel_manager

        manager = kernel_manager(self, kernel_name, **settings)
        self._managers.append(manager)
        return manager

    def launch_prefix(self) -> list:
        return []

    def kernel_env(self) -> dict:
        return {"LABKIT_HOME": str(self.home)}

    def connection_settings(self) -> dict:
        return {}

    def hand_over(self, path) -> None:
        """Give a file the grader wrote (the connection file) to the sandbox's root."""

    # --- what the grader reads --------------------------------------------------------

    def pids(self) -> list:
        raise NotImplementedError

    def owns_pid(self, pid) -> bool:
        raise NotImplementedError

    def owns_cgroup(self, path) -> bool:
        path = os.path.realpath(path)
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in self.cgroup_paths.values())

    def in_netns(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def kernel_log(self) -> list:
        """(seconds since boot, text) of the kernel's records since the sandbox was made
        that name one of its cgroups (OOM kills, forks refused by the pids controller)."""
        return self._log.naming(_names_below_mounts(self.cgroup_paths))

    # --- per kind ----------------------------------------------------------------------

    def _open(self):
        raise NotImplementedError

    def _close(self):
        raise NotImplementedError

    def _kill_everything(self):
        raise NotImplementedError


def _stop_kernel(manager):
    try:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    except Exception:  # noqa: BLE001 — a kernel already gone (killed with its sandbox) is fine
        pass
    finally:
        manager.let_go_of_sockets()


def _raise_unless_gone(function, path, info):
    if not isinstance(info[1], FileNotFoundError):
        raise info[1]


def _names_below_mounts(cgroup_paths: dict) -> list:
    """/sys/fs/cgroup/memory/labkit-sandbox/x -> /labkit-sandbox/x, as the kernel logs it."""
    from labkit.cgroups.v1 import controller_mounts
    from labkit.cgroups.v2 import unified_mount

    points = set(controller_mounts().values()) | {unified_mount()} - {None}
    names = []
    for path in cgroup_paths.values():
        point = max((p for p in points if path.startswith(p.rstrip("/") + "/")), key=len, default=None)
        if point:
            names.append(path[len(point.rstrip("/")):])
    return names
