"""Cgroups: how much a container may use. One interface, a backend per host setup.

    hierarchy = host_hierarchy()            # v1 or v2, probed
    cgroup = hierarchy.create("demo", Limits(memory=64 << 20, cpus=0.5, pids=32))
    cgroup.add_process(pid); cgroup.stats()
    cgroup.device_control()                 # v1: its devices.list; v2: its BPF device programs
    cgroup.delete()

The runtime asks one question, `container_hierarchy()`: where containers' cgroups go (the
host's hierarchy as root; rootless, none yet: `NoCgroups`, which makes nothing and says why).
"""

import functools
import os

from labkit.cgroups.base import Cgroup, Hierarchy, Limits, Stats
from labkit.cgroups.none import NoCgroup, NoCgroups
from labkit.cgroups.v1 import CgroupV1, HierarchyV1, controller_mounts
from labkit.cgroups.v2 import CgroupV2, HierarchyV2, unified_mount
from labkit.errors import HostError

__all__ = ["Cgroup", "Hierarchy", "Limits", "Stats", "CgroupV1", "CgroupV2", "HierarchyV1",
           "HierarchyV2", "NoCgroup", "NoCgroups", "container_hierarchy", "host_hierarchy", "detect_mode",
           "limits_available"]


def detect_mode() -> str:
    """'v2' when /sys/fs/cgroup is the unified hierarchy, 'v1' when controllers are mounted
    one per hierarchy (legacy, or hybrid with an almost empty cgroup2 beside them)."""
    forced = os.environ.get("LABKIT_CGROUP")
    if forced in ("v1", "v2"):
        return forced
    if unified_mount() == "/sys/fs/cgroup":
        return "v2"
    if controller_mounts():
        return "v1"
    raise HostError("no cgroup hierarchy is mounted under /sys/fs/cgroup; labkit needs cgroup v1 or v2")


@functools.lru_cache(maxsize=1)
def host_hierarchy() -> Hierarchy:
    return HierarchyV2() if detect_mode() == "v2" else HierarchyV1()


@functools.lru_cache(maxsize=1)
def container_hierarchy() -> Hierarchy:
    """Where the runtime makes containers' cgroups, the one place that decides it: the
    host's hierarchy as the host's root (also root of a grading sandbox's user namespace,
    whose cgroups the host delegated); rootless, the cgroup v2 subtree delegated to the user
    (labkit.cgroups.delegation), and where there is none (cgroup v1 has no delegation)
    `NoCgroups`: each container then runs without a cgroup of its own, and each limit asked
    for says so in one line."""
    from labkit.linux.rootless import running_rootless

    if not running_rootless():
        return host_hierarchy()
    from labkit.cgroups.delegation import rootless_hierarchy

    return rootless_hierarchy()


def limits_available() -> tuple:
    """(True, None) when containers get cgroups with limits; else (False, why not)."""
    hierarchy = container_hierarchy()
    return (False, hierarchy.reason) if isinstance(hierarchy, NoCgroups) else (True, None)
