"""kind="none": the submission's kernel runs on the host as labkit ran it before
sandboxes (no isolation at all). The grader's baseline, and the "without the defence"
half of each refusal test."""

import os
import signal
import subprocess
import sys

from labkit.grading.sandbox.base import BaseSandbox
from labkit.grading.sandbox.cgroup import tree_pids


class HostSandbox(BaseSandbox):
    kind = "none"

    def _open(self):
        self.cgroup_paths = _host_labkit_cgroups()

    def _kernel_pids(self) -> list:
        roots = [m.provisioner.pid for m in self._managers
                 if m.has_kernel and getattr(m.provisioner, "pid", None)]
        return _descendants(roots)

    def pids(self) -> list:
        found = set(self._kernel_pids())
        for path in self.cgroup_paths.values():
            found.update(tree_pids(path))
        return sorted(found)

    def owns_pid(self, pid) -> bool:
        return pid in self.pids()

    def _kill_everything(self):
        for pid in self._kernel_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _close(self):
        # Containers the submission left in its LABKIT_HOME: the runtime's own sweep (its
        # helper died with the kernel) removes them, as `labkit` did after each submission.
        if self.home is not None and (self.home / "containers").is_dir():
            subprocess.run([sys.executable, "-c", "from labkit.runtime import gc; gc()"],
                           env={**os.environ, "LABKIT_HOME": str(self.home)}, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _host_labkit_cgroups() -> dict:
    from labkit.cgroups import detect_mode
    from labkit.cgroups.v1 import controller_mounts
    from labkit.cgroups.v2 import unified_mount

    if detect_mode() == "v2":
        return {"unified": os.path.join(unified_mount(), "labkit")}
    mounts = controller_mounts()
    return {c: os.path.join(mounts[c], "labkit") for c in ("memory", "pids", "cpu") if c in mounts}


def _descendants(roots) -> list:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return sorted(found)
