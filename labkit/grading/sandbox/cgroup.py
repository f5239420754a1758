"""The sandbox's cgroup: limits the grader sets, a subtree the sandbox's root may use.

The limits are written into the sandbox's cgroup by the host's root, and its limit files
stay root's. The directory itself, and the files that only move processes, are handed to
the host uid that is root inside the sandbox ("delegation"): inside its cgroup
namespace it makes cgroups below it for its own containers and sets their limits, which
the kernel caps by the sandbox's (a child can ask for more, it never gets more).

- cgroup v1: the directory, `cgroup.procs` and `tasks` in each hierarchy handed over.
- cgroup v2: the directory, `cgroup.procs`, `cgroup.subtree_control`, `cgroup.threads`
  (what systemd's Delegate=yes hands over); processes start in a leaf `init/` so that
  the sandbox may enable controllers for its children (no internal processes).

Device rules (v1 `devices`, v2 a BPF program) need the host's CAP_SYS_ADMIN to write,
which no process inside has: the sandbox's own rules, set here, hold for everything in it.
"""

import os
import time

from labkit.cgroups import Limits, detect_mode
from labkit.cgroups.base import remove_dir, retry_if_parent_went
from labkit.cgroups.devices import DOCKER_DEFAULT
from labkit.cgroups.v1 import CgroupV1, controller_mounts
from labkit.cgroups.v2 import CgroupV2, unified_mount
from labkit.errors import HostError
from labkit.linux.processes import kill_each

PARENT = "labkit-sandbox"
V1_NEEDED = ("memory", "cpu", "cpuacct", "pids")
V1_DELEGATED = ("memory", "cpu", "cpuacct", "pids", "blkio")   # mounted inside, for nested containers
V2_NEEDED = ("memory", "cpu", "pids")


class SandboxCgroup:
    def __init__(self, token: str, uid: int, limits):
        self.name = f"{PARENT}/{token}"
        self.uid = uid
        self.limits = Limits(memory=limits.memory_bytes, cpus=float(limits.cpus), pids=int(limits.pids),
                             devices=list(DOCKER_DEFAULT))
        self.version = 2 if detect_mode() == "v2" else 1
        self.dirs = {}          # controller (or "unified") -> host directory
        self.mounts_inside = []  # (mount point, options, fstype) for PID 1 to mount inside

    # --- made by the host's root -----------------------------------------------------

    def create(self):
        try:
            self._create_v2() if self.version == 2 else self._create_v1()
        except BaseException:
            self.remove()
            raise

    def _create_v1(self):
        mounts = controller_mounts()
        missing = [c for c in V1_NEEDED if c not in mounts]
        if missing:
            raise HostError(f"a grading sandbox needs the {', '.join(missing)} cgroup controller(s) for its "
                            "memory, CPU and pids limits; this host does not mount them (see `labkit doctor`)")
        for controller in (*V1_DELEGATED, "devices"):
            if controller in mounts:
                self.dirs[controller] = os.path.join(mounts[controller], self.name)
        for directory in self.dirs.values():
            retry_if_parent_went(lambda d=directory: os.makedirs(d, exist_ok=True))
        limits = self.limits if "devices" in self.dirs else Limits(**{**self.limits.__dict__, "devices": None})
        CgroupV1(self.name, self.dirs).set_limits(limits)
        for controller in V1_DELEGATED:
            if controller in self.dirs:
                self._hand_over(self.dirs[controller], ("", "cgroup.procs", "tasks"))
                self.mounts_inside.append((mounts[controller], controller, "cgroup"))

    def _create_v2(self):
        root = unified_mount()
        available = set(open(os.path.join(root, "cgroup.controllers")).read().split())
        missing = [c for c in V2_NEEDED if c not in available]
        if missing:
            raise HostError(f"a grading sandbox needs the {', '.join(missing)} cgroup v2 controller(s) for its "
                            f"limits; {root}/cgroup.controllers does not offer them")
        parent = os.path.join(root, PARENT)
        box = os.path.join(root, self.name)

        def make():
            os.makedirs(parent, exist_ok=True)
            for directory in (root, parent):
                _enable(directory, V2_NEEDED)
            os.mkdir(box)

        retry_if_parent_went(make)
        self.dirs["unified"] = box
        CgroupV2(self.name, box).set_limits(self.limits)
        os.mkdir(os.path.join(box, "init"))
        self._hand_over(box, ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"))
        self._hand_over(os.path.join(box, "init"), ("", "cgroup.procs", "cgroup.threads"))
        self.mounts_inside.append(("/sys/fs/cgroup", None, "cgroup2"))

    def _hand_over(self, directory, names):
        for name in names:
            os.chown(os.path.join(directory, name), self.uid, self.uid)

    # --- what the sandbox's processes join ------------------------------------------------

    @property
    def first_process_joins(self) -> list:
        """Host paths of the cgroup.procs files the sandbox's PID 1 writes itself into."""
        return sorted({os.path.join(d, "cgroup.procs") for d in self.dirs.values()})

    @property
    def init_inside(self) -> str | None:
        """v2: the leaf PID 1 moves to once its cgroup namespace is made (path inside)."""
        return "/sys/fs/cgroup/init/cgroup.procs" if self.version == 2 else None

    def kernel_joins(self) -> list:
        """The cgroup.procs files a process entering from outside writes itself into."""
        if self.version == 2:
            return [os.path.join(self.dirs["unified"], "init", "cgroup.procs")]
        return self.first_process_joins

    @property
    def paths(self) -> dict:
        """What the grader reads: {"memory": ..., "pids": ..., "cpu": ...} or {"unified": ...}."""
        if self.version == 2:
            return dict(self.dirs)
        return {c: self.dirs[c] for c in ("memory", "pids", "cpu") if c in self.dirs}

    def pids(self) -> list:
        directory = self.dirs.get("unified") or self.dirs.get("pids")
        return sorted(tree_pids(directory)) if directory else []

    # --- gone with the sandbox ----------------------------------------------------------

    def remove(self, timeout=10.0):
        remove_trees(list(self.dirs.values()), timeout)


def _enable(directory, controllers):
    control = os.path.join(directory, "cgroup.subtree_control")
    enabled = set(open(control).read().split())
    wanted = [c for c in controllers if c not in enabled]
    if wanted:
        with open(control, "w") as handle:
            handle.write(" ".join(f"+{c}" for c in wanted))


def tree_pids(directory) -> set:
    found = set()
    for path, _dirs, files in os.walk(directory):
        try:
            with open(os.path.join(path, "cgroup.procs")) as procs:
                found.update(int(p) for p in procs.read().split())
        except OSError:
            pass  # removed while we walked
    return found


def kill_all(directories, timeout=10.0):
    """SIGKILL everything in these cgroups and below, until they are empty."""
    left = kill_each(lambda: set().union(*(tree_pids(d) for d in directories)) if directories else (), timeout)
    if left:
        raise HostError(f"processes {sorted(left)} in the sandbox's cgroups do not die")


def remove_trees(directories, timeout=10.0):
    """Kill everything in these cgroups and the ones below them, then remove them, deepest
    first (the sandbox's own containers made cgroups below it)."""
    directories = [d for d in directories if os.path.isdir(d)]
    deadline = time.monotonic() + timeout
    kill_all(directories, timeout)
    for directory in directories:
        for path, _dirs, _files in os.walk(directory, topdown=False):
            remove_dir(path, deadline)
        try:
            os.rmdir(os.path.dirname(directory))  # the shared parent goes with its last sandbox
        except OSError:
            pass
