"""Cgroups: how much a container may use. One interface, a backend per host setup.

    hierarchy = host_hierarchy()            # v1 or v2, probed
    cgroup = hierarchy.create("demo", Limits(memory=64 << 20, cpus=0.5, pids=32))
    cgroup.add_process(pid); cgroup.stats()
    cgroup.device_control()                 # v1: its devices.list; v2: its BPF device programs
    cgroup.delete()
"""

import functools
import os

from labkit.cgroups.base import Cgroup, Hierarchy, Limits, Stats
from labkit.cgroups.v1 import CgroupV1, HierarchyV1, controller_mounts
from labkit.cgroups.v2 import CgroupV2, HierarchyV2, unified_mount
from labkit.errors import HostError

__all__ = ["Cgroup", "Hierarchy", "Limits", "Stats", "CgroupV1", "CgroupV2", "HierarchyV1",
           "HierarchyV2", "host_hierarchy", "detect_mode"]


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
